"""Providers read a patient's waiting-room entries (R-WAIT-5), and every such read is audited.

``GET /fhir/Appointment?patient:identifier=<PESEL system>|<PESEL>`` (with or
without ``status=waitlist``) answers the provider's own Appointments of the
patient **and** the patient's active waiting-room entries: provider-less
Appointments (status ``waitlist``, ``requestedPeriod``, the criteria and the
queue place in extensions) of the ``cer-waiting-room`` tenant, each with the
estimate (``waiting-room-estimate``: date, position, matching capacity per
week, explanation). They are not the provider's resources: their ``fullUrl``
is ``urn:uuid:<id>`` and they cannot be read, changed or deleted by id.

Each search naming a patient is written to the ``audit`` collection (who:
the provider and the request's correlation id; whose: the PESEL; what: the
waiting-room entries shown), never to the logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from gateway import constants as c
from gateway.events import new_id
from gateway.ports import Document, Store
from gateway.timeutil import to_store
from gateway.waiting_estimate import Estimator
from gateway.waiting_room import EXT_ESTIMATE


def names_patient(flt: Mapping[str, Any]) -> bool:
    return "central.patient_pesel" in flt


def with_waitlist(flt: Mapping[str, Any], tenant: str) -> dict[str, Any]:
    """The provider's search widened to the patient's waiting-room entries (``waitlist``)."""
    out = {k: v for k, v in flt.items() if k != "tenant"}
    out["$and"] = [
        *out.get("$and", []),
        {
            "$or": [
                {"tenant": tenant},
                {"tenant": c.WAITING_ROOM_TENANT, "central.status": "waitlist"},
            ]
        },
    ]
    return out


def is_entry(doc: Mapping[str, Any]) -> bool:
    return doc.get("tenant") == c.WAITING_ROOM_TENANT


async def render_entry(
    store: Store, estimator: Estimator | None, doc: Document, now: datetime
) -> dict[str, Any]:
    """An entry's Appointment as a provider sees it: with its estimate (R-WAIT-5)."""
    res = dict(doc["resource"])
    entry = await store.get(c.WAITING_ROOM, doc["rid"])
    est = await estimator.of(entry, now) if estimator is not None and entry else None
    if est is not None:
        parts: list[dict[str, Any]] = []
        if est["estimated_date"]:
            parts.append({"url": "date", "valueDate": est["estimated_date"]})
        parts += [
            {"url": "position", "valueInteger": est["position"]},
            {"url": "capacity-per-week", "valueDecimal": est["matching_capacity_per_week"]},
            {"url": "explanation", "valueString": est["explanation"]},
        ]
        res["extension"] = [*res.get("extension", []), {"url": EXT_ESTIMATE, "extension": parts}]
    return res


async def audit(
    store: Store,
    *,
    now: datetime,
    tenant: str,
    pesel: Any,
    entries: list[str],
    correlation_id: str,
) -> None:
    """One record per provider read naming a patient (the waiting-room entries it showed)."""
    await store.insert(
        c.AUDIT,
        {
            "_id": new_id(),
            "at": to_store(now),
            "tenant": tenant,
            "action": "search",
            "resource": "Appointment",
            "pesel": pesel,
            "waiting_room_entries": entries,
            "correlation_id": correlation_id,
        },
    )
