"""The sandbox console at /ui/sandbox (issue 10), over HTTP: only in sandbox mode, CSRF on
every action, the clock, providers and "sign in as", patients / referrals / screenings,
webhook deliveries with their signature check and why one failed, the outbox, reset with
a confirmation step, the conformance report."""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiohttp.test_utils import TestClient

from gateway import constants as c
from gateway import pesel
from gateway import sandbox_console as reads
from gateway.http.keys import SERVICES
from tests.e2e.conftest import AMQP_URL, purge_rabbit, settings_for
from tests.e2e.console_support import scene
from tests.e2e.ui_support import csrf, csrf_of, post_form, ui_client
from tests.e2e.webhook_support import Receiver

WARSAW = ZoneInfo("Europe/Warsaw")
FAST = {
    "amqp_url": None,
    "webhook_sweep_seconds": 0.1,
    "webhook_sweep_grace_seconds": 0.5,
    "token_ttl_seconds": 7 * 86400,
    "webhook_retry_schedule": [0, 5, 300],
}

GET_PAGES = [
    "/ui/sandbox",
    "/ui/sandbox/patients",
    "/ui/sandbox/outbox",
    "/ui/sandbox/reset",
    "/ui/sandbox/providers/prov-x",
    "/ui/sandbox/providers/prov-x/inbox",
    "/ui/sandbox/providers/prov-x/deliveries/d1",
    "/ui/sandbox/providers/prov-x/conformance",
]
POST_ACTIONS = [
    "/ui/sandbox/clock",
    "/ui/sandbox/providers",
    "/ui/sandbox/providers/prov-x/signin",
    "/ui/sandbox/providers/prov-x/inbox/clear",
    "/ui/sandbox/providers/prov-x/conformance",
    "/ui/sandbox/patients",
    "/ui/sandbox/referrals",
    "/ui/sandbox/screenings",
    "/ui/sandbox/outbox/clear",
    "/ui/sandbox/reset",
]


async def web_client(
    aiohttp_server: Callable[..., Any], aiohttp_client: Callable[..., Any], **overrides: Any
) -> TestClient[Any, Any]:
    settings = settings_for("embedded", **{**FAST, **overrides})
    return await ui_client(settings, aiohttp_server, aiohttp_client)


@pytest.fixture
async def web(
    aiohttp_server: Callable[..., Any], aiohttp_client: Callable[..., Any]
) -> TestClient[Any, Any]:
    return await web_client(aiohttp_server, aiohttp_client)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    r.mode = "fail"
    await r.start()
    yield r
    await r.stop()


