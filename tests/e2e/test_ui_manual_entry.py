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
from tests.e2e.conftest import auth, purge_rabbit, settings_for
from tests.e2e.ui_support import post_form, sign_in, ui_client

SCOPE = "http://cer-gateway.org/fhir/CodeSystem/scope"


def ui_settings(backend: str) -> Any:
    return settings_for(backend, **({} if backend == "rabbitmq" else {"amqp_url": None}))


@pytest.fixture
async def web(
    backend: str, aiohttp_server: Callable[..., Any], aiohttp_client: Callable[..., Any]
) -> TestClient[Any, Any]:
    settings = ui_settings(backend)
    if backend == "rabbitmq":
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
