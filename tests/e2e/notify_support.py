"""A sandbox clinic for the notification scenarios: one provider, a location, a
cardiology schedule; slots and visits by PUT; the sandbox clock and outbox."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from mappings import codes
from tests.e2e.conftest import auth, new_provider

WARSAW = ZoneInfo("Europe/Warsaw")
PHONE = "+48 600 100 200"
PHONE_DIGITS = "48600100200"
EMAIL = "pacjent@example.pl"


def warsaw(y: int, m: int, d: int, hh: int = 8, mm: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=WARSAW)


class Clinic:
    def __init__(self, client: Any, provider: dict[str, Any]) -> None:
        self.client = client
        self.provider = provider
        self.id = provider["provider_id"]
        self.h = auth(provider["token"])

    @classmethod
    async def open(cls, client: Any) -> Clinic:
        clinic = cls(client, await new_provider(client))
        await clinic.put(
            "Location",
            "loc1",
            {
                "resourceType": "Location",
                "status": "active",
                "name": "Poradnia Kardiologiczna",
                "address": {"line": ["ul. Długa 5"], "city": "Kraków", "postalCode": "31-147"},
            },
        )
        await clinic.put(
            "Schedule",
            "sch1",
            {
                "resourceType": "Schedule",
                "active": True,
                "serviceType": [{"coding": [{"system": codes.SCOPE_SYSTEM, "code": "cardiology"}]}],
                "actor": [{"reference": "Location/loc1"}],
            },
        )
        return clinic

    async def put(self, rtype: str, rid: str, resource: dict[str, Any]) -> dict[str, Any]:
        resp = await self.client.put(f"/fhir/{rtype}/{rid}", json=resource, headers=self.h)
        body: dict[str, Any] = await resp.json()
        assert resp.status in (200, 201), body
        return body

    async def get(self, rtype: str, rid: str) -> dict[str, Any]:
        resp = await self.client.get(f"/fhir/{rtype}/{rid}", headers=self.h)
        body: dict[str, Any] = await resp.json()
        assert resp.status == 200, body
        return body

    async def slot(self, sid: str, start: datetime, category: str = "first-stable") -> None:
        await self.put(
            "Slot",
            sid,
            {
                "resourceType": "Slot",
                "schedule": {"reference": "Schedule/sch1"},
                "serviceType": [{"coding": [{"system": codes.SCOPE_SYSTEM, "code": "cardiology"}]}],
                "appointmentType": {
                    "coding": [{"system": codes.SLOT_CATEGORY_SYSTEM, "code": category}]
                },
                "status": "free",
                "start": start.isoformat(),
                "end": (start + timedelta(minutes=20)).isoformat(),
            },
        )

    def appointment(
        self,
        slot_id: str,
        pesel: str,
        *,
        phone: str | None = PHONE,
        email: str | None = EMAIL,
        status: str = "booked",
        reason: str | None = None,
    ) -> dict[str, Any]:
        ext: list[dict[str, Any]] = []
        if phone:
            ext.append(
                {
                    "url": codes.EXT_PATIENT_CONTACT,
                    "valueContactPoint": {"system": "phone", "value": phone},
                }
            )
        if email:
            ext.append(
                {
                    "url": codes.EXT_PATIENT_CONTACT,
                    "valueContactPoint": {"system": "email", "value": email},
                }
            )
        res: dict[str, Any] = {
            "resourceType": "Appointment",
            "status": status,
            "slot": [{"reference": f"Slot/{slot_id}"}],
            "participant": [
                {
                    "actor": {
                        "type": "Patient",
                        "identifier": {"system": codes.PESEL_SYSTEM, "value": pesel},
                    },
                    "status": "accepted",
                }
            ],
            "basedOn": [
                {"identifier": {"system": codes.E_REFERRAL_SYSTEM, "value": "Ab12Cd34:1234"}}
            ],
        }
        if ext:
            res["extension"] = ext
        if reason:
            res["cancelationReason"] = {
                "coding": [{"system": codes.CANCELLATION_REASON_SYSTEM, "code": reason}]
            }
        return res

    async def book(self, aid: str, slot_id: str, pesel: str, **kw: Any) -> dict[str, Any]:
        return await self.put("Appointment", aid, self.appointment(slot_id, pesel, **kw))

    async def cancel(self, aid: str, slot_id: str, pesel: str, **kw: Any) -> dict[str, Any]:
        res = self.appointment(
            slot_id, pesel, status="cancelled", reason="provider-unavailable", **kw
        )
        return await self.put("Appointment", aid, res)


async def new_patient(client: Any) -> str:
    resp = await client.post("/sandbox/patients", json={})
    assert resp.status == 201
    pesel: str = (await resp.json())["pesel"]
    return pesel


async def set_clock(client: Any, instant: datetime) -> None:
    resp = await client.post("/sandbox/clock", json={"set": instant.isoformat()})
    assert resp.status == 200, await resp.text()


async def outbox(client: Any, **query: str) -> list[dict[str, Any]]:
    resp = await client.get("/sandbox/outbox", params=query)
    assert resp.status == 200, await resp.text()
    messages: list[dict[str, Any]] = (await resp.json())["messages"]
    return messages


async def wait_outbox(
    client: Any, count: int, timeout: float = 10.0, **query: str
) -> list[dict[str, Any]]:
    """The outbox once it holds at least ``count`` messages matching ``query``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = await outbox(client, **query)
        if len(found) >= count or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.05)


async def settle(client: Any, seconds: float = 0.6) -> None:
    """Give the relay and the consumers time to do what they would (nothing expected)."""
    await asyncio.sleep(seconds)
