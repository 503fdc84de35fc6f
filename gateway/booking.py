"""Booking a slot and releasing it: the one place that changes who holds a slot.

A slot (*termin*) holds at most one active appointment (*wizyta*): the slot's
central document carries ``appointment_id``, and every change of it is a
versioned write conditioned on the version read (``resources.apply_put`` with
``if_match``), so two bookers racing for one slot get one winner; the loser
re-reads and sees the slot taken (409 ``slot-taken``).

Used by the provider's FHIR writes (R-SCHED-4: the facility's own bookings),
and by the patient channel and the waiting room (other modules) through the
same functions.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gateway import constants as c
from gateway import resources
from gateway.errors import FhirError, Issue
from gateway.events import event
from gateway.ports import Document, Store
from gateway.timeutil import from_store

# Appointment statuses that hold their slot (FHIR R4 Appointment.status).
HOLDING = frozenset({"pending", "booked", "arrived", "checked-in", "fulfilled", "noshow"})
BOOKABLE_SLOT_STATUSES = frozenset({"free", "busy"})


def slot_taken(slot_id: str, holder: str | None, expression: str | None = None) -> FhirError:
    msg = f"Slot/{slot_id} is no longer free"
    if holder:
        msg += f": it holds Appointment/{holder}"
    return FhirError(
        409,
        [Issue("conflict", msg, [expression] if expression else [])],
        code="slot-taken",
    )


def lead_time_hours(slot_central: dict[str, Any], now: datetime) -> float:
    """Hours from ``now`` to the visit (input of the release rule R-CAN-2)."""
    return round((from_store(slot_central["start"]) - now).total_seconds() / 3600, 3)


async def hold_slot(
    store: Store,
    *,
    now: datetime,
    tenant: str,
    slot_id: str,
    appointment_id: str,
    msg_id: str,
    correlation_id: str,
    channel: str,
    expression: str | None = None,
) -> Document:
    """Mark ``slot_id`` busy for ``appointment_id``; 409 ``slot-taken`` if someone holds it."""
    for _ in range(10):
        slot = await resources.read(store, tenant, "Slot", slot_id)
        central = slot["central"]
        holder = central.get("appointment_id")
        if holder == appointment_id:
            return slot  # already ours (an update of the same appointment, or a redelivery)
        if holder is not None or central.get("status") not in BOOKABLE_SLOT_STATUSES:
            raise slot_taken(slot_id, holder, expression)
        new_central = {**central, "status": "busy", "appointment_id": appointment_id}
        new_resource = {**slot["resource"], "status": "busy"}
        try:
            written = await resources.apply_put(
                store,
                now=now,
                tenant=tenant,
                rtype="Slot",
                rid=slot_id,
                resource=new_resource,
                central=new_central,
                if_match=slot["version"],
                msg_id=msg_id,
                correlation_id=correlation_id,
                ident_key=slot.get("ident_key"),
                channel=channel,
                extra_events=[
                    event(
                        "booking.booked",
                        {
                            "appointment_id": appointment_id,
                            "slot_id": slot_id,
                            "channel": channel,
                            "scope": central.get("scope"),
                            "category": central.get("category"),
                            "start": central.get("start"),
                        },
                        tenant=tenant,
                        correlation_id=correlation_id,
                        now=now,
                    )
                ],
            )
        except FhirError as err:
            if err.status == 412:
                continue  # the slot changed under us: look again
            raise
        return {**slot, "central": new_central, "version": written.version}
    raise slot_taken(slot_id, None, expression)


async def release_slot(
    store: Store,
    *,
    now: datetime,
    tenant: str,
    slot_id: str,
    appointment_id: str,
    msg_id: str,
    correlation_id: str,
    channel: str,
    reason: str | None,
) -> float | None:
    """Free a slot held by ``appointment_id``; returns the lead time in hours (R-CAN-2).

    The ``slot.released`` event carries the lead time so the waiting room can
    apply the release rule; nothing happens if the slot is not held by it.
    """
    for _ in range(10):
        doc = await store.get(c.RESOURCES, resources.doc_id(tenant, "Slot", slot_id))
        if doc is None or doc.get("deleted"):
            return None
        central = doc["central"]
        if central.get("appointment_id") != appointment_id:
            return None
        lead = lead_time_hours(central, now)
        new_central = {**central, "status": "free", "appointment_id": None}
        new_resource = {**doc["resource"], "status": "free"}
        body = {
            "appointment_id": appointment_id,
            "slot_id": slot_id,
            "channel": channel,
            "reason": reason,
            "scope": central.get("scope"),
            "category": central.get("category"),
            "start": central.get("start"),
            "lead_time_hours": lead,
        }
        try:
            await resources.apply_put(
                store,
                now=now,
                tenant=tenant,
                rtype="Slot",
                rid=slot_id,
                resource=new_resource,
                central=new_central,
                if_match=doc["version"],
                msg_id=msg_id,
                correlation_id=correlation_id,
                ident_key=doc.get("ident_key"),
                channel=channel,
                extra_events=[
                    event(
                        "slot.released", body, tenant=tenant, correlation_id=correlation_id, now=now
                    )
                ],
            )
        except FhirError as err:
            if err.status == 412:
                continue
            raise
        return lead
    raise FhirError(409, [Issue("conflict", f"Slot/{slot_id} is changing concurrently; retry")])
