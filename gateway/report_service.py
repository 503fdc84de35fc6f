"""Reading the store for the reports and the reconciliation (issue 9).

The tallies are pure (``gateway.reports``, ``gateway.reconciliation``); this
module streams the documents they need through the ``Store`` port
(``Store.iterate``: a cursor, not a list) and hands them over.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from gateway import constants as c
from gateway import reconciliation as rec
from gateway import reports
from gateway.ports import Store

SEP = "~"  # a waiting-room entry's visit is "<provider>~<appointment id>" (gateway.patients)
# What the tallies read of a resource document: not the FHIR resource nor the search fields.
FIELDS = ("tenant", "rid", "central", "created", "deleted")


def _tenants(providers: Sequence[str] | None) -> dict[str, Any]:
    if providers is None:
        return {"tenant": {"$ne": c.WAITING_ROOM_TENANT}}
    return {"tenant": {"$in": list(providers)}}


async def activity(
    store: Store, first: date, last: date, providers: Sequence[str] | None
) -> dict[str, Any]:
    """The activity report of ``providers`` (None: all of them) for Warsaw days first..last."""
    tally = reports.Activity(first, last)
    lo, hi = reports.day_range(first, last)
    who = _tenants(providers)
    async for doc in store.iterate(
        c.RESOURCES,
        {**who, "type": "Slot", "deleted": False, "central.start": {"$gte": lo, "$lt": hi}},
        fields=FIELDS,
    ):
        tally.add_slot(doc["tenant"], doc["central"])
    window = {"$gte": lo, "$lt": hi}
    async for doc in store.iterate(
        c.RESOURCES,
        {
            **who,
            "type": "Appointment",
            "deleted": False,
            "$or": [
                {"central.booked_at": window},
                {"central.cancelled_at": window},
                {"central.booked_at": None, "created": window},
            ],
        },
        fields=FIELDS,
    ):
        tally.add_appointment(doc["tenant"], doc["central"], doc.get("created"))
    allowed = None if providers is None else set(providers)
    # only what the tally needs: never the patient's PESEL or contact data
    entry_fields = ("scope", "status", "entered_at", "assigned_at", "left_at", "updated_at")
    async for entry in store.iterate(
        c.WAITING_ROOM, {"entered_at": {"$lt": hi}}, fields=(*entry_fields, "appointment")
    ):
        if (
            entry.get("status") not in reports.WAITING_STATUSES
            and (entry.get("updated_at") or "") < lo
        ):
            continue  # over before the report's first day
        target = str(entry.get("appointment") or "")
        assigned_to = target.split(SEP, 1)[0] if SEP in target else None
        if allowed is not None and assigned_to not in allowed:
            assigned_to = None
        tally.add_waiting_entry(entry, assigned_to)
    out = tally.to_json()
    out["providers"] = sorted(providers) if providers is not None else "all"
    return out


async def compliance(
    store: Store, as_of: datetime, providers: Sequence[str] | None
) -> dict[str, Any]:
    """The compliance report (R-SCOPE-3) of ``providers`` (None: every provider)."""
    tally = reports.Compliance(as_of)
    flt: dict[str, Any] = {"role": {"$ne": "payer"}}
    if providers is not None:
        flt["_id"] = {"$in": list(providers)}
    async for p in store.iterate(c.PROVIDERS, flt):
        tally.add_provider(p["_id"], p.get("name"))
    who = _tenants(providers)
    schedules = [
        doc async for doc in store.iterate(c.RESOURCES, {**who, "type": "Schedule"}, fields=FIELDS)
    ]
    for doc in schedules:
        tenant, central = doc["tenant"], doc["central"]
        if not doc.get("deleted", False):
            tally.add_schedule(tenant, central)
        # Per schedule and scope through the (tenant, type, schedule) index, not a read of
        # every slot: the first slot ever transmitted (deleted ones too) and the live count.
        for scope in central.get("scopes") or []:
            mine = {"tenant": tenant, "type": "Slot", "central.schedule_id": doc["rid"]}
            mine["central.scope"] = scope
            first = await store.find_one(
                c.RESOURCES, {**mine, "created": {"$exists": True}}, sort=[("created", 1)]
            )
            count = await store.count(c.RESOURCES, {**mine, "deleted": False})
            if first is not None or count:
                tally.add_slots(tenant, scope, count, first.get("created") if first else None)
    async for doc in store.iterate(
        c.RESOURCES, {**who, "type": "Appointment", "deleted": False}, fields=FIELDS
    ):
        tally.add_appointment(doc["tenant"], doc["central"], doc.get("created"))
    return tally.to_json()


async def reconcile(
    store: Store,
    provider: str,
    export_text: str,
    first: date | None = None,
    last: date | None = None,
) -> dict[str, Any]:
    """Compare the provider's export with its visits in the gateway on the export's days
    (or ``first``..``last``), per scope and day (R-SCHED-5)."""
    visits, rejected = rec.parse_export(export_text)
    days = [v.day for v in visits]
    first = first or (min(days) if days else None)
    last = last or (max(days) if days else None)
    held: list[rec.HeldVisit] = []
    if first is not None and last is not None:
        visits = [v for v in visits if first <= v.day <= last]
        lo, hi = reports.day_range(first, last)
        async for doc in store.iterate(
            c.RESOURCES,
            {
                "tenant": provider,
                "type": "Appointment",
                "deleted": False,
                "central.start": {"$gte": lo, "$lt": hi},
            },
            fields=FIELDS,
        ):
            if doc["central"].get("status") in ("waitlist", "proposed"):
                continue
            held.append(rec.held_visit(doc["rid"], doc["central"]))
    result = rec.reconcile(provider, visits, held)
    result["from"] = first.isoformat() if first else None
    result["to"] = last.isoformat() if last else None
    result["rejected_rows"] = rejected[: rec.MAX_REJECTED_SHOWN]
    result["rejected_count"] = len(rejected)
    if rejected:
        result["matches"] = False
    return result
