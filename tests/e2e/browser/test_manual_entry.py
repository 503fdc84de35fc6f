"""The manual-entry pages in a real browser (issue 10): a receptionist with no vendor
system signs in, adds the facility and a cardiology schedule, publishes six weeks of
Monday slots from a weekly pattern with the categories per day (R-SCHED-3), sees them
in the week view, books one for a patient and cancels it with a reason (R-CAN-1).
Keyboard only, except date fields and selects, which Playwright sets directly.
Screenshots of the main pages (see conftest.py for where they go)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from gateway import pesel
from tests.e2e.browser.conftest import Gateway, wait_for_path

DASH = "\N{EN DASH}"
SCOPE = "http://cer-gateway.org/fhir/CodeSystem/scope"
CATEGORY = "http://cer-gateway.org/fhir/CodeSystem/slot-category"


def nav(page: Any, name: str) -> None:
    """Follow a link of the main menu."""
    menu = page.get_by_role("navigation", name="Menu główne")
    menu.get_by_role("link", name=name, exact=True).click()


def type_into(page: Any, label: str, text: str) -> None:
    """Focus a field by its label (every field has one) and type, as a keyboard would."""
    field = page.get_by_label(label, exact=True)
    field.focus()
    page.keyboard.press("Control+A")
    page.keyboard.type(text)


def press(page: Any, button: str) -> None:
    page.get_by_role("button", name=button, exact=True).focus()
    page.keyboard.press("Enter")


def test_publish_six_weeks_book_and_cancel(
    page: Any,
    gateway: Gateway,
    sign_in: Callable[..., dict[str, Any]],
    screenshot: Callable[[Any, str], Path],
) -> None:
    provider = sign_in(page)

    # the facility
    nav(page, "Placówki")
    page.get_by_role("link", name="Dodaj placówkę").click()
    type_into(page, "Nazwa", "Poradnia Kardiologiczna Testowa")
    type_into(page, "Ulica i numer (nieobowiązkowe)", "ul. Zdrowa 1")
    type_into(page, "Kod pocztowy (nieobowiązkowe)", "00950")
    press(page, "Dodaj placówkę")
    # a postal code without its dash is explained next to the field, in plain words
    error = page.locator("#f-postal_code-error")
    assert "Wpisz kod pocztowy w postaci 00-950." in error.inner_text()
    assert page.get_by_label("Kod pocztowy (nieobowiązkowe)").get_attribute("aria-invalid")
    screenshot(page, "03-facility-error")
    type_into(page, "Kod pocztowy (nieobowiązkowe)", "00-950")
    type_into(page, "Miejscowość (nieobowiązkowe)", "Warszawa")
    press(page, "Dodaj placówkę")
    page.get_by_text("Dodano placówkę Poradnia Kardiologiczna Testowa.").wait_for()

    # a cardiology schedule
    nav(page, "Harmonogramy")
    page.get_by_label("Zakres", exact=True).select_option("cardiology")
    type_into(page, "Nazwa harmonogramu (nieobowiązkowe)", "Konsultacje kardiologiczne")
    press(page, "Dodaj harmonogram")
    page.get_by_text("Dodano harmonogram. Teraz dodaj terminy.").wait_for()

    # the weekly pattern: Mondays 8:00-12:00, 20 minutes, 6 weeks, the categories per day
    first = page.get_by_label("Pierwszy dzień", exact=True).input_value()
    assert date.fromisoformat(first).weekday() == 0
    assert page.get_by_label("Poniedziałek").is_checked()
    type_into(page, f"Pierwszorazowa {DASH} przypadek pilny", "1")
    type_into(page, f"Pierwszorazowa {DASH} przypadek stabilny", "10")
    # the script says the sum as it is typed
    assert "przydzielono: 11" in page.locator("#counts-total").inner_text()
    press(page, "Podgląd")
    assert "mieści się 12" in page.locator("#f-counts-error").inner_text()
    screenshot(page, "04-pattern-error")
    type_into(page, f"Pierwszorazowa {DASH} przypadek stabilny", "9")
    type_into(page, f"Pierwszorazowa {DASH} pacjent uprzywilejowany (poza kolejnością)", "1")
    type_into(page, "Kontrolna / kolejna", "1")
    press(page, "Podgląd")
    preview = page.locator("#preview")
    assert "Zostanie opublikowanych 72 terminów w 6 dniach" in preview.inner_text()
    screenshot(page, "05-pattern-preview")
    press(page, "Opublikuj 72 terminów")
    wait_for_path(page, "/ui/week")
    page.get_by_text("Opublikowano 72 terminów").wait_for()
    assert page.locator("tr.status-free").count() == 12
    screenshot(page, "06-week")

    # the FHIR API sees the same slots
    slots = gateway.get_json(
        "/fhir/Slot?_count=100", headers={"Authorization": f"Bearer {provider['token']}"}
    )
    assert slots["total"] == 72

    # book the 08:20 first-stable slot for a patient
    page.get_by_role("link", name=f"Zarezerwuj dla pacjenta {first} 08:20").focus()
    page.keyboard.press("Enter")
    wait_for_path_prefix(page, "/ui/slots/")
    patient = pesel.generate(date(1968, 4, 12), "female")
    type_into(page, "PESEL pacjenta", patient[:10] + str((int(patient[10]) + 1) % 10))
    type_into(page, "Telefon komórkowy (nieobowiązkowe)", "600 100 200")
    type_into(page, "Klucz", "ABCD1234")
    type_into(page, "Kod (4 cyfry)", "4821")
    press(page, "Zarezerwuj wizytę")
    assert (
        "Ostatnia cyfra tego numeru PESEL powinna być"
        in page.locator("#f-pesel-error").inner_text()
    )
    # the error summary takes the keyboard user to the field
    page.locator("#error-summary a").first.focus()
    page.keyboard.press("Enter")
    screenshot(page, "07-booking-error")
    type_into(page, "PESEL pacjenta", patient)
    press(page, "Zarezerwuj wizytę")
    wait_for_path_prefix(page, "/ui/appointments/")
    assert patient in page.content()
    assert "Aplikacja do ręcznego wprowadzania" in page.content()
    screenshot(page, "08-visit")

    # the day view shows who booked and through which channel
    page.get_by_role("link", name="← Widok dnia").click()
    booked = page.locator("tr.status-booked")
    assert booked.count() == 1
    assert f"•••••••{patient[-4:]}" in booked.inner_text()

    # cancel it with a reason
    booked.get_by_role("link").click()
    page.get_by_label("Powód", exact=True).select_option("patient-request")
    press(page, "Odwołaj wizytę")
    page.get_by_text("Wizytę odwołano, a jej termin zwolniono.").wait_for()
    assert "odwołana" in page.locator("dl.facts").inner_text()
    page.get_by_role("link", name="← Widok dnia").click()
    assert page.locator("tr.status-booked").count() == 0
    assert page.locator("tr.status-free").count() == 12
    assert "Odwołana wizyta" in page.locator(".cancelled").inner_text()
    screenshot(page, "09-day-cancelled")

    # the same page in English
    page.get_by_role("link", name="English").click()
    assert "Cancelled visit" in page.locator(".cancelled").inner_text()


def wait_for_path_prefix(page: Any, prefix: str) -> None:
    from urllib.parse import urlsplit

    page.wait_for_url(lambda url: urlsplit(url).path.startswith(prefix))
    page.wait_for_load_state()


def test_booking_form_in_tab_order_with_a_visible_focus(
    page: Any, gateway: Gateway, sign_in: Callable[..., dict[str, Any]]
) -> None:
    """Keyboard alone: Tab goes from the skip link through the menu to every field of the
    booking form in reading order, and the focused field shows a focus ring."""
    provider = sign_in(page)
    h = {"Authorization": f"Bearer {provider['token']}"}
    monday = date.today().toordinal() + 7 - date.today().weekday()
    day = date.fromordinal(monday).isoformat()
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:l",
                "resource": {"resourceType": "Location", "name": "P", "status": "active"},
                "request": {"method": "POST", "url": "Location"},
            },
            {
                "fullUrl": "urn:uuid:s",
                "resource": {
                    "resourceType": "Schedule",
                    "serviceType": [{"coding": [{"system": SCOPE, "code": "cardiology"}]}],
                    "actor": [{"reference": "urn:uuid:l"}],
                },
                "request": {"method": "POST", "url": "Schedule"},
            },
            {
                "resource": {
                    "resourceType": "Slot",
                    "serviceType": [{"coding": [{"system": SCOPE, "code": "cardiology"}]}],
                    "appointmentType": {"coding": [{"system": CATEGORY, "code": "control"}]},
                    "schedule": {"reference": "urn:uuid:s"},
                    "status": "free",
                    "start": f"{day}T09:00:00+01:00",
                    "end": f"{day}T09:20:00+01:00",
                },
                "request": {"method": "POST", "url": "Slot"},
            },
        ],
    }
    gateway.post_json("/fhir", bundle, headers={**h, "Content-Type": "application/fhir+json"})
    page.goto(f"/ui/day?date={day}")
    page.get_by_role("link", name="Zarezerwuj dla pacjenta").focus()
    page.keyboard.press("Enter")
    wait_for_path_prefix(page, "/ui/slots/")
    order = []
    for _ in range(40):
        page.keyboard.press("Tab")
        active = page.evaluate(
            "(() => { const e = document.activeElement;"
            " return [e.id || e.textContent.trim(), getComputedStyle(e).outlineStyle]; })()"
        )
        order.append(active[0])
        if active[0] == "f-pesel":
            assert active[1] != "none"  # the focus ring
        if active[0] == "Zarezerwuj wizytę":
            break
    assert order[0] == "Przejdź do treści"  # the skip link comes first
    fields = [x for x in order if x.startswith("f-")]
    assert fields == [
        "f-pesel",
        "f-phone",
        "f-email",
        "f-referral_key",
        "f-referral_code",
        "f-privileged",
    ]
    assert order[-1] == "Zarezerwuj wizytę"
