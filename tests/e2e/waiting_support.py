"""Helpers for the waiting-room scenarios (issue 5): entries, slots pushed later, waiting
for the asynchronous assignment, proposals, the provider's inbox and the outbox.

The clock is ``patient_support.NOW`` (Monday 2027-01-04 09:00 Warsaw) unless a test
moves it: the patients' window (R-WAIT-2) then ends on 2027-02-13 (day 40).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from gateway import constants as c
from gateway.http.keys import SERVICES
from mappings import codes
from tests.e2e.patient_support import CONTACT, Clinic, Patient, call

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]], ok: Callable[[T], bool], timeout: float = 10.0
) -> T:
    """Poll ``probe`` until ``ok`` holds (the waiting room works asynchronously)."""
    deadline = asyncio.get_running_loop().time() + timeout
    value = await probe()
    while not ok(value):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not reached within {timeout}s; last value: {value!r}")
        await asyncio.sleep(0.03)
        value = await probe()
    return value


async def enter(
    client: Any,
    who: Patient,
    ref: dict[str, str],
    criteria: dict[str, Any] | None = None,
    contact: dict[str, str] | None = CONTACT,
    scope: str = "cardiology",
) -> tuple[int, Any]:
    body: dict[str, Any] = {"scope": scope, "referral": ref, "criteria": criteria or {}}
    if contact is not None:
        body["contact"] = contact
    return await call(client, "POST", "/patient/v1/waiting-room", who, body)


async def entered(client: Any, who: Patient, ref: dict[str, str], **criteria: Any) -> str:
    status, body = await enter(client, who, ref, criteria)
    assert status == 201, body
    return str(body["id"])


async def entry(client: Any, who: Patient, entry_id: str) -> dict[str, Any]:
    status, body = await call(client, "GET", f"/patient/v1/waiting-room/{entry_id}", who)
    assert status == 200, body
    result: dict[str, Any] = body
    return result


async def entry_status(client: Any, who: Patient, entry_id: str, want: str) -> dict[str, Any]:
    return await eventually(lambda: entry(client, who, entry_id), lambda e: e["status"] == want)


async def proposals(client: Any, who: Patient, status: str = "open") -> list[dict[str, Any]]:
    code, body = await call(client, "GET", "/patient/v1/proposals", who, status=status)
    assert code == 200, body
    result: list[dict[str, Any]] = body["proposals"]
    return result


async def one_proposal(client: Any, who: Patient) -> dict[str, Any]:
    found = await eventually(lambda: proposals(client, who), lambda ps: len(ps) == 1)
    return found[0]


def slot_resource(sid: str, start: datetime, category: str = "first-stable") -> dict[str, Any]:
    return {
        "resourceType": "Slot",
        "id": sid,
        "serviceType": [{"coding": [{"system": codes.SCOPE_SYSTEM, "code": "cardiology"}]}],
        "appointmentType": {"coding": [{"system": codes.SLOT_CATEGORY_SYSTEM, "code": category}]},
        "schedule": {"reference": "Schedule/sch"},
        "status": "free",
        "start": start.isoformat(),
        "end": (start + timedelta(minutes=20)).isoformat(),
    }


async def push_slot(
    client: Any, clinic: Clinic, sid: str, start: datetime, category: str = "first-stable"
) -> str:
    """A new free slot pushed by the provider's system (R-SCHED-2); its global id."""
    resp = await client.put(
        f"/fhir/Slot/{sid}",
        data=json.dumps(slot_resource(sid, start, category)),
        headers=clinic.fhir_headers(),
    )
    assert resp.status in (200, 201), await resp.text()
    return f"{clinic.provider_id}~{sid}"


async def fhir_slot(client: Any, clinic: Clinic, sid: str) -> dict[str, Any]:
    resp = await client.get(f"/fhir/Slot/{sid}", headers=clinic.fhir_headers())
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def subscribe_inbox(client: Any, clinic: Clinic) -> None:
    from tests.e2e.webhook_support import subscription

    resp = await client.post(
        "/fhir/Subscription",
        data=json.dumps(subscription("sandbox:inbox")),
        headers=clinic.fhir_headers(),
    )
    assert resp.status == 201, await resp.text()


async def inbox_appointments(client: Any, clinic: Clinic) -> list[dict[str, Any]]:
    """Appointments the provider's webhook endpoint got, in order (R-SCHED-4, R-CAN-3)."""
    from tests.e2e.webhook_support import notification_type

    inbox = await (await client.get(f"/sandbox/inbox/{clinic.provider_id}")).json()
    return [
        e["resource"]
        for d in inbox["deliveries"]
        if notification_type(d["body"]) == "event-notification"
        for e in d["body"]["entry"][1:]
        if e.get("resource", {}).get("resourceType") == "Appointment"
    ]


async def outbox(client: Any, **params: str) -> list[dict[str, Any]]:
    resp = await client.get("/sandbox/outbox", params=params)
    body: dict[str, Any] = await resp.json()
    result: list[dict[str, Any]] = body["messages"]
    return result


async def advance(client: Any, **delta: float) -> None:
    seconds = timedelta(**delta).total_seconds()
    resp = await client.post("/sandbox/clock", json={"advance": f"PT{seconds:.3f}S"})
    assert resp.status == 200, await resp.text()


async def settle(client: Any, rounds: int = 3) -> None:
    """Let the workers finish what is queued (events, commands) before a negative check."""
    services = client.server.app[SERVICES]
    for _ in range(rounds):
        for _ in range(200):
            pending = await services.store.pending_events(1)
            if not pending:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.15)


async def store_doc(client: Any, coll: str, doc_id: str) -> dict[str, Any] | None:
    doc: dict[str, Any] | None = await client.server.app[SERVICES].store.get(coll, doc_id)
    return doc


async def audit_records(client: Any) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = await client.server.app[SERVICES].store.find(c.AUDIT, {})
    return docs