def text_of(page: str) -> str:
    """The page's text without tags, whitespace folded (to look for sentences)."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def field_error(page: str, name: str) -> str:
    m = re.search(rf'<p class="field-error" id="f-{name}-error">(.*?)</p>', page, re.S)
    assert m, f"no error next to {name}"
    return text_of(m.group(1))


async def page(web: TestClient[Any, Any], path: str, status: int = 200) -> str:
    resp = await web.get(path)
    body = await resp.text()
    assert resp.status == status, body
    return body


async def sandbox_now(web: TestClient[Any, Any]) -> datetime:
    data = await (await web.get("/sandbox/clock")).json()
    return datetime.fromisoformat(data["now"].replace("Z", "+00:00"))


# --------------------------------------------------------------------------- mode, CSRF


async def test_production_mode_has_no_console(
    aiohttp_server: Callable[..., Any], aiohttp_client: Callable[..., Any]
) -> None:
    web = await web_client(aiohttp_server, aiohttp_client, cer_mode="production")
    token = await csrf(web)  # the sign-in page exists in production; the console does not
    assert "/ui/sandbox" not in await page(web, "/ui/signin")
    for path in GET_PAGES:
        assert (await web.get(path)).status == 404, path
    for path in POST_ACTIONS:
        resp = await web.post(path, data={"csrf_token": token}, allow_redirects=False)
        assert resp.status == 404, path


async def test_every_console_action_needs_the_csrf_token(web: TestClient[Any, Any]) -> None:
    before = await sandbox_now(web)
    await csrf(web, "/ui/sandbox")  # a session exists, but the form's token is missing
    for path in POST_ACTIONS:
        resp = await web.post(path, data={"advance": "P7D", "confirm": "on"}, allow_redirects=False)
        assert resp.status == 403, path
    resp = await web.post(
        "/ui/sandbox/clock", data={"advance": "P7D", "csrf_token": "forged"}, allow_redirects=False
    )
    assert resp.status == 403
    assert abs((await sandbox_now(web) - before).total_seconds()) < 60


async def test_front_page_in_polish_and_english(web: TestClient[Any, Any]) -> None:
    assert 'href="/ui/sandbox">Konsola piaskownicy</a>' in await page(web, "/ui/signin")
    body = await page(web, "/ui/sandbox")
    assert '<html lang="pl">' in body
    assert "Konsola piaskownicy" in body and "Nieudane dostarczenia webhooków" in body
    body = await page(web, "/ui/sandbox?lang=en")
    assert "Failing webhook deliveries" in body and "Move the clock" in body
    # every field has a label
    for field in re.findall(r'<(?:input|select|textarea) id="(f-[^"]+)"', body):
        assert f'for="{field}"' in body, field


# --------------------------------------------------------------------------- clock


async def test_clock_buttons_free_form_and_errors_next_to_the_field(
    web: TestClient[Any, Any],
) -> None:
    start = await sandbox_now(web)
    resp = await post_form(web, "/ui/sandbox/clock", {"advance": "P1D"}, page="/ui/sandbox")
    assert resp.status == 303 and resp.headers["Location"] == "/ui/sandbox"
    moved = await sandbox_now(web)
    assert 86400 - 60 < (moved - start).total_seconds() < 86400 + 60
    assert "Zegar piaskownicy wskazuje teraz" in await page(web, "/ui/sandbox")

    resp = await post_form(web, "/ui/sandbox/clock", {"when": "PT2H30M"}, page="/ui/sandbox")
    assert resp.status == 303
    assert 9000 - 60 < (await sandbox_now(web) - moved).total_seconds() < 9000 + 60

    # a bare local time is Warsaw time
    resp = await post_form(web, "/ui/sandbox/clock", {"when": "2027-01-11T08:00"}, "/ui/sandbox")
    assert resp.status == 303
    want = datetime(2027, 1, 11, 8, 0, tzinfo=WARSAW)
    assert abs((await sandbox_now(web) - want).total_seconds()) < 60

    for bad, says in (
        ("jutro", "Nie jest to ani okres"),
        ("-P1D", "Nie jest to ani okres"),
        ("", "Wpisz okres"),
    ):
        resp = await post_form(web, "/ui/sandbox/clock", {"when": bad}, page="/ui/sandbox")
        body = await resp.text()
        assert resp.status == 400, bad
        assert says in field_error(body, "when"), bad
        assert 'aria-invalid="true"' in body
    resp = await post_form(web, "/ui/sandbox/clock", {"real": "1"}, page="/ui/sandbox")
    assert resp.status == 303
    assert abs((await sandbox_now(web) - datetime.now(UTC)).total_seconds()) < 60


# --------------------------------------------------------------------------- providers


async def test_create_a_provider_and_sign_in_as_it(web: TestClient[Any, Any]) -> None:
    resp = await post_form(
        web, "/ui/sandbox/providers", {"name": "Gabinet Konsolowy"}, "/ui/sandbox"
    )
    body = await resp.text()
    assert resp.status == 201, body
    assert "BEGIN PRIVATE KEY" in body
    provider_id = re.search(r"(prov-[0-9a-f]{12})", body)
    assert provider_id
    pid = provider_id.group(1)
    store = web.server.app[SERVICES].store
    provider = await store.get(c.PROVIDERS, pid)
    assert provider is not None and provider["client_id"] in body
    assert "Gabinet Konsolowy" in await page(web, "/ui/sandbox")
    assert pid in await page(web, f"/ui/sandbox/providers/{pid}")

    resp = await post_form(web, f"/ui/sandbox/providers/{pid}/signin", {}, "/ui/sandbox")
    assert resp.status == 303 and resp.headers["Location"] == "/ui/"
    home = await page(web, "/ui/")
    assert "Gabinet Konsolowy" in home and pid in home

    too_long = await post_form(web, "/ui/sandbox/providers", {"name": "x" * 201}, "/ui/sandbox")
    assert too_long.status == 400
    assert "200" in field_error(await too_long.text(), "name")
    assert (await web.get("/ui/sandbox/providers/prov-nobody")).status == 404


# --------------------------------------------------------------------------- patients


async def test_patients_of_an_age_and_sex_referrals_and_screenings(
    web: TestClient[Any, Any],
) -> None:
    resp = await post_form(
        web, "/ui/sandbox/patients", {"age": "45", "sex": "female"}, "/ui/sandbox/patients"
    )
    body = await resp.text()
    assert resp.status == 201, body
    number = re.search(r"PESEL (\d{11})", text_of(body))
    assert number
    born = pesel.birth_date(number.group(1))
    today = (await sandbox_now(web)).astimezone(WARSAW).date()
    age = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
    assert pesel.is_valid(number.group(1)) and age == 45 and pesel.sex(number.group(1)) == "female"
    # the referral form is prefilled with the new patient
    assert f'name="ref_pesel" type="text" value="{number.group(1)}"' in body

    resp = await post_form(
        web,
        "/ui/sandbox/patients",
        {"birth_date": "1968-03-05", "sex": "male"},
        "/ui/sandbox/patients",
    )
    made = re.search(r"PESEL (\d{11})", text_of(await resp.text()))
    assert made and pesel.birth_date(made.group(1)) == date(1968, 3, 5)

    for fields, name, says in (
        ({"birth_date": "05.03.1968"}, "birth_date", "RRRR-MM-DD"),
        ({"age": "sto"}, "age", "od 0 do 120"),
        ({"age": "40", "birth_date": "1980-01-01"}, "age", "nie oba"),
    ):
        resp = await post_form(web, "/ui/sandbox/patients", fields, "/ui/sandbox/patients")
        assert resp.status == 400
        assert says in field_error(await resp.text(), name)

    resp = await post_form(
        web,
        "/ui/sandbox/referrals",
        {"ref_pesel": made.group(1), "ref_scope": "cardiology", "ref_category": "urgent"},
        "/ui/sandbox/patients",
    )
    body = text_of(await resp.text())
    assert resp.status == 201, body
    assert re.search(r"klucz [A-Z0-9]{20}, kod \d{4}", body)
    resp = await post_form(
        web,
        "/ui/sandbox/referrals",
        {"ref_pesel": "12345678901", "ref_scope": "cardiology"},
        "/ui/sandbox/patients",
    )
    assert resp.status == 400
    assert "PESEL" in field_error(await resp.text(), "ref_pesel")

    resp = await post_form(
        web,
        "/ui/sandbox/screenings",
        {"scr_pesel": number.group(1), "scr_scope": "mammography", "scr_date": "2025-06-01"},
        "/ui/sandbox/patients",
    )
    assert resp.status == 201, await resp.text()
    listing = text_of(await page(web, "/ui/sandbox/patients"))
    assert "Mammografia (program profilaktyki raka piersi) 2025-06-01" in listing
    resp = await post_form(
        web,
        "/ui/sandbox/screenings",
        {"scr_pesel": number.group(1), "scr_scope": "cardiology", "scr_date": "2025-06-01"},
        "/ui/sandbox/patients",
    )
    assert resp.status == 400
    assert "badań przesiewowych" in field_error(await resp.text(), "scr_scope")


# --------------------------------------------------------------------------- deliveries


async def until_text(
    web: TestClient[Any, Any], path: str, wanted: str, timeout: float = 10.0
) -> str:
    body = ""
    for _ in range(int(timeout / 0.1)):
        body = text_of(await page(web, path))
        if wanted in body:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"{wanted!r} not on {path}: {body[:2000]}")


@pytest.mark.parametrize(
    "backend", ["embedded", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)]
)
async def test_a_failed_delivery_and_its_reason_one_click_from_the_front_page(
    aiohttp_server: Callable[..., Any],
    aiohttp_client: Callable[..., Any],
    receiver: Receiver,
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """R-SCHED-4: the patient's booking goes to both subscriptions; the endpoint answering
    500 is on the front page with why, and one click opens the delivery with its tries."""
    if backend == "rabbitmq":
        settings = settings_for("rabbitmq", **{**FAST, "amqp_url": AMQP_URL})  # FAST has None
        await purge_rabbit(settings)
        web = await ui_client(settings, aiohttp_server, aiohttp_client)
    else:
        web = await web_client(aiohttp_server, aiohttp_client)
    s = await scene(web, receiver.url)
    front = await until_text(web, "/ui/sandbox?lang=en", "HTTP 500 (down for maintenance)")
    assert "Subscriptions in error" in front and "handshake failed: HTTP 500" in front
    raw = await page(web, "/ui/sandbox?lang=en")
    links = re.findall(r'<a href="(/ui/sandbox/providers/[^"]+/deliveries/[^"]+)"', raw)
    assert len(links) == 2  # the Appointment and the Slot
    detail = text_of(await page(web, links[0] + "?lang=en"))
    assert "Why: try 1 failed: HTTP 500 (down for maintenance); next try at" in detail
    assert "retrying" in detail and "Body (JSON), rebuilt from the kept event" in detail
    tries = detail[detail.find("Tries (1)") :]
    assert re.search(r"1 \S+ \S+ initial retrying 500 \d+ ms HTTP 500 down for maint", tries), tries

    # the provider's inbox: the sandbox:inbox deliveries kept whole and verified
    inbox = await page(web, f"/ui/sandbox/providers/{s.clinic.provider_id}/inbox?lang=en")
    text = text_of(inbox)
    assert text.count("Signature: verified — valid signature with the current secret") == 3
    assert "webhook-signature" in inbox and "&#34;resourceType&#34;: &#34;Bundle&#34;" in inbox
    only = text_of(
        await page(web, f"/ui/sandbox/providers/{s.clinic.provider_id}/inbox?show=failing&lang=en")
    )
    # the two events and the failed handshake
    assert only.count("Why:") == 3 and "Signature:" not in only
    assert "Why: the endpoint did not accept it: HTTP 500 (down for maintenance)" in only

    # a page at a time (here 2 a page): newer and older
    monkeypatch.setattr(reads, "LIST_LIMIT", 2)
    inbox_path = f"/ui/sandbox/providers/{s.clinic.provider_id}/inbox"
    first = await page(web, inbox_path + "?lang=en")
    assert '?page=2" rel="next">Older deliveries' in first and 'rel="prev"' not in first
    second = await page(web, inbox_path + "?page=2&lang=en")
    assert 'rel="prev"' in second and 'rel="next"' in second
    assert first.count("<article") == second.count("<article") == 2
    monkeypatch.undo()

    # a tampered kept request is not verified, and says why
    store = web.server.app[SERVICES].store
    kept = await store.find(c.SANDBOX_INBOX, {"tenant": s.clinic.provider_id})
    await store.update_one(
        c.SANDBOX_INBOX,
        {"_id": kept[-1]["_id"]},
        {"$set": {"raw_body": kept[-1]["raw_body"] + " "}},
    )
    text = text_of(await page(web, f"/ui/sandbox/providers/{s.clinic.provider_id}/inbox?lang=en"))
    assert "Signature: NOT verified — none of the 1 signature(s) matches" in text

    # another provider's delivery is not found under this one
    assert (await web.get(links[0].replace(s.clinic.provider_id, "prov-other"))).status == 404

    resp = await post_form(
        web,
        f"/ui/sandbox/providers/{s.clinic.provider_id}/inbox/clear",
        {},
        "/ui/sandbox",
    )
    assert resp.status == 303
    assert await store.count(c.SANDBOX_INBOX, {"tenant": s.clinic.provider_id}) == 0


async def test_outbox_shows_the_booking_and_a_reminder_after_the_clock_moves(
    web: TestClient[Any, Any],
) -> None:
    """R-NOT-1 and R-NOT-2: the booking's SMS at once, the 7-day reminder once the clock
    passes 7 days before the visit; clear empties the outbox."""
    s = await scene(web, None)
    await until_text(web, "/ui/sandbox/outbox", "booked")
    resp = await post_form(web, "/ui/sandbox/clock", {"when": "P3DT1M"}, "/ui/sandbox")
    assert resp.status == 303
    body = await until_text(web, f"/ui/sandbox/outbox?pesel={s.patient.pesel}", "reminder-7d")
    assert "14.01.2027 09:00" in body  # the visit, in Warsaw time
    sms_only = text_of(await page(web, f"/ui/sandbox/outbox?channel=sms&pesel={s.patient.pesel}"))
    assert "push" not in sms_only.split("Wiadomość Wizyta", 1)[-1]
    resp = await post_form(web, "/ui/sandbox/outbox/clear", {}, "/ui/sandbox/outbox")
    assert resp.status == 303
    assert "0 wiadomości" in text_of(await page(web, "/ui/sandbox/outbox"))


# --------------------------------------------------------------------------- reset, conformance


async def test_reset_asks_for_confirmation_then_deletes(web: TestClient[Any, Any]) -> None:
    store = web.server.app[SERVICES].store
    a = await (await web.post("/sandbox/providers", json={"name": "A"})).json()
    b = await (await web.post("/sandbox/providers", json={"name": "B"})).json()
    form = await page(web, f"/ui/sandbox/reset?provider_id={a['provider_id']}")
    assert f'<option value="{a["provider_id"]}" selected>' in form
    token = csrf_of(form)
    resp = await web.post(
        "/ui/sandbox/reset",
        data={"csrf_token": token, "what": "provider", "provider_id": a["provider_id"]},
    )
    assert resp.status == 400
    assert "nie da się cofnąć" in field_error(await resp.text(), "confirm")
    assert await store.get(c.PROVIDERS, a["provider_id"]) is not None
    resp = await web.post(
        "/ui/sandbox/reset",
        data={"csrf_token": token, "what": "provider", "provider_id": "", "confirm": "on"},
    )
    assert resp.status == 400
    assert field_error(await resp.text(), "provider_id")

    resp = await web.post(
        "/ui/sandbox/reset",
        data={
            "csrf_token": token,
            "what": "provider",
            "provider_id": a["provider_id"],
            "confirm": "on",
        },
        allow_redirects=False,
    )
    assert resp.status == 303
    assert await store.get(c.PROVIDERS, a["provider_id"]) is None
    assert await store.get(c.PROVIDERS, b["provider_id"]) is not None

    await web.post("/sandbox/clock", json={"advance": "P5D"})
    resp = await web.post(
        "/ui/sandbox/reset",
        data={"csrf_token": token, "what": "everything", "confirm": "on"},
        allow_redirects=False,
    )
    assert resp.status == 303
    assert await store.count(c.PROVIDERS, {}) == 0
    assert abs((await sandbox_now(web) - datetime.now(UTC)).total_seconds()) < 60


async def test_conformance_report_with_how_to_fix(web: TestClient[Any, Any]) -> None:
    prov = await (await web.post("/sandbox/providers", json={"name": "C"})).json()
    path = f"/ui/sandbox/providers/{prov['provider_id']}/conformance"
    assert "Run the check" in await page(web, path + "?lang=en")
    resp = await post_form(web, path, {}, path + "?lang=pl")
    assert resp.status == 200
    text = text_of(await resp.text())
    assert "Niezaliczony" in text
    # no slots: the first data check fails and says how to fix it; the rest are skipped
    assert "Bundle typu transaction" in text
    assert text.count("pominięty") == 6 and text.count(" niezaliczony ") == 1


async def test_deliveries_page_of_an_unknown_delivery_is_404(web: TestClient[Any, Any]) -> None:
    prov = await (await web.post("/sandbox/providers", json={"name": "D"})).json()
    assert (
        await web.get(f"/ui/sandbox/providers/{prov['provider_id']}/deliveries/x")
    ).status == 404
    assert (await web.get(f"/ui/sandbox/providers/{prov['provider_id']}/inbox")).status == 200
