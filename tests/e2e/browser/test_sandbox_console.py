"""The sandbox console in a real browser (issue 10): a tester moves the clock, makes a
provider, a patient and an e-referral in the console; the provider (over the API) has a
subscription to ``sandbox:inbox`` and one to an endpoint that answers 500; the patient
books; the inbox shows the signed deliveries; the clock advances by 7 days and the
outbox shows the 7-day reminder (R-NOT-2) and the inbox a heartbeat; the failed delivery
and why it failed is one click from the front page. Screenshots of the console's pages."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mappings import codes
from tests.e2e.browser.conftest import Gateway
from tests.e2e.webhook_support import Receiver, subscription

Shot = Callable[[Any, str], Path]


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    # The sweeper checks due tries and heartbeats often, so a clock jump shows at once.
    gw = Gateway(webhook_sweep_seconds=0.2, webhook_sweep_grace_seconds=0.5)
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def failing_endpoint(gateway: Gateway) -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.mode = "fail"  # 500 "down for maintenance"
    gateway.run(receiver.start())
    try:
        yield receiver
    finally:
        gateway.run(receiver.stop())


def reload_until(page: Any, pattern: str, timeout: float = 20.0) -> str:
    """Reload until the page's text matches ``pattern`` (the workers run in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        text = page.locator("main").inner_text()
        if re.search(pattern, text):
            return str(text)
        if time.monotonic() > deadline:
            raise AssertionError(f"{pattern!r} did not appear on {page.url}:\n{text[:3000]}")
        time.sleep(0.3)
        page.reload()


def fhir(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}


def publish_a_slot(gateway: Gateway, token: str) -> None:
    """A Location, a cardiology Schedule and one slot on Thursday 14.01.2027 09:00."""
    scope = [{"coding": [{"system": codes.SCOPE_SYSTEM, "code": "cardiology"}]}]
    entries = [
        {
            "resource": {
                "resourceType": "Location",
                "id": "loc",
                "status": "active",
                "name": "Poradnia Kardiologiczna",
                "address": {"line": ["ul. Długa 5"], "city": "Kraków", "postalCode": "31-147"},
            },
            "request": {"method": "PUT", "url": "Location/loc"},
        },
        {
            "resource": {
                "resourceType": "Schedule",
                "id": "sch",
                "active": True,
                "serviceType": scope,
                "actor": [{"reference": "Location/loc"}],
            },
            "request": {"method": "PUT", "url": "Schedule/sch"},
        },
        {
            "resource": {
                "resourceType": "Slot",
                "id": "s1",
                "serviceType": scope,
                "appointmentType": {
                    "coding": [{"system": codes.SLOT_CATEGORY_SYSTEM, "code": "first-stable"}]
                },
                "schedule": {"reference": "Schedule/sch"},
                "status": "free",
                "start": "2027-01-14T09:00:00+01:00",
                "end": "2027-01-14T09:20:00+01:00",
            },
            "request": {"method": "PUT", "url": "Slot/s1"},
        },
    ]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    status, body = gateway.call("POST", "/fhir", bundle, headers=fhir(token))
    assert status == 200, body


