"""Manual entry pages (issue 10) over HTTP: facilities, schedules, slots one at a time
and from a weekly pattern (R-SCHED-3), the day / week views, booking on behalf of a
patient and cancellation with a reason (R-CAN-1). Every write goes through the same
command as the FHIR API: the FHIR API reads back exactly what the pages made."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway import pesel
from tests.e2e.conftest import auth, purge_rabbit, settings_for, uses_rabbit
from tests.e2e.ui_support import (
    csrf,
    duplicate_ids,
    field_error,
    invalid_fields,
    post_form,
    sign_in,
    ui_client,
    unlabelled_fields,
)

SCOPE = "http://cer-gateway.org/fhir/CodeSystem/scope"


def ui_settings(backend: str) -> Any:
    return settings_for(backend, **({} if uses_rabbit(backend) else {"amqp_url": None}))


@pytest.fixture
async def web(
    backend: str, aiohttp_server: Callable[..., Any], aiohttp_client: Callable[..., Any]
) -> TestClient[Any, Any]:
    settings = ui_settings(backend)
    if uses_rabbit(backend):
        await purge_rabbit(settings)
    return await ui_client(settings, aiohttp_server, aiohttp_client)


@pytest.fixture
async def embedded(
    aiohttp_server: Callable[..., Any], aiohttp_client: Callable[..., Any]
) -> TestClient[Any, Any]:
    return await ui_client(ui_settings("embedded"), aiohttp_server, aiohttp_client)


async def add_facility(web: TestClient[Any, Any], name: str = "Poradnia Kardiologiczna") -> str:
    resp = await post_form(
        web,
        "/ui/facilities",
        {
            "name": name,
            "line": "ul. Testowa 5",
            "postal_code": "00-950",
            "city": "Warszawa",
            "status": "active",
        },
        page="/ui/facilities/new",
    )
    assert resp.status == 303, await resp.text()
    return str(resp.headers["Location"].rsplit("/", 1)[1])


async def add_schedule(web: TestClient[Any, Any], location: str, scope: str = "cardiology") -> str:
    resp = await post_form(
        web,
        "/ui/schedules",
        {"location": location, "scope": scope, "name": "Konsultacje kardiologiczne"},
    )
    assert resp.status == 303, await resp.text()
    return str(resp.headers["Location"].rsplit("/", 1)[1])


def next_monday(today: date | None = None) -> date:
    today = today or date.today()
    return today + timedelta(days=7 - today.weekday())


def pattern_form(first: date, **over: str) -> dict[str, str]:
    form = {
        "first_day": first.isoformat(),
        "weeks": "6",
        "wd0": "on",
        "day_start": "08:00",
        "day_end": "12:00",
        "minutes": "20",
        "count_first-urgent": "1",
        "count_first-stable": "9",
        "count_first-privileged": "1",
        "count_control": "1",
    }
    form.update(over)
    return form


async def test_main_scenario_pattern_book_cancel(web: TestClient[Any, Any], backend: str) -> None:
    """Six weeks of Monday slots from a pattern, then a booking and a cancellation: the
    FHIR API sees the same Slots and Appointment as if a vendor system had sent them."""
    provider = await sign_in(web)
    headers = auth(provider["token"])
    location = await add_facility(web)
    schedule = await add_schedule(web, location)
    first = next_monday()
    path = f"/ui/schedules/{schedule}/pattern"
    page = f"/ui/schedules/{schedule}"
    resp = await post_form(web, path, {**pattern_form(first), "action": "preview"}, page=page)
    assert resp.status == 200, await resp.text()
    html = await resp.text()
    assert "72" in html  # 6 Mondays x 12 slots
    assert "Opublikuj 72" in html
    # nothing is published by a preview
    slots = await (
        await web.get(f"/fhir/Slot?schedule=Schedule/{schedule}", headers=headers)
    ).json()
    assert slots["total"] == 0
    resp = await post_form(web, path, {**pattern_form(first), "action": "publish"}, page=page)
    assert resp.status == 303, await resp.text()
    slots = await (
        await web.get(f"/fhir/Slot?schedule=Schedule/{schedule}&_count=100", headers=headers)
    ).json()
    assert slots["total"] == 72
    cats = [e["resource"]["appointmentType"]["coding"][0]["code"] for e in slots["entry"][:12]]
    # R-SCHED-3: the day's categories in the counts the facility chose, in order
    assert cats == ["first-urgent"] + ["first-stable"] * 9 + ["first-privileged", "control"]
    # Warsaw wall-clock time, with its offset (+01:00 in winter, +02:00 in summer)
    assert slots["entry"][0]["resource"]["start"].startswith(f"{first.isoformat()}T08:00:00+0")
    # publishing the same pattern again adds nothing (conditional creates, existing skipped)
    resp = await post_form(web, path, {**pattern_form(first), "action": "publish"}, page=page)
    assert resp.status == 200
    assert "Brak nowych terminów" in await resp.text()
    total = (
        await (await web.get(f"/fhir/Slot?schedule=Schedule/{schedule}", headers=headers)).json()
    )["total"]
    assert total == 72

    # the week view shows them
    html = await (await web.get(f"/ui/week?start={first.isoformat()}")).text()
    assert html.count('class="status-free"') == 12
    # book the 08:20 first-stable slot for a patient, with an e-referral (R-PAT-2)
    stable = slots["entry"][1]["resource"]["id"]
    patient = pesel.generate(date(1970, 5, 1), "female")
    resp = await post_form(
        web,
        f"/ui/slots/{stable}/book",
        {
            "pesel": patient,
            "phone": "600 100 200",
            "email": "",
            "referral_key": "ABC123",
            "referral_code": "1234",
        },
    )
    assert resp.status == 303, await resp.text()
    appt_id = resp.headers["Location"].rsplit("/", 1)[1]
    appt = await (await web.get(f"/fhir/Appointment/{appt_id}", headers=headers)).json()
    assert appt["status"] == "booked"
    assert appt["slot"] == [{"reference": f"Slot/{stable}"}]
    channel = next(e for e in appt["extension"] if e["url"].endswith("booking-channel"))
    assert channel["valueCoding"]["code"] == "manual"
    slot = await (await web.get(f"/fhir/Slot/{stable}", headers=headers)).json()
    assert slot["status"] == "busy"
    # the day view shows who booked and through which channel, with the PESEL masked
    html = await (await web.get(f"/ui/day?date={first.isoformat()}")).text()
    assert patient not in html
    assert f"•••••••{patient[-4:]}" in html
    assert "Aplikacja do ręcznego wprowadzania" in html
    # the visit's page, then the cancellation with a reason (R-CAN-1)
    html = await (await web.get(f"/ui/appointments/{appt_id}")).text()
    assert patient in html
    resp = await post_form(
        web,
        f"/ui/appointments/{appt_id}/cancel",
        {"reason": "provider-unavailable", "note": "", "version": "1"},
        page=f"/ui/appointments/{appt_id}",
    )
    assert resp.status == 303, await resp.text()
    appt = await (await web.get(f"/fhir/Appointment/{appt_id}", headers=headers)).json()
    assert appt["status"] == "cancelled"
    assert appt["cancelationReason"]["coding"][0]["code"] == "provider-unavailable"
    slot = await (await web.get(f"/fhir/Slot/{stable}", headers=headers)).json()
    assert slot["status"] == "free"
    html = await (await web.get(f"/ui/day?date={first.isoformat()}")).text()
    assert "Nieobecność personelu medycznego" in html


# --------------------------------------------------------------------------- validation


async def test_facility_form_errors_next_to_fields(embedded: TestClient[Any, Any]) -> None:
    web = embedded
    await sign_in(web)
    resp = await post_form(
        web,
        "/ui/facilities",
        {"name": "", "postal_code": "00950", "status": "active"},
        page="/ui/facilities/new",
    )
    assert resp.status == 400
    html = await resp.text()
    assert field_error(html, "name") == "Wpisz nazwę placówki."
    assert field_error(html, "postal_code") == "Wpisz kod pocztowy w postaci 00-950."
    assert {"name", "postal_code"} <= invalid_fields(html)
    assert 'href="#f-name"' in html  # the summary links to the field
    # what was typed stays in the form
    assert 'value="00950"' in html


async def test_facility_edit_keeps_vendor_fields_and_refuses_a_stale_version(
    embedded: TestClient[Any, Any],
) -> None:
    web = embedded
    provider = await sign_in(web)
    headers = auth(provider["token"])
    location = await add_facility(web)
    # a vendor system adds an identifier meanwhile (version 2)
    res = await (await web.get(f"/fhir/Location/{location}", headers=headers)).json()
    res["identifier"] = [{"system": "urn:oid:2.16.840.1.113883.3.4424.2.3.3", "value": "K-1"}]
    res.pop("meta")
    assert (await web.put(f"/fhir/Location/{location}", json=res, headers=headers)).status == 200
    # the page opened before still says version 1: refused, in plain words
    resp = await post_form(
        web,
        f"/ui/facilities/{location}",
        {"name": "Nowa nazwa", "status": "active", "version": "1"},
        page=f"/ui/facilities/{location}",
    )
    assert resp.status == 400
    assert "Ktoś w międzyczasie to zmienił" in await resp.text()
    # with the current version the change is saved, and the identifier is kept
    resp = await post_form(
        web,
        f"/ui/facilities/{location}",
        {"name": "Nowa nazwa", "status": "suspended", "postal_code": "00-950", "version": "2"},
        page=f"/ui/facilities/{location}",
    )
    assert resp.status == 303, await resp.text()
    res = await (await web.get(f"/fhir/Location/{location}", headers=headers)).json()
    assert res["name"] == "Nowa nazwa" and res["status"] == "suspended"
    assert res["identifier"][0]["value"] == "K-1"
    assert "city" not in res["address"]


async def test_schedule_and_single_slot_forms(embedded: TestClient[Any, Any]) -> None:
    web = embedded
    provider = await sign_in(web)
    headers = auth(provider["token"])
    html = await (await web.get("/ui/schedules")).text()
    assert "Najpierw dodaj placówkę" in html
    location = await add_facility(web)
    resp = await post_form(web, "/ui/schedules", {"location": "nope", "scope": "dentistry"})
    html = await resp.text()
    assert resp.status == 400
    assert field_error(html, "location") == "Wybierz placówkę."
    assert field_error(html, "scope") == "Wybierz zakres."
    schedule = await add_schedule(web, location)
    page = f"/ui/schedules/{schedule}"
    day = next_monday().isoformat()
    resp = await post_form(
        web,
        f"{page}/slots",
        {"date": day, "start": "8am", "length": "2", "category": "x"},
        page=page,
    )
    html = await resp.text()
    assert resp.status == 400
    assert field_error(html, "start") == "Wpisz godzinę w postaci 08:00."
    assert field_error(html, "length") == "Termin trwa od 5 do 480 minut."
    assert field_error(html, "category") == "Wybierz kategorię terminu."
    resp = await post_form(
        web,
        f"{page}/slots",
        {"date": day, "start": "13:30", "length": "30", "category": "control"},
        page=page,
    )
    assert resp.status == 303, await resp.text()
    found = await (
        await web.get(f"/fhir/Slot?schedule=Schedule/{schedule}", headers=headers)
    ).json()
    assert found["total"] == 1
    slot = found["entry"][0]["resource"]
    assert slot["start"].startswith(f"{day}T13:30:00+0")
    assert slot["appointmentType"]["coding"][0]["code"] == "control"
    # rename and deactivate the schedule (a PUT with If-Match; scope and facility stay)
    resp = await post_form(web, page, {"name": "Gabinet 2", "active": "", "version": "1"})
    assert resp.status == 303, await resp.text()
    res = await (await web.get(f"/fhir/Schedule/{schedule}", headers=headers)).json()
    assert (res["comment"], res["active"]) == ("Gabinet 2", False)
    assert res["actor"] == [{"reference": f"Location/{location}"}]
    resp = await post_form(web, page, {"name": "Gabinet 3", "active": "on", "version": "1"})
    assert resp.status == 400
    assert "Ktoś w międzyczasie to zmienił" in await resp.text()


async def test_pattern_form_errors(embedded: TestClient[Any, Any]) -> None:
    web = embedded
    await sign_in(web)
    schedule = await add_schedule(web, await add_facility(web))
    page = f"/ui/schedules/{schedule}"
    past = (date.today() - timedelta(days=7)).isoformat()
    form = pattern_form(next_monday(), **{"count_first-stable": "5", "wd0": ""})
    form.update({"first_day": past, "day_end": "07:00", "action": "preview"})
    resp = await post_form(web, f"{page}/pattern", form, page=page)
    html = await resp.text()
    assert resp.status == 400
    assert field_error(html, "first_day") == (
        "Pierwszy dzień jest w przeszłości: wybierz dziś lub później."
    )
    assert field_error(html, "weekdays") == "Wybierz co najmniej jeden dzień tygodnia."
    assert field_error(html, "day_end") == "Koniec musi być później niż początek."
    # the counts must add up to the slots of a day (R-SCHED-3), said in numbers
    form = pattern_form(next_monday(), **{"count_first-stable": "5", "action": "preview"})
    resp = await post_form(web, f"{page}/pattern", form, page=page)
    html = await resp.text()
    assert resp.status == 400
    assert field_error(html, "counts") == (
        "Kategorie sumują się do 8 terminów, a w dniu mieści się 12: popraw liczby tak, "
        "by dawały 12."
    )
    # in English too
    resp = await post_form(web, f"{page}/pattern?lang=en", form, page=f"{page}?lang=en")
    assert "The categories add up to 8 slots, but 12 slots fit in a day" in await resp.text()


async def book_setup(web: TestClient[Any, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    provider = await sign_in(web)
    schedule = await add_schedule(web, await add_facility(web))
    page = f"/ui/schedules/{schedule}"
    form = pattern_form(next_monday(), weeks="1", action="publish")
    assert (await post_form(web, f"{page}/pattern", form, page=page)).status == 303
    found = await (
        await web.get(
            f"/fhir/Slot?schedule=Schedule/{schedule}&_count=20", headers=auth(provider["token"])
        )
    ).json()
    return provider, [e["resource"] for e in found["entry"]]


async def test_booking_form_checks_pesel_contact_referral_and_entitlement(
    embedded: TestClient[Any, Any],
) -> None:
    """DOMAIN.md Identifiers/PESEL, R-PAT-7 contact data, R-PAT-2 e-referral for a
    first-time cardiology visit, R-PAT-5 privileged slots."""
    web = embedded
    provider, slots = await book_setup(web)
    urgent, stable, privileged, control = slots[0], slots[1], slots[10], slots[11]
    good = pesel.generate(date(1980, 2, 3), "male")
    bad = good[:10] + str((int(good[10]) + 1) % 10)
    resp = await post_form(web, f"/ui/slots/{stable['id']}/book", {"pesel": bad})
    html = await resp.text()
    assert resp.status == 400
    assert field_error(html, "pesel") == (
        f"Ostatnia cyfra tego numeru PESEL powinna być {good[10]}: prawdopodobnie pomylono "
        "jedną z cyfr."
    )
    assert field_error(
        html,
        "phone",
    ).startswith("Wpisz numer telefonu lub adres e-mail")
    assert field_error(html, "referral_key").startswith("Wizyta pierwszorazowa w tym zakresie")
    # a privileged slot needs the facility's confirmation of the entitlement (R-PAT-5)
    resp = await post_form(
        web,
        f"/ui/slots/{privileged['id']}/book",
        {"pesel": good, "email": "a@example.pl", "referral_key": "K1", "referral_code": "1234"},
    )
    assert field_error(await resp.text(), "privileged").startswith("Ten termin jest dla")
    # a control visit needs no referral (R-PAT-6); a bad phone is the domain's error,
    # shown next to the phone field
    resp = await post_form(web, f"/ui/slots/{control['id']}/book", {"pesel": good, "phone": "12"})
    html = await resp.text()
    assert resp.status == 400
    assert field_error(html, "phone") == (
        "Wpisz numer telefonu z 9-15 cyfr, ewentualnie poprzedzony znakiem +."
    )
    assert field_error(html, "referral_key") is None
    # a bad referral code is said next to the code
    resp = await post_form(
        web,
        f"/ui/slots/{urgent['id']}/book",
        {"pesel": good, "phone": "600100200", "referral_key": "K1", "referral_code": "12"},
    )
    assert (
        field_error(await resp.text(), "referral_code") == "Kod e-skierowania ma dokładnie 4 cyfry."
    )
    # nothing was booked by any of these
    found = await (await web.get("/fhir/Appointment", headers=auth(provider["token"]))).json()
    assert found["total"] == 0


async def test_a_slot_booked_meanwhile_is_explained(embedded: TestClient[Any, Any]) -> None:
    web = embedded
    provider, slots = await book_setup(web)
    control = slots[11]
    patient = pesel.generate(date(1960, 1, 1), "female")
    form = {"pesel": patient, "phone": "600100200"}
    token = await csrf(web, f"/ui/slots/{control['id']}/book")
    # a vendor system books it first
    appt = {
        "resourceType": "Appointment",
        "status": "booked",
        "slot": [{"reference": f"Slot/{control['id']}"}],
        "participant": [
            {
                "actor": {
                    "identifier": {
                        "system": "urn:oid:2.16.840.1.113883.3.4424.1.1.616",
                        "value": patient,
                    }
                },
                "status": "accepted",
            }
        ],
    }
    resp = await web.post("/fhir/Appointment", json=appt, headers=auth(provider["token"]))
    assert resp.status == 201, await resp.text()
    resp = await web.post(
        f"/ui/slots/{control['id']}/book",
        data={"csrf_token": token, **form},
        allow_redirects=False,
    )
    assert resp.status == 400
    html = await resp.text()
    # the page now says the slot is taken, with a way to another one; nothing was booked
    assert "Ten termin nie jest już wolny." in html
    assert 'action="/ui/slots/' not in html


async def test_cancel_form_needs_a_reason(embedded: TestClient[Any, Any]) -> None:
    web = embedded
    provider, slots = await book_setup(web)
    patient = pesel.generate(date(1960, 1, 1), "female")
    resp = await post_form(
        web, f"/ui/slots/{slots[11]['id']}/book", {"pesel": patient, "email": "p@example.pl"}
    )
    appt = resp.headers["Location"].rsplit("/", 1)[1]
    page = f"/ui/appointments/{appt}"
    resp = await post_form(web, f"{page}/cancel", {"reason": "", "version": "1"}, page=page)
    assert field_error(await resp.text(), "reason") == "Wybierz powód odwołania."
    resp = await post_form(web, f"{page}/cancel", {"reason": "other", "version": "1"}, page=page)
    assert field_error(await resp.text(), "note") == "Opisz powód: wybrano „Inny”."
    # the SMS reply is recorded by the gateway, not chosen on the page
    resp = await post_form(
        web, f"{page}/cancel", {"reason": "patient-sms", "version": "1"}, page=page
    )
    assert resp.status == 400
    resp = await post_form(
        web,
        f"{page}/cancel",
        {"reason": "other", "note": "Awaria aparatu", "version": "1"},
        page=page,
    )
    assert resp.status == 303, await resp.text()
    res = await (await web.get(f"/fhir/Appointment/{appt}", headers=auth(provider["token"]))).json()
    assert res["cancelationReason"]["text"] == "Awaria aparatu"
    # cancelled once: a second try with the old version is refused in plain words
    html = await (await web.get(page)).text()
    assert "Odwołaj wizytę" not in html.split("</h1>", 1)[1]


async def test_another_providers_resources_are_not_found(embedded: TestClient[Any, Any]) -> None:
    web = embedded
    _provider, slots = await book_setup(web)
    await web.post("/ui/signout", data={"csrf_token": await csrf(web, "/ui/")})
    await sign_in(web, "Inna placówka")
    assert (await web.get(f"/ui/slots/{slots[0]['id']}/book")).status == 404
    html = await (await web.get(f"/ui/week?start={next_monday().isoformat()}")).text()
    assert 'class="status-free"' not in html


async def test_withdraw_a_free_slot_and_make_it_free_again(
    embedded: TestClient[Any, Any],
) -> None:
    web = embedded
    provider, slots = await book_setup(web)
    slot = slots[3]
    day = f"/ui/day?date={next_monday().isoformat()}"
    html = await (await web.get(day)).text()
    assert html.count("Wycofaj termin") == 12
    resp = await post_form(
        web,
        f"/ui/slots/{slot['id']}/availability",
        {"to": "unavailable", "version": "1", "back": day},
        page=day,
    )
    assert resp.status == 303
    assert resp.headers["Location"] == day
    res = await (await web.get(f"/fhir/Slot/{slot['id']}", headers=auth(provider["token"]))).json()
    assert res["status"] == "busy-unavailable"
    html = await (await web.get(day)).text()
    assert "Wycofano termin" in html
    assert html.count('class="status-unavailable"') == 1
    # a stale version (the page was open before) is refused in plain words
    resp = await post_form(
        web,
        f"/ui/slots/{slot['id']}/availability",
        {"to": "free", "version": "1", "back": day},
        page=day,
    )
    assert resp.status == 303
    html = await (await web.get(day)).text()
    assert "Ktoś w międzyczasie to zmienił" in html
    resp = await post_form(
        web,
        f"/ui/slots/{slot['id']}/availability",
        {"to": "free", "version": "2", "back": "https://elsewhere.example/"},
        page=day,
    )
    assert resp.headers["Location"].startswith("/ui/day?date=")
    res = await (await web.get(f"/fhir/Slot/{slot['id']}", headers=auth(provider["token"]))).json()
    assert res["status"] == "free"


async def test_every_field_of_every_page_has_a_label(embedded: TestClient[Any, Any]) -> None:
    web = embedded
    provider, slots = await book_setup(web)
    patient = pesel.generate(date(1960, 1, 1), "female")
    resp = await post_form(
        web, f"/ui/slots/{slots[11]['id']}/book", {"pesel": patient, "email": "p@example.pl"}
    )
    appt = resp.headers["Location"]
    schedule = (await (await web.get("/fhir/Schedule", headers=auth(provider["token"]))).json())[
        "entry"
    ][0]["resource"]["id"]
    location = (await (await web.get("/fhir/Location", headers=auth(provider["token"]))).json())[
        "entry"
    ][0]["resource"]["id"]
    pages = [
        "/ui/",
        "/ui/facilities",
        "/ui/facilities/new",
        f"/ui/facilities/{location}",
        "/ui/schedules",
        f"/ui/schedules/{schedule}",
        f"/ui/day?date={next_monday().isoformat()}",
        f"/ui/week?start={next_monday().isoformat()}",
        f"/ui/slots/{slots[0]['id']}/book",
        appt,
    ]
    for path in pages:
        resp = await web.get(path)
        assert resp.status == 200, path
        html = await resp.text()
        assert unlabelled_fields(html) == [], path
        assert duplicate_ids(html) == [], path
        assert 'href="#main"' in html, path
    await web.post("/ui/signout", data={"csrf_token": await csrf(web, "/ui/")})
    assert unlabelled_fields(await (await web.get("/ui/signin")).text()) == []
