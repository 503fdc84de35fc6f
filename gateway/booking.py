"""Booking a slot and releasing it: the one place that changes who holds a slot.

A slot (*termin*) holds at most one active appointment (*wizyta*): the slot's
central document carries ``appointment_id``, and every change of it is a
versioned write conditioned on the version read (``resources.apply_put`` with
``if_match``), so two bookers racing for one slot get one winner; the loser
re-reads and sees the slot taken (409 ``slot-taken``).

Used by the provider's FHIR writes (R-SCHED-4: the facility's own bookings),
and by the patient channel and the waiting room (other modules) through the
same functions.

The waiting room holds slots (R-CAN-2, ``gateway.waiting_assign``): a slot it
may still give to a waiting patient is ``busy-tentative`` with a ``hold`` in
its central model and no appointment, so neither live search nor a booking
takes it (``BOOKABLE_SLOT_STATUSES``); only a write that names it in
``take_holds`` (``hold_slot(take_hold=True)``) books it. ``release_slot`` puts
a cancelled slot on hold when the waiting room may take it (``hold_on_release``).
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any

from gateway import constants as c
from gateway import resources
from gateway.errors import FhirError, Issue
from gateway.events import event
from gateway.ports import Document, Store
from gateway.timeutil import from_store, to_store

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
    return round((_start_instant(slot_central["start"]) - now).total_seconds() / 3600, 3)


# Slots share their starts (the nightly unlock asks the lead time of thousands of slots
# of one day): each start is parsed once.
_start_instant = lru_cache(maxsize=4096)(from_store)


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
    take_hold: bool = False,
    known: Document | None = None,
) -> Document:
    """Mark ``slot_id`` busy for ``appointment_id``; 409 ``slot-taken`` if someone holds it.

    ``take_hold``: the slot may be on the waiting room's hold (the waiting room books it).
    ``known``: the slot as the caller just read it (saves a read; only its free state is
    trusted: anything else is read again before the answer).
    """
    for _ in range(10):
        slot = known or await resources.read(store, tenant, "Slot", slot_id)
        central = slot["central"]
        holder = central.get("appointment_id")
        if holder == appointment_id and central.get("status") == "busy":
            return slot  # already ours (an update of the same appointment, or a redelivery)
        if holder not in (None, appointment_id) or not (
            central.get("status") in BOOKABLE_SLOT_STATUSES or (take_hold and is_held(central))
        ):
            if known is not None:
                known = None
                continue
            raise slot_taken(slot_id, holder, expression)
        known = None
        new_central = {**central, "status": "busy", "appointment_id": appointment_id}
        new_central.pop("hold", None)
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
                current=slot,
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
    When the waiting room may take the slot (R-CAN-2: 48 h or more before the
    visit, a waiting patient it may suit) the slot goes on its hold
    (``busy-tentative``, ``held: true`` on the event) instead of being free to
    all: live search does not see it until the waiting room has decided.
    """
    for _ in range(10):
        doc = await store.get(c.RESOURCES, resources.doc_id(tenant, "Slot", slot_id))
        if doc is None or doc.get("deleted"):
            return None
        central = doc["central"]
        if central.get("appointment_id") != appointment_id:
            return None
        lead = lead_time_hours(central, now)
        hold = await hold_on_release(store, doc, lead, now)
        status = "busy-tentative" if hold else "free"
        new_central = {**central, "status": status, "appointment_id": None}
        new_central.pop("hold", None)
        if hold:
            new_central["hold"] = hold
        new_resource = {**doc["resource"], "status": status}
        body = {
            "appointment_id": appointment_id,
            "slot_id": slot_id,
            "channel": channel,
            "reason": reason,
            "scope": central.get("scope"),
            "category": central.get("category"),
            "start": central.get("start"),
            "lead_time_hours": lead,
            "held": hold is not None,
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
                current=doc,
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


def is_held(central: dict[str, Any]) -> bool:
    """On the waiting room's hold: ``busy-tentative``, a ``hold``, no appointment."""
    return (
        central.get("status") == "busy-tentative"
        and bool(central.get("hold"))
        and central.get("appointment_id") is None
    )


async def hold_on_release(
    store: Store, doc: Document, lead: float, now: datetime
) -> dict[str, Any] | None:
    """The waiting room's hold for a slot being released, or None (free to all).

    R-CAN-2: held when the rule gives it to the waiting room (more than 48 h
    ahead) and a waiting entry may take it (``waiting_assign.may_take``).
    """
    from gateway import waiting_assign  # the waiting room builds on this module

    taker = await waiting_assign.may_take(store, doc, lead, now)
    if not taker:
        return None
    hold: dict[str, Any] = {"by": "waiting-room", "since": to_store(now), "lead_time_hours": lead}
    if isinstance(taker, str):
        hold["candidate"] = taker  # the waiting room tries this entry first
    return hold


async def set_hold(
    store: Store,
    *,
    now: datetime,
    tenant: str,
    slot_id: str,
    hold: dict[str, Any] | None,
    expect: dict[str, Any] | None,
    msg_id: str,
    correlation_id: str,
) -> Document | None:
    """Put a slot on the waiting room's hold, change the hold, or give it free to all.

    ``hold`` None frees it; otherwise the slot becomes ``busy-tentative`` with
    ``hold``. ``expect`` is the hold the caller saw (None: the slot must be free
    and unheld); the slot is left alone (None returned) when it is no longer so:
    booked meanwhile, or changed by the provider. Versioned like every slot change.
    """
    for _ in range(10):
        doc = await store.get(c.RESOURCES, resources.doc_id(tenant, "Slot", slot_id))
        if doc is None or doc.get("deleted"):
            return None
        central = doc["central"]
        if central.get("appointment_id") is not None:
            return None
        if expect is None:
            if central.get("status") != "free" or central.get("hold"):
                return None
        elif not is_held(central) or central.get("hold") != expect:
            return None
        status = "busy-tentative" if hold else "free"
        new_central = {**central, "status": status}
        new_central.pop("hold", None)
        if hold:
            new_central["hold"] = hold
        try:
            await resources.apply_put(
                store,
                now=now,
                tenant=tenant,
                rtype="Slot",
                rid=slot_id,
                resource={**doc["resource"], "status": status},
                central=new_central,
                if_match=doc["version"],
                msg_id=msg_id,
                correlation_id=correlation_id,
                ident_key=doc.get("ident_key"),
                channel="waiting-room",
                current=doc,
            )
        except FhirError as err:
            if err.status == 412:
                continue
            raise
        return {**doc, "central": new_central}
    return None
