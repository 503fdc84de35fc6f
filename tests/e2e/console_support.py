"""A sandbox scene for the console's tests: a clinic with a booked visit, one subscription
to ``sandbox:inbox`` and one to an endpoint that answers 500."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from tests.e2e.patient_support import NOW, Clinic, Patient, book, clinic, patient, referral
from tests.e2e.patient_support import set_clock as set_patient_clock
from tests.e2e.webhook_support import call, secret_of, subscription

VISIT = NOW + timedelta(days=10)  # Thursday 2027-01-14 09:00 in Warsaw


@dataclass
class Scene:
    clinic: Clinic
    patient: Patient
    appointment_id: str
    inbox_subscription: str
    inbox_secret: str
    failing_subscription: str | None


async def subscribe(client: Any, token: str, endpoint: str) -> tuple[str, str]:
    status, created = await call(
        client, "POST", "/fhir/Subscription", token, subscription(endpoint)
    )
    assert status == 201, created
    return str(created["id"]), secret_of(created)


async def scene(client: Any, failing_endpoint: str | None) -> Scene:
    """Clock at ``NOW``; the patient books the visit in the portal (R-SCHED-4: the provider
    hears of it by webhook), with a phone for the SMS (R-NOT-1)."""
    await set_patient_clock(client)
    place = await clinic(client, [("s1", VISIT, "first-stable")])
    inbox_sid, inbox_secret = await subscribe(client, place.token, "sandbox:inbox")
    failing_sid = None
    if failing_endpoint is not None:
        failing_sid, _ = await subscribe(client, place.token, failing_endpoint)
    who = await patient(client)
    ref = await referral(client, who)
    status, appt = await book(client, who, place.slots["s1"], ref)
    assert status == 201, appt
    return Scene(place, who, str(appt["id"]), inbox_sid, inbox_secret, failing_sid)
