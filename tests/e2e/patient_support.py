"""Helpers for the patient-channel end-to-end tests: clinics with slots, sandbox patients,
referrals and screening history, and calls to ``/patient/v1`` as a patient would make them.

Time: every test sets the sandbox clock to ``NOW`` (Monday 2027-01-04, 09:00 in
Warsaw); the first-time cardiology window (R-WAIT-2, 40 days) then ends on
2027-02-13 and the screening window (R-PAT-4, 90 days) on 2027-04-04.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from mappings import codes

WARSAW = ZoneInfo("Europe/Warsaw")
NOW = datetime(2027, 1, 4, 9, 0, tzinfo=WARSAW)
CONTACT = {"phone": "+48 600 100 200"}


def at(day: date | str, hh: int = 8, mm: int = 0) -> datetime:
    """A local (Europe/Warsaw) time on ``day``."""
    d = date.fromisoformat(day) if isinstance(day, str) else day
    return datetime.combine(d, time(hh, mm), WARSAW)


def plus_days(days: int, hh: int = 10, mm: int = 0) -> datetime:
    return at(NOW.date() + timedelta(days=days), hh, mm)


@dataclass
class Clinic:
    provider_id: str
    token: str
    location: str  # the Location id
    slots: dict[str, str] = field(default_factory=dict)  # name -> global slot id

    @property
    def facility(self) -> str:
        return f"{self.provider_id}~{self.location}"

    def fhir_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": "application/fhir+json"}


@dataclass
class Patient:
    pesel: str
    token: str
    sex: str
    birth_date: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def set_clock(client: Any, when: datetime = NOW) -> None:
    resp = await client.post("/sandbox/clock", json={"set": when.isoformat()})
    assert resp.status == 200, await resp.text()


def _slot(
    sid: str, start: datetime, category: str | None, scope: str, minutes: int = 20
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Slot",
        "id": sid,
        "serviceType": [{"coding": [{"system": codes.SCOPE_SYSTEM, "code": scope}]}],
        "schedule": {"reference": "Schedule/sch"},
        "status": "free",
        "start": start.isoformat(),
        "end": (start + timedelta(minutes=minutes)).isoformat(),
    }
    if category:
        res["appointmentType"] = {
            "coding": [{"system": codes.SLOT_CATEGORY_SYSTEM, "code": category}]
        }
    return {"resource": res, "request": {"method": "PUT", "url": f"Slot/{sid}"}}


async def clinic(
    client: Any,
    slots: Sequence[tuple[str, datetime, str | None]],
    *,
    scope: str = "cardiology",
    name: str = "Poradnia Kardiologiczna",
    city: str = "Kraków",
    postal_code: str = "31-147",
) -> Clinic:
    """A sandbox provider with one facility, one schedule of ``scope`` and ``slots``
    (``(name, local start, category)``), sent as one FHIR transaction."""
    resp = await client.post("/sandbox/providers", json={"name": name})
    assert resp.status == 201, await resp.text()
    prov = await resp.json()
    location = {
        "resourceType": "Location",
        "id": "loc",
        "status": "active",
        "name": name,
        "address": {"line": ["ul. Długa 5"], "city": city, "postalCode": postal_code},
    }
    schedule = {
        "resourceType": "Schedule",
        "id": "sch",
        "active": True,
        "serviceType": [{"coding": [{"system": codes.SCOPE_SYSTEM, "code": scope}]}],
        "actor": [{"reference": "Location/loc"}],
    }
    entries = [
        {"resource": location, "request": {"method": "PUT", "url": "Location/loc"}},
        {"resource": schedule, "request": {"method": "PUT", "url": "Schedule/sch"}},
        *[_slot(sid, start, cat, scope) for sid, start, cat in slots],
    ]
    out = Clinic(prov["provider_id"], prov["token"], "loc")
    resp = await client.post(
        "/fhir",
        data=json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
        headers=out.fhir_headers(),
    )
    assert resp.status == 200, await resp.text()
    out.slots = {sid: f"{out.provider_id}~{sid}" for sid, _, _ in slots}
    return out


async def patient(client: Any, sex: str = "female", birth_date: str = "1970-05-01") -> Patient:
    resp = await client.post("/sandbox/patients", json={"sex": sex, "birth_date": birth_date})
    assert resp.status == 201, await resp.text()
    p = await resp.json()
    return Patient(p["pesel"], p["token"], sex, birth_date)


async def referral(
    client: Any,
    who: Patient,
    scope: str = "cardiology",
    category: str = "stable",
    **extra: Any,
) -> dict[str, str]:
    resp = await client.post(
        "/sandbox/referrals",
        json={"pesel": who.pesel, "scope": scope, "category": category, **extra},
    )
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    return {"key": body["key"], "code": body["code"]}


async def screening(client: Any, who: Patient, scope: str, day: str, hpv: bool = False) -> None:
    resp = await client.post(
        "/sandbox/screenings", json={"pesel": who.pesel, "scope": scope, "date": day, "hpv": hpv}
    )
    assert resp.status == 201, await resp.text()


async def call(
    client: Any, method: str, path: str, who: Patient | None, body: Any = None, **params: str
) -> tuple[int, Any]:
    """``(status, JSON body)`` of a patient call; problem+json bodies included."""
    kwargs: dict[str, Any] = {"headers": who.headers if who else {}}
    if body is not None:
        kwargs["json"] = body
    if params:
        kwargs["params"] = params
    resp = await client.request(method, path, **kwargs)
    text = await resp.text()
    if resp.status >= 400:
        assert resp.content_type == "application/problem+json", text
    return resp.status, (json.loads(text) if text else None)


async def search(client: Any, who: Patient, **params: str) -> tuple[int, Any]:
    return await call(client, "GET", "/patient/v1/slots", who, **params)


async def book(
    client: Any,
    who: Patient,
    slot_id: str,
    ref: dict[str, str] | None = None,
    contact: dict[str, str] | None = CONTACT,
) -> tuple[int, Any]:
    body: dict[str, Any] = {"slot_id": slot_id}
    if ref is not None:
        body["referral"] = ref
    if contact is not None:
        body["contact"] = contact
    return await call(client, "POST", "/patient/v1/appointments", who, body)


async def cancel(
    client: Any, who: Patient, appointment_id: str, reason: str = "patient-request"
) -> tuple[int, Any]:
    return await call(
        client, "POST", f"/patient/v1/appointments/{appointment_id}/cancel", who, {"reason": reason}
    )


async def reschedule(
    client: Any, who: Patient, appointment_id: str, slot_id: str
) -> tuple[int, Any]:
    return await call(
        client,
        "POST",
        f"/patient/v1/appointments/{appointment_id}/reschedule",
        who,
        {"slot_id": slot_id},
    )


async def mine(client: Any, who: Patient) -> list[dict[str, Any]]:
    status, body = await call(client, "GET", "/patient/v1/appointments", who)
    assert status == 200, body
    result: list[dict[str, Any]] = body["appointments"]
    return result


async def one(client: Any, who: Patient, appointment_id: str) -> dict[str, Any]:
    status, body = await call(client, "GET", f"/patient/v1/appointments/{appointment_id}", who)
    assert status == 200, body
    result: dict[str, Any] = body
    return result


def ids(page: dict[str, Any]) -> list[str]:
    return [s["id"] for s in page["slots"]]