def test_console_clock_reminder_inbox_and_a_failed_delivery_in_one_click(
    page: Any, gateway: Gateway, failing_endpoint: Receiver, screenshot: Shot
) -> None:
    # The clock, keyboard only: Monday 4 January 2027, 09:00 in Warsaw.
    page.goto("/ui/sandbox")
    page.get_by_label("Przesuń o albo ustaw na").focus()
    page.keyboard.type("2027-01-04T09:00")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "Zegar piaskownicy wskazuje teraz 04.01.2027 09:00" in page.inner_text("main")

    # A provider, made in the console.
    page.get_by_label(re.compile(r"^Nazwa")).fill("Poradnia Konsolowa")
    with page.expect_navigation():
        page.get_by_role("button", name="Utwórz świadczeniodawcę").click()
    created = page.inner_text("main")
    found = re.search(r"(prov-[0-9a-f]{12})", created)
    assert found and "BEGIN PRIVATE KEY" in page.locator("#private-key").input_value()
    provider_id, token = found.group(1), page.locator("#token").input_value()
    screenshot(page, "console-02-new-provider")

    # Over the API, as the vendor's system: a slot and two subscriptions.
    publish_a_slot(gateway, token)
    for endpoint, heartbeat in (("sandbox:inbox", 3600), (failing_endpoint.url, None)):
        status, body = gateway.call(
            "POST", "/fhir/Subscription", subscription(endpoint, heartbeat=heartbeat), fhir(token)
        )
        assert status == 201, body

    # A patient of 52 and her e-referral, made in the console.
    page.goto("/ui/sandbox/patients")
    page.get_by_label(re.compile(r"^Wiek w latach")).fill("52")
    page.get_by_label("kobieta").check()
    with page.expect_navigation():
        page.get_by_role("button", name="Utwórz pacjenta").click()
    made = re.search(r"PESEL (\d{11})", page.inner_text("main"))
    assert made
    patient_token = page.locator("#patient-token").input_value()
    assert page.get_by_label("PESEL pacjenta").first.input_value() == made.group(1)
    page.get_by_label("Zakres").select_option("cardiology")
    with page.expect_navigation():
        page.get_by_role("button", name="Wystaw e-skierowanie").click()
    referral = re.search(r"klucz ([A-Z0-9]{20}), kod (\d{4})", page.inner_text("main"))
    assert referral
    screenshot(page, "console-03-patients")

    # The patient books in the portal: the provider hears of it by webhook (R-SCHED-4).
    status, booked = gateway.call(
        "POST",
        "/patient/v1/appointments",
        {
            "slot_id": f"{provider_id}~s1",
            "referral": {"key": referral.group(1), "code": referral.group(2)},
            "contact": {"phone": "+48 600 100 200"},
        },
        headers={"Authorization": f"Bearer {patient_token}"},
    )
    assert status == 201, booked

    # The inbox: the booking's deliveries, kept whole, signature verified.
    page.goto("/ui/sandbox")
    page.get_by_role("row", name=re.compile("Poradnia Konsolowa")).get_by_role(
        "link", name="Skrzynka webhooków"
    ).click()
    page.wait_for_url(f"**/ui/sandbox/providers/{provider_id}/inbox")
    text = reload_until(page, r"Zdarzenie 2")
    assert text.count("Podpis: zweryfikowany") >= 3  # handshake, Appointment, Slot
    assert "Sygnał życia" not in text
    screenshot(page, "console-04-inbox")

    # Seven days later: the reminder in the outbox, the heartbeat in the inbox.
    page.goto("/ui/sandbox")
    with page.expect_navigation():
        page.get_by_role("button", name="+7 dni").click()
    assert "11.01.2027 09:0" in page.inner_text("main")
    page.get_by_role("link", name="Wysłane powiadomienia").click()
    outbox = reload_until(page, r"reminder-7d")
    assert re.search(r"booked", outbox) and "14.01.2027 09:00" in outbox
    screenshot(page, "console-05-outbox")
    page.goto(f"/ui/sandbox/providers/{provider_id}/inbox")
    reload_until(page, r"Sygnał życia \(heartbeat\)")

    # The failed delivery: on the front page with why, one click to all of it.
    page.goto("/ui/sandbox")
    failing = page.get_by_role("region", name=re.compile("Nieudane dostarczenia webhooków"))
    # Seven days of failures outlast the 5-day grace: the endpoint is disabled and its
    # events held (for $replay), still listed as failed, with why.
    disabled = r"nieudana: HTTP 500 \(down for maintenance\); adres odbiorcy ciągle odrzucał"
    front = reload_until(page, disabled)
    assert "Subskrypcje z błędem" in front
    screenshot(page, "console-01-front")
    assert failing.get_by_role("link", name=re.compile(r"Zdarzenie 1")).is_visible()
    # keyboard only: a few Tabs from the top of the page reach the failed deliveries
    presses = 0
    while not page.evaluate("document.activeElement.textContent").startswith("Zdarzenie"):
        assert presses < 10, "the failed deliveries should be among the first stops"
        page.keyboard.press("Tab")
        presses += 1
    assert page.evaluate("document.activeElement.textContent").startswith("Zdarzenie 2")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    detail = page.inner_text("main")
    assert re.search(r"Dlaczego: próba \d " + disabled, detail), detail
    assert "wstrzymane" in detail and "$replay" in detail
    tries = detail[detail.find("Próby (") :]
    assert re.search(r"1\s+04\.01\.2027 [\d:]+\s+pierwsza\s+ponawiane\s+500", tries), tries
    screenshot(page, "console-06-failed-delivery")

    # The conformance report of this provider.
    page.goto(f"/ui/sandbox/providers/{provider_id}/conformance")
    with page.expect_navigation():
        page.get_by_role("button", name="Uruchom sprawdzenie").click()
    report = page.inner_text("main")
    assert "Niezaliczony" in report and "Jak poprawić" in report
    screenshot(page, "console-07-conformance")

    # Reset asks for a confirmation first; the error is next to the checkbox.
    page.goto(f"/ui/sandbox/reset?provider_id={provider_id}")
    page.get_by_role("button", name="Usuń", exact=True).click()
    error = page.locator("#f-confirm-error")
    assert "nie da się cofnąć" in error.inner_text()
    screenshot(page, "console-08-reset")

    # And into the manual entry as this provider.
    page.goto(f"/ui/sandbox/providers/{provider_id}")
    page.get_by_role("button", name="Zaloguj się jako ten świadczeniodawca").click()
    page.wait_for_url("**/ui/")
    assert "Poradnia Konsolowa" in page.inner_text("body")
