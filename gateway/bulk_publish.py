"""The public slot feed: SMART Scheduling Links ``$bulk-publish`` (issue 9).

Aggregators and the payer's waiting-time service read free capacity without
credentials: a manifest (``GET /$bulk-publish``) names three NDJSON files,
Location, Schedule and Slot, of every provider. Nothing personal is in them:
the public resources are built here from the central model field by field
(never the vendor's original resource, which may carry anything), a Slot is
``free`` or ``busy`` only, and no Appointment or participant appears.

Slots from now on (the sandbox clock in sandbox mode); ``_since`` limits every
file to resources changed at or after that instant (incremental reads, as the
specification suggests). The files are streamed from a store cursor
(``Store.iterate``), never held in memory whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import orjson

from gateway import constants as c
from gateway.ports import Filter, Store
from gateway.timeutil import from_store, to_fhir, to_store
from mappings import codes

TYPES = ("Location", "Schedule", "Slot")
NDJSON = "application/fhir+ndjson"
BATCH = 500  # lines per write to the response, documents per store round trip


def public_id(tenant: str, rid: str) -> str:
    """A feed-wide id (FHIR id: 1-64 of ``[A-Za-z0-9.-]``), the same for every reference."""
    pid = f"{tenant}.{rid}"
    if len(pid) <= 64 and all(ch.isalnum() or ch in ".-" for ch in pid):
        return pid
    return "h-" + hashlib.sha256(pid.encode()).hexdigest()[:40]


def manifest(
    base_url: str, request_url: str, now: datetime, since: datetime | None
) -> dict[str, Any]:
    query = f"?_since={to_fhir(since)}" if since is not None else ""
    return {
        "transactionTime": to_fhir(now),
        "request": request_url,
        "output": [{"type": t, "url": f"{base_url}/bulk-publish/{t}.ndjson{query}"} for t in TYPES],
        "error": [],
    }


def public_location(doc: dict[str, Any]) -> dict[str, Any]:
    central = doc["central"]
    out: dict[str, Any] = {
        "resourceType": "Location",
        "id": public_id(doc["tenant"], doc["rid"]),
        "name": central.get("name") or "",
    }
    idents = [
        {"system": i["system"], "value": i["value"]}
        for i in central.get("identifiers") or []
        if i.get("system") and i.get("value")
    ]
    if idents:
        out["identifier"] = idents
    # The facility's own phone / e-mail / web page, as it published them on its Location.
    telecom = [
        {"system": t["system"], "value": t["value"]}
        for t in (doc.get("resource") or {}).get("telecom") or []
        if isinstance(t, dict)
        and t.get("system") in ("phone", "email", "url")
        and isinstance(t.get("value"), str)
    ]
    out["telecom"] = telecom
    address: dict[str, Any] = {"country": "PL"}
    if central.get("lines"):
        address["line"] = list(central["lines"])
    if central.get("city"):
        address["city"] = central["city"]
    if central.get("postal_code"):
        address["postalCode"] = central["postal_code"]
    out["address"] = address
    return out


def public_schedule(doc: dict[str, Any]) -> dict[str, Any]:
    central = doc["central"]
    scopes = codes.scopes()
    return {
        "resourceType": "Schedule",
        "id": public_id(doc["tenant"], doc["rid"]),
        "serviceType": [
            {
                "coding": [
                    {
                        "system": codes.SCOPE_SYSTEM,
                        "code": s,
                        "display": scopes[s].display_pl if s in scopes else s,
                    }
                ]
            }
            for s in central.get("scopes") or []
        ],
        "actor": [{"reference": f"Location/{public_id(doc['tenant'], central['location_id'])}"}],
    }


def public_slot(doc: dict[str, Any]) -> dict[str, Any]:
    central = doc["central"]
    out: dict[str, Any] = {
        "resourceType": "Slot",
        "id": public_id(doc["tenant"], doc["rid"]),
        "schedule": {"reference": f"Schedule/{public_id(doc['tenant'], central['schedule_id'])}"},
        # free means a patient may book it now: not booked, not held for the waiting room
        "status": "free" if central.get("status") == "free" and not central.get("hold") else "busy",
        "start": to_fhir(from_store(central["start"])),
        "end": to_fhir(from_store(central["end"])),
    }
    if central.get("category"):
        out["appointmentType"] = {
            "coding": [{"system": codes.SLOT_CATEGORY_SYSTEM, "code": central["category"]}]
        }
    return out


BUILDERS = {"Location": public_location, "Schedule": public_schedule, "Slot": public_slot}


def _filter(rtype: str, now: datetime, since: datetime | None) -> Filter:
    flt: dict[str, Any] = {
        "type": rtype,
        "deleted": False,
        "tenant": {"$ne": c.WAITING_ROOM_TENANT},
    }
    if rtype == "Slot":
        flt["central.start"] = {"$gte": to_store(now)}
        flt["central.status"] = {"$ne": "entered-in-error"}
    elif rtype == "Schedule":
        flt["central.active"] = True
    if since is not None:
        flt["last_updated"] = {"$gte": to_store(since)}
    return flt


async def ndjson(
    store: Store, rtype: str, now: datetime, since: datetime | None
) -> AsyncIterator[bytes]:
    """The NDJSON file of ``rtype``, in chunks of ``BATCH`` lines."""
    build = BUILDERS[rtype]
    chunk: list[bytes] = []
    # Unsorted: a sort over every future slot would be done in the server's memory.
    fields = ("tenant", "rid", "central") + (("resource",) if rtype == "Location" else ())
    async for doc in store.iterate(
        c.RESOURCES, _filter(rtype, now, since), batch_size=BATCH, fields=fields
    ):
        chunk.append(orjson.dumps(build(doc)) + b"\n")
        if len(chunk) >= BATCH:
            yield b"".join(chunk)
            chunk = []
    if chunk:
        yield b"".join(chunk)
