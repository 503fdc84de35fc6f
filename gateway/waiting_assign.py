"""The waiting room's slot side: assignment, R-CAN-2 proposals, holds (R-WAIT-3).

Every command here runs on the partition of the **slot's provider**, in order
with that provider's own FHIR writes and the patients' bookings, and books
through the same write path (``operations.run_write``, channel
``waiting-room``; the booking rules of ``gateway.patients``: e-referral R-PAT-2,
contact R-PAT-7). So a slot is booked at most once (its hold is a conditional
update) and a redelivered command changes nothing twice (deterministic
appointment ids, writes keyed by the command's id). An entry is booked at most
once: it is *claimed* first (``waiting`` -> ``assigning``, a conditional update
on the entry), because entries are shared by every provider's partition.

When a slot can go to the waiting room (``offer_slot``):

- **new or unlocked** slots (R-SCHED-6; ``resource.Slot.*`` events, the nightly
  unlock of ``waiting_service``) and an entry's own first look: more than 72 h
  ahead and within the waiting room's window, booked for the best-ranked entry
  that takes it; otherwise left to live search;
- a **cancelled** slot (``slot.released``), by R-CAN-2 on the lead time at the
  cancellation (``waiting_rules.release_rule``): more than 72 h, assigned;
  48-72 h, **proposed** to the best match (a ``proposed`` Appointment at the
  provider, the slot on hold, ``waiting_room_proposals``), which may accept or
  decline within ``waiting_room_proposal_answer_seconds``, then the next
  candidate while the visit is still 48 h or more ahead; under 48 h, or
  nobody left, released to all. While proposed or held the slot is
  ``busy-tentative``: live search does not see it (``booking.is_held``).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

import structlog

from gateway import booking, operations, patients, resources, turns
from gateway import constants as c
from gateway import waiting_room as entries
from gateway import waiting_rules as rules
from gateway.errors import FhirError
from gateway.model import AppointmentStatus, CentralAppointment, CentralContact, CentralReferral
from gateway.ports import Clock, Document, DuplicateKey, Envelope, Reject, Store
from gateway.settings import Settings
from gateway.timeutil import from_store, to_fhir, to_store, warsaw_day
from mappings import appointment as appointment_map
from mappings import codes

log = structlog.get_logger("gateway.waiting_assign")

CHANNEL = entries.CHANNEL
BATCH = 400
FIRST_BATCH = 25
# How many waiting entries a cancellation looks through for one that may take the
# slot before it puts the slot on hold anyway (the waiting room then looks further).
MAY_TAKE_SCAN = 2000
MAX_CANDIDATES = 50
# Entries ahead of a cancellation's candidate that became waiting since, checked one by
# one before the candidate is trusted (more: look again from the front).
HINT_AHEAD = 20
# What find_best reads of an entry: its matching facts and what an offer names
# (the caller claims the entry, which reads it whole).
CANDIDATE_FIELDS = ("queue", "rank", "criteria", "gave_up", "pesel")
EXT_PROPOSAL_EXPIRES = f"{codes.BASE}/StructureDefinition/proposal-expires"
# Offers that follow a cancellation (R-CAN-2 applies) rather than new capacity.
AFTER_RELEASE = frozenset({"released", "declined", "expired", "withdrawn", "failed"})

Outcome = Literal["booked", "proposed", "slot", "entry"]


def _hash(*parts: str) -> str:
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:28]


def assignment_rid(entry_id: str, slot_gid: str) -> str:
    return f"wra-{_hash(entry_id, slot_gid)}"


def proposal_rid(entry_id: str, slot_gid: str, release: str) -> str:
    return f"wrp-{_hash(entry_id, slot_gid, release)}"


# --------------------------------------------------------------------------- finding entries


async def find_best(
    store: Store,
    facts: rules.SlotFacts,
    scope: str,
    *,
    exclude: Collection[str] = (),
    cap: int = 0,
) -> Document | bool | None:
    """The best-ranked waiting entry that takes the slot (R-WAIT-5), in rank order.

    None when there is none; True when ``cap`` entries were looked at without
    finding one (the caller decides what that means).
    """
    queues = rules.queues_for(facts.category)
    if not queues:
        return None
    keys = rules.slot_location_key_values(facts)
    last: str | None = None
    seen = 0
    batch = FIRST_BATCH  # the best-ranked taker is usually near the front: read little first
    while True:
        flt: dict[str, Any] = {
            "scope": scope,
            "status": rules.WAITING,
            "queue": queues[0] if len(queues) == 1 else {"$in": list(queues)},
            # Only entries whose location criterion the slot meets (the others never
            # take it): after a nightly unlock the best-ranked waiting entries are those
            # whose criteria the day did not suit, hundreds of them ahead of a taker.
            "loc_key": {"$in": keys},
        }
        if last is not None:
            flt["rank"] = {"$gt": last}
        docs = await store.find(
            c.WAITING_ROOM, flt, sort=[("rank", 1)], limit=batch, fields=CANDIDATE_FIELDS
        )
        for d in docs:
            if d["_id"] not in exclude and rules.takes(rules.entry_facts(d), facts):
                return d
        seen += len(docs)
        if len(docs) < batch:
            return None
        if cap and seen >= cap:
            return True
        last = docs[-1]["rank"]
        batch = min(batch * 4, BATCH)


async def may_take(store: Store, doc: Document, lead: float, now: datetime) -> str | bool:
    """May the waiting room take this slot being released (R-CAN-2)? For ``booking``.

    The id of the best-ranked entry that takes it (the offer tries it first), True
    when the look was cut short, False when nobody may take it.
    """
    s = doc["central"]
    info = codes.scopes().get(s.get("scope") or "")
    if info is None or not info.waiting_room or rules.release_rule(lead) == "public":
        return False
    if not rules.queues_for(s.get("category")):
        return False
    # Beyond the patients' window (and the waiting room's day ahead): the nightly
    # unlock gives it to the waiting room first anyway (R-SCHED-6).
    last = patients.last_bookable_day(info, now) + timedelta(days=1)
    if warsaw_day(from_store(s["start"])) > last:
        return False
    found = await find_best(store, rules.slot_facts(doc), info.code, cap=MAY_TAKE_SCAN)
    if isinstance(found, dict):
        return str(found["_id"])
    return found is True


# --------------------------------------------------------------------------- one booking


# What the central model takes as it is (``_central``): a status, store instants.
_STATUSES = frozenset(get_args(AppointmentStatus))
_STORE_INSTANT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")


def _central_model(
    entry: Mapping[str, Any], slot: Document, status: AppointmentStatus
) -> dict[str, Any]:
    """The visit's central model, through the model (which validates)."""
    s = slot["central"]
    ref = entry.get("referral")
    central = CentralAppointment(
        status=status,
        slot_ids=[slot["rid"]],
        start=s["start"],
        end=s["end"],
        scope=s["scope"],
        category=s.get("category"),
        patient_pesel=entry["pesel"],
        referral=CentralReferral(**ref) if ref else None,
        channel=CHANNEL,
        contact=CentralContact(**entry["contact"]) if entry.get("contact") else None,
        privileged=bool(entry.get("privileged")),
    )
    return central.model_dump()


def _str_or_none(value: Any) -> bool:
    return value is None or type(value) is str


def _central(entry: Mapping[str, Any], slot: Document, status: AppointmentStatus) -> dict[str, Any]:
    """``_central_model`` without the model when every value is one the model takes as it
    is (plain strings, store instants; the usual case): its dump, built directly (the
    model and its dump were 9 of an assignment's ~20 us outside the store). Anything
    else goes through the model, which converts it or refuses it as before
    (tests/unit/test_write_fast_paths.py keeps the two in step)."""
    s = slot["central"]
    start, end, scope, category = s["start"], s["end"], s["scope"], s.get("category")
    pesel, rid = entry["pesel"], slot["rid"]
    ref = entry.get("referral")
    contact = entry.get("contact")
    if not (
        status in _STATUSES
        and type(start) is str
        and type(end) is str
        and _STORE_INSTANT.fullmatch(start)
        and _STORE_INSTANT.fullmatch(end)
        and _str_or_none(scope)
        and _str_or_none(category)
        and type(pesel) is str
        and type(rid) is str
        and (
            not ref
            or (type(ref) is dict and type(ref.get("key")) is str and type(ref.get("code")) is str)
        )
        and (
            not contact
            or (
                type(contact) is dict
                and _str_or_none(contact.get("phone"))
                and _str_or_none(contact.get("email"))
            )
        )
    ):
        return _central_model(entry, slot, status)
    return {
        "status": status,
        "slot_ids": [rid],
        "start": start,
        "end": end,
        "scope": scope,
        "category": category,
        "patient_pesel": pesel,
        "referral": {"key": ref["key"], "code": ref["code"]} if ref else None,
        "cancel_reason": None,
        "cancel_note": None,
        "cancelled_at": None,
        "channel": CHANNEL,
        "booked_at": None,
        "cancel_channel": None,
        "contact": (
            {"phone": contact.get("phone"), "email": contact.get("email")} if contact else None
        ),
        "privileged": bool(entry.get("privileged")),
        "requested_period": [],
        "comment": None,
        "identifiers": [],
    }


def _appointment(
    rid: str,
    entry: Mapping[str, Any],
    slot: Document,
    status: AppointmentStatus,
    extra_ext: list[Any],
) -> dict[str, Any]:
    central = _central(entry, slot, status)
    resource = appointment_map.to_fhir_dict(rid, central)
    if extra_ext:
        resource["extension"] = [*resource.get("extension", []), *extra_ext]
    # The central model is the one the resource was made from (no need to parse it back).
    return {
        "method": "POST",
        "type": "Appointment",
        "id": rid,
        "resource": resource,
        "central": central,
    }


async def _claim_referral(
    store: Store, entry: Mapping[str, Any], gid: str, now: datetime
) -> str | None:
    """Claim the entry's e-referral for ``gid`` (R-PAT-2); the refusal's reason, or None."""
    ref = entry.get("referral")
    if not ref:
        return None
    # Usually the referral is the entry's own, issued and free: claimed in one conditional
    # update that asks what ``check_referral`` would (no read first; string equalities
    # only, which the embedded store checks without compiling a query: 11 us, 35 with an
    # ``$or``). Otherwise (a redelivery finds it booked by this visit, or it cannot book)
    # the read below tells why, or frees it from a visit the facility cancelled.
    if await store.update_one(
        c.REFERRALS,
        {
            "_id": ref["key"],
            "status": patients.REFERRAL_ISSUED,
            "code": ref["code"],
            "pesel": entry["pesel"],
            "scope": entry["scope"],
        },
        {"$set": {"status": patients.REFERRAL_BOOKED, "appointment_id": gid}},
        fields=(),
    ):
        return None
    doc = await store.get(c.REFERRALS, ref["key"])
    holder = doc.get("appointment_id") if doc else None
    if doc is not None and doc.get("status") == patients.REFERRAL_BOOKED and holder != gid:
        # A visit the facility cancelled keeps the referral until someone frees it.
        parts = patients.split_id(holder or "")
        held = (
            await store.get(c.RESOURCES, resources.doc_id(parts[0], "Appointment", parts[1]))
            if parts
            else None
        )
        if held is None or held["central"].get("status") not in patients.CANCELLABLE:
            await patients.release_referral(store, ref["key"], holder or "")
            doc = await store.get(c.REFERRALS, ref["key"])
    try:
        patients.check_referral(
            doc,
            ref,
            pesel=entry["pesel"],
            scope=entry["scope"],
            category=None,
            appointment_id=gid,
        )
    except FhirError as err:
        return str(err.extra.get("reason") or "invalid")
    if not await patients.claim_referral(store, ref["key"], gid, None):
        return "in-use"
    return None


async def _close_entry(
    store: Store, now: datetime, entry_id: str, msg_id: str, reason: str, corr: str
) -> None:
    done = await store.update_one(
        c.WAITING_ROOM,
        {"_id": entry_id, "status": rules.ASSIGNING, "claim.by": msg_id},
        {
            "$set": {
                "status": rules.CLOSED,
                "closed_reason": "booked-elsewhere" if reason == "in-use" else f"referral-{reason}",
                "updated_at": to_store(now),
            },
            "$unset": {"active_key": "", "claim": ""},
            "$inc": {"rev": 1},
        },
        fields=(),
    )
    if done is not None:
        await entries.sync_mirror(store, now, entry_id, corr)


async def _unclaim(store: Store, now: datetime, entry_id: str, msg_id: str) -> None:
    """The booking failed: the entry waits again in its place."""
    await _wait_again(
        store, now, {"_id": entry_id, "status": rules.ASSIGNING, "claim.by": msg_id}, "claim"
    )


async def _wait_again(store: Store, now: datetime, match: Document, drop: str) -> None:
    """The entry ``match`` finds waits again in its place, without its ``drop`` field."""
    await store.update_one(
        c.WAITING_ROOM,
        match,
        {
            "$set": {"status": rules.WAITING, "updated_at": to_store(now)},
            "$unset": {drop: ""},
            "$inc": {"rev": 1},
        },
        fields=(),
    )


async def _assigned(
    store: Store, now: datetime, entry_id: str, msg_id: str, appt_gid: str, slot_gid: str, corr: str
) -> None:
    """The entry has its visit. Its FHIR face follows from the outbox event
    (``waiting-room.changed``, ``waiting_service``), off the booking's path."""
    await store.update_one(
        c.WAITING_ROOM,
        {"_id": entry_id, "status": rules.ASSIGNING, "claim.by": msg_id},
        {
            "$set": {
                "status": rules.ASSIGNED,
                "appointment": appt_gid,
                "slot": slot_gid,
                "assigned_at": to_store(now),
                "updated_at": to_store(now),
            },
            "$unset": {"active_key": "", "claim": "", "proposal": ""},
            "$inc": {"rev": 1},
        },
        events=[entries.changed_event(entry_id, now, corr)],
        fields=(),
    )


# What a booking reads of the entry it claimed: its facts (``entry_facts``), its
# e-referral (``_claim_referral``) and what the visit is made of (``_appointment``).
CLAIMED_FIELDS = (
    "queue",
    "rank",
    "criteria",
    "gave_up",
    "referral",
    "pesel",
    "scope",
    "contact",
    "privileged",
)


async def _claim(
    store: Store, entry_id: str, msg_id: str, slot_gid: str, from_status: str = rules.WAITING
) -> Document | None:
    """``from_status`` -> ``assigning`` for this command (or already ours: a redelivery);
    the entry's ``CLAIMED_FIELDS``."""
    done = await store.update_one(
        c.WAITING_ROOM,
        {"_id": entry_id, "status": from_status},
        {
            "$set": {"status": rules.ASSIGNING, "claim": entries.claim_stamp(msg_id, slot_gid)},
            "$inc": {"rev": 1},
        },
        fields=CLAIMED_FIELDS,
        shared=True,  # only read: its facts, its e-referral, the visit's central model
    )
    if done is None:
        found = await store.find(
            c.WAITING_ROOM,
            {
                "_id": entry_id,
                "status": rules.ASSIGNING,
                "claim.by": msg_id,
                "claim.slot": slot_gid,
            },
            limit=1,
            fields=CLAIMED_FIELDS,
        )
        done = found[0] if found else None
    return done


async def assign_pair(
    store: Store,
    now: datetime,
    *,
    msg_id: str,
    corr: str,
    slot: Document,
    entry_id: str,
) -> Outcome:
    """Book ``slot`` for the entry ``entry_id`` (R-WAIT-3) if it waits and takes the slot:
    ``booked``, or who failed (``slot`` / ``entry``).

    The entry is read by its claim (a redelivered command finds its own claim), and
    whether it takes the slot is decided on what the claim returned: whoever read it
    before may have read it before a change of its criteria (R-WAIT-4).
    """
    tenant = slot["tenant"]
    slot_gid = patients.global_id(tenant, slot["rid"])
    claimed = await _claim(store, entry_id, msg_id, slot_gid)
    if claimed is None:
        return "entry"
    if not rules.takes(rules.entry_facts(claimed), rules.slot_facts(slot)):
        await _unclaim(store, now, entry_id, msg_id)
        return "entry"
    rid = assignment_rid(entry_id, slot_gid)
    gid = patients.global_id(tenant, rid)
    refused = await _claim_referral(store, claimed, gid, now)
    if refused is not None:
        if refused in ("in-use", "used", "unknown", "other-scope"):
            await _close_entry(store, now, entry_id, msg_id, refused, corr)
        else:
            await _unclaim(store, now, entry_id, msg_id)
        return "entry"
    try:
        await operations.run_write(
            store,
            now=now,
            tenant=tenant,
            msg_id=msg_id,
            correlation_id=corr,
            mode="single",
            ops_body=[_appointment(rid, claimed, slot, "booked", [])],
            channel=CHANNEL,
            representation=False,
            take_holds=frozenset({slot["rid"]}),
            known={slot["_id"]: slot},
        )
    except FhirError as err:
        if claimed.get("referral"):
            await patients.release_referral(store, claimed["referral"]["key"], gid)
        await _unclaim(store, now, entry_id, msg_id)
        log.info("waiting_room.assign_failed", status=err.status, code=err.code)
        return "slot" if err.status in (409, 412) else "entry"
    await _assigned(store, now, entry_id, msg_id, gid, slot_gid, corr)
    # ``log.bind()``: the logger the proxy assembled (and keeps: cache_logger_on_first_use),
    # which ``log.info`` looks up through the proxy's ``__getattr__`` each time (0.9 -> 0.3
    # us; one a booking).
    log.bind().info("waiting_room.assigned", entry=entry_id, appointment=rid)
    return "booked"


# --------------------------------------------------------------------------- proposals (R-CAN-2)


async def propose(
    store: Store,
    now: datetime,
    settings: Settings,
    *,
    msg_id: str,
    corr: str,
    slot: Document,
    entry: Document,
) -> Outcome:
    """Offer a 48-72 h slot to ``entry`` (R-CAN-2); the slot stays on hold for it."""
    tenant = slot["tenant"]
    slot_gid = patients.global_id(tenant, slot["rid"])
    old_hold = slot["central"].get("hold") if booking.is_held(slot["central"]) else None
    release = (old_hold or {}).get("release") or msg_id
    rid = proposal_rid(entry["_id"], slot_gid, release)
    gid = patients.global_id(tenant, rid)
    claimed = await store.update_one(
        c.WAITING_ROOM,
        {"_id": entry["_id"], "status": rules.WAITING},
        {"$set": {"status": rules.PROPOSED, "proposal": gid}, "$inc": {"rev": 1}},
    )
    if claimed is None:
        claimed = await store.find_one(
            c.WAITING_ROOM, {"_id": entry["_id"], "status": rules.PROPOSED, "proposal": gid}
        )
        if claimed is None:
            return "entry"
    expires = now + timedelta(seconds=settings.waiting_room_proposal_answer_seconds)
    ext = [{"url": EXT_PROPOSAL_EXPIRES, "valueDateTime": to_fhir(expires)}]
    hold = {
        "by": "waiting-room",
        "since": (old_hold or {}).get("since") or to_store(now),
        "lead_time_hours": (old_hold or {}).get("lead_time_hours"),
        "release": release,
        "proposal": rid,
        "entry": entry["_id"],
        "offered": sorted({*((old_hold or {}).get("offered") or []), entry["_id"]}),
        "expires_at": to_store(expires),
    }
    held = await booking.set_hold(
        store,
        now=now,
        tenant=tenant,
        slot_id=slot["rid"],
        hold=hold,
        expect=old_hold,
        msg_id=f"{msg_id}/hold",
        correlation_id=corr,
    )
    if held is None:
        await _back_to_waiting(store, now, entry["_id"], gid)
        return "slot"
    try:
        await operations.run_write(
            store,
            now=now,
            tenant=tenant,
            msg_id=f"{msg_id}/proposal",
            correlation_id=corr,
            mode="single",
            ops_body=[_appointment(rid, claimed, slot, "proposed", ext)],
            channel=CHANNEL,
            representation=False,
        )
    except FhirError:
        await _back_to_waiting(store, now, entry["_id"], gid)
        return "entry"
    try:
        await store.insert(
            c.WAITING_ROOM_PROPOSALS,
            {
                "_id": gid,
                "tenant": tenant,
                "rid": rid,
                "slot": slot["rid"],
                "entry": entry["_id"],
                "pesel": entry["pesel"],
                "release": release,
                "status": "open",
                "created_at": to_store(now),
                "expires_at": to_store(expires),
            },
        )
    except DuplicateKey:
        pass  # a redelivery
    log.info("waiting_room.proposed", entry=entry["_id"], proposal=rid)
    return "proposed"


async def _open_proposal(store: Store, now: datetime, tenant: str, hold: Mapping[str, Any]) -> bool:
    """Whether the slot's hold is a proposal its entry still has open and in time."""
    rid, entry_id, expires = hold.get("proposal"), hold.get("entry"), hold.get("expires_at")
    if not (rid and entry_id and expires) or from_store(expires) <= now:
        return False
    entry = await store.find_one(
        c.WAITING_ROOM,
        {"_id": entry_id, "status": rules.PROPOSED, "proposal": patients.global_id(tenant, rid)},
    )
    return entry is not None


async def _back_to_waiting(store: Store, now: datetime, entry_id: str, proposal_gid: str) -> None:
    await _wait_again(
        store,
        now,
        {"_id": entry_id, "status": rules.PROPOSED, "proposal": proposal_gid},
        "proposal",
    )


async def _cancel_proposal_appointment(
    store: Store, now: datetime, tenant: str, rid: str, reason: str, msg_id: str, corr: str
) -> None:
    doc = await store.get(c.RESOURCES, resources.doc_id(tenant, "Appointment", rid))
    if doc is None or doc.get("deleted") or doc["central"].get("status") != "proposed":
        return
    try:
        await operations.run_write(
            store,
            now=now,
            tenant=tenant,
            msg_id=msg_id,
            correlation_id=corr,
            mode="single",
            ops_body=[patients.cancel_op(doc, reason, now)],
            channel=CHANNEL,
            representation=False,
        )
    except FhirError as err:  # the provider changed it meanwhile: theirs now
        log.info("waiting_room.proposal_cancel_failed", status=err.status)


async def close_proposal(
    store: Store,
    clock: Clock,
    settings: Settings,
    *,
    gid: str,
    status: Literal["declined", "expired", "withdrawn"],
    msg_id: str,
    corr: str,
) -> Document | None:
    """End an open proposal and offer the slot to the next candidate (R-CAN-2)."""
    now = clock.now()
    p = await store.update_one(
        c.WAITING_ROOM_PROPOSALS,
        {"_id": gid, "status": "open"},
        {"$set": {"status": status, "answered_at": to_store(now)}},
    )
    if p is None:
        p = await store.get(c.WAITING_ROOM_PROPOSALS, gid)
        if p is None or p.get("status") != status:
            return p
    reason = "system-proposal-declined" if status == "declined" else "system-proposal-expired"
    await _cancel_proposal_appointment(
        store, now, p["tenant"], p["rid"], reason, f"{msg_id}/cancel", corr
    )
    await _back_to_waiting(store, now, p["entry"], gid)
    await offer_slot(
        store,
        clock,
        settings,
        tenant=p["tenant"],
        slot_id=p["slot"],
        reason=status,
        msg_id=f"{msg_id}/next",
        corr=corr,
    )
    return p


async def accept(
    store: Store, clock: Clock, settings: Settings, *, gid: str, pesel: str, msg_id: str, corr: str
) -> Document:
    """The patient takes the proposed slot: the ``proposed`` Appointment becomes ``booked``."""
    now = clock.now()
    p = await store.get(c.WAITING_ROOM_PROPOSALS, gid)
    if p is None or p.get("pesel") != pesel:
        raise patients.not_found("proposal")
    tenant = p["tenant"]
    appt = await store.get(c.RESOURCES, resources.doc_id(tenant, "Appointment", p["rid"]))
    if p["status"] == "accepted" and appt is not None:
        return appt  # a redelivery
    if p["status"] != "open":
        raise patients.problem(409, "not-active", f"the proposal is {p['status']}")
    if from_store(p["expires_at"]) <= now:
        await close_proposal(
            store, clock, settings, gid=gid, status="expired", msg_id=msg_id, corr=corr
        )
        raise patients.problem(409, "proposal-expired", "the time to accept this proposal is over")
    slot = await store.get(c.RESOURCES, resources.doc_id(tenant, "Slot", p["slot"]))
    hold = (slot or {}).get("central", {}).get("hold") or {}
    if slot is None or appt is None or hold.get("proposal") != p["rid"]:
        await store.update_one(
            c.WAITING_ROOM_PROPOSALS, {"_id": gid, "status": "open"}, {"$set": {"status": "failed"}}
        )
        await _back_to_waiting(store, now, p["entry"], gid)
        raise patients.slot_taken()
    slot_gid = patients.global_id(tenant, p["slot"])
    claimed = await _claim(store, p["entry"], msg_id, slot_gid, from_status=rules.PROPOSED)
    if claimed is None:
        raise patients.problem(409, "not-active", "the waiting-room entry is no longer waiting")
    refused = await _claim_referral(store, claimed, gid, now)
    if refused is not None:
        await _unclaim(store, now, p["entry"], msg_id)
        raise patients.refuse_referral(refused, "the e-referral cannot book this visit")
    res = {k: v for k, v in appt["resource"].items() if k != "meta"}
    res["status"] = "booked"
    res["extension"] = [
        e for e in res.get("extension") or [] if e.get("url") != EXT_PROPOSAL_EXPIRES
    ]
    for part in res.get("participant") or []:
        part["status"] = "accepted"
    op = {
        "method": "PUT",
        "type": "Appointment",
        "id": p["rid"],
        "resource": res,
        "central": operations.central_of("Appointment", res),
        "if_match": appt["version"],
    }
    try:
        await operations.run_write(
            store,
            now=now,
            tenant=tenant,
            msg_id=msg_id,
            correlation_id=corr,
            mode="single",
            ops_body=[op],
            channel=CHANNEL,
            representation=False,
            take_holds=frozenset({p["slot"]}),
        )
    except FhirError as err:
        if claimed.get("referral"):
            await patients.release_referral(store, claimed["referral"]["key"], gid)
        await _unclaim(store, now, p["entry"], msg_id)
        if err.status in (409, 412):
            raise patients.slot_taken() from err
        raise
    await store.update_one(
        c.WAITING_ROOM_PROPOSALS,
        {"_id": gid},
        {"$set": {"status": "accepted", "answered_at": to_store(now)}},
    )
    await _assigned(store, now, p["entry"], msg_id, gid, slot_gid, corr)
    return await resources.read(store, tenant, "Appointment", p["rid"])


# --------------------------------------------------------------------------- offering a slot


async def release_hold(store: Store, now: datetime, slot: Document, msg_id: str, corr: str) -> None:
    """Give a held slot free to all (R-CAN-2: nobody in the waiting room took it)."""
    s = slot["central"]
    if not booking.is_held(s):
        return
    await booking.set_hold(
        store,
        now=now,
        tenant=slot["tenant"],
        slot_id=slot["rid"],
        hold=None,
        expect=s["hold"],
        msg_id=f"{msg_id}/free",
        correlation_id=corr,
    )


async def offer_slot(
    store: Store,
    clock: Clock,
    settings: Settings,
    *,
    tenant: str,
    slot_id: str,
    reason: str,
    msg_id: str,
    corr: str,
    exclude: Collection[str] = (),
) -> str:
    """Give one slot to the waiting room as the rules say (see the module docstring)."""
    now = clock.now()
    slot = await store.get(c.RESOURCES, resources.doc_id(tenant, "Slot", slot_id))
    if slot is None or slot.get("deleted"):
        return "gone"
    s = slot["central"]
    held = booking.is_held(s)
    free = s.get("status") == "free" and s.get("appointment_id") is None and not s.get("hold")
    if not held and not free:
        return "taken"
    info = codes.scopes().get(s.get("scope") or "")
    if info is None or not info.waiting_room or not rules.queues_for(s.get("category")):
        await release_hold(store, now, slot, msg_id, corr)
        return "not-ours"
    lead_now = booking.lead_time_hours(s, now)
    hold = s.get("hold") or {}
    if held and await _open_proposal(store, now, tenant, hold):
        # R-CAN-2: one open proposal per slot. A redelivered command (its first run
        # proposed, then the worker died before recording it) or a second trigger
        # must not offer the slot to the next entry as well.
        return "proposed"
    rule: rules.ReleaseRule
    if held and reason == "released" and hold.get("lead_time_hours") is not None:
        rule = rules.release_rule(float(hold["lead_time_hours"]))  # at the cancellation
    elif held and (reason in AFTER_RELEASE or hold.get("release")):
        rule = "propose" if lead_now >= rules.PROPOSE_FROM_HOURS else "public"
    else:
        rule = "assign" if lead_now > rules.ASSIGN_ABOVE_HOURS else "public"
    lead = timedelta(seconds=settings.waiting_room_unlock_lead_seconds)
    facts = rules.slot_facts(slot)
    if rule != "public" and facts.day > rules.horizon_day(info.self_booking_days, now, lead):
        await release_hold(store, now, slot, msg_id, corr)
        return "not-yet"  # the nightly unlock offers it (R-SCHED-6)
    if rule == "public":
        await release_hold(store, now, slot, msg_id, corr)
        return "public"
    skip = {*exclude, *(hold.get("offered") or [])}
    hint = hold.get("candidate") if reason == "released" else None
    for n in range(MAX_CANDIDATES):
        found: Document | bool | None = None
        if hint and n == 0:
            # The entry the cancellation found first (booking.hold_on_release): still the
            # best-ranked taker if it waits and no entry ahead of it that became waiting
            # since takes the slot. Those are few (the patient who cancelled is one of
            # them, back in their place, R-WAIT-6, but never offered the slot they gave
            # up): each is checked, so the hint survives them.
            cand = await store.get(c.WAITING_ROOM, hint)
            if (
                cand is not None
                and cand["status"] == rules.WAITING
                and cand["_id"] not in skip
                and rules.takes(rules.entry_facts(cand), facts)
            ):
                ahead = await store.find(
                    c.WAITING_ROOM,
                    {
                        "scope": info.code,
                        "status": rules.WAITING,
                        "queue": {"$in": list(rules.queues_for(facts.category))},
                        "loc_key": {"$in": rules.slot_location_key_values(facts)},
                        "rank": {"$lt": cand["rank"]},
                        "updated_at": {"$gte": hold.get("since", "")},
                    },
                    limit=HINT_AHEAD + 1,
                    fields=(*CANDIDATE_FIELDS, "updated_at"),
                )
                if len(ahead) <= HINT_AHEAD and not any(
                    d["_id"] not in skip and rules.takes(rules.entry_facts(d), facts) for d in ahead
                ):
                    found = cand
        if found is None:
            found = await find_best(store, facts, info.code, exclude=skip)
        if not isinstance(found, dict):
            await release_hold(store, now, slot, msg_id, corr)
            return "released"
        sub = f"{msg_id}/{n}"
        if rule == "assign":
            out = await assign_pair(
                store, now, msg_id=sub, corr=corr, slot=slot, entry_id=found["_id"]
            )
        else:
            out = await propose(store, now, settings, msg_id=sub, corr=corr, slot=slot, entry=found)
        if out in ("booked", "proposed"):
            return out
        if out == "slot":
            return "taken"
        skip.add(found["_id"])
        slot = await store.get(c.RESOURCES, resources.doc_id(tenant, "Slot", slot_id)) or slot
    return "gave-up"


# --------------------------------------------------------------------------- command handlers


def _tenant(msg: Envelope) -> str:
    if msg.tenant is None:
        raise Reject(f"{msg.type} without a tenant (the slot's provider)")
    return msg.tenant


async def handle_offer(
    store: Store, clock: Clock, settings: Settings, msg: Envelope
) -> dict[str, Any]:
    """``waiting-room.offer`` {slot, reason}: new or unlocked capacity, or an entry's look."""
    out = await offer_slot(
        store,
        clock,
        settings,
        tenant=_tenant(msg),
        slot_id=msg.body["slot"],
        reason=msg.body.get("reason") or "new",
        msg_id=msg.id,
        corr=msg.correlation_id or msg.id,
    )
    return {"outcome": out}


async def handle_released(
    store: Store, clock: Clock, settings: Settings, msg: Envelope
) -> dict[str, Any]:
    """``waiting-room.released`` (from ``slot.released``): R-WAIT-6 re-entry, the release
    rate for estimates, then R-CAN-2 for a slot put on hold."""
    tenant = _tenant(msg)
    b = msg.body
    now = clock.now()
    corr = msg.correlation_id or msg.id
    slot = await store.get(c.RESOURCES, resources.doc_id(tenant, "Slot", b["slot"]))
    if b.get("appointment"):
        appt = await store.get(
            c.RESOURCES, resources.doc_id(tenant, "Appointment", b["appointment"])
        )
        if appt is not None:
            await entries.reenter(
                store,
                now,
                appointment=appt,
                slot_gid=patients.global_id(tenant, b["slot"]),
                correlation_id=corr,
            )
    if slot is not None and b.get("release"):
        s = slot["central"]
        try:
            await store.insert(
                c.WAITING_ROOM_RELEASES,
                {
                    "_id": b["release"],
                    "at": to_store(now),
                    "scope": s.get("scope"),
                    "category": s.get("category"),
                    "tenant": tenant,
                    "slot": slot["rid"],
                    "start": s.get("start"),
                    "location_id": s.get("location_id"),
                    "city": s.get("city"),
                    "postal_code": s.get("postal_code"),
                    "lead_time_hours": b.get("lead"),
                },
            )
        except DuplicateKey:
            pass
    if not b.get("held"):
        return {"outcome": "not-held"}
    out = await offer_slot(
        store,
        clock,
        settings,
        tenant=tenant,
        slot_id=b["slot"],
        reason="released",
        msg_id=msg.id,
        corr=corr,
    )
    return {"outcome": out}


async def handle_assign(
    store: Store, clock: Clock, settings: Settings, msg: Envelope
) -> dict[str, Any]:
    """``waiting-room.assign`` {pairs: [[slot, entry], ...]}: the nightly unlock's plan
    (``waiting_service``); a pair that no longer works falls back to ``offer_slot``."""
    tenant = _tenant(msg)
    corr = msg.correlation_id or msg.id
    booked = 0
    # The embedded store never suspends: the commands of an unlock take turns (``turns``).
    turn = None if store.suspends else turns.turns()
    held = False
    ends = 0.0
    try:
        for i, (slot_id, entry_id) in enumerate(msg.body["pairs"]):
            if turn is None:
                await asyncio.sleep(0)  # next to MongoDB's round trips, a pass costs nothing
            elif time.monotonic() >= ends:
                if held:
                    turn.give_up()
                    held = False
                await turn.take()
                held = True
                ends = time.monotonic() + turns.TURN_SECONDS
            booked += await _assign_planned(
                store, clock, settings, tenant, slot_id, entry_id, f"{msg.id}/{i}", corr
            )
    finally:
        if held and turn is not None:
            turn.give_up()
    return {"booked": booked}


async def _assign_planned(
    store: Store,
    clock: Clock,
    settings: Settings,
    tenant: str,
    slot_id: str,
    entry_id: str,
    sub: str,
    corr: str,
) -> int:
    """One pair of the plan: 1 if the slot was booked (for its entry, or else for its best
    taker now), else 0."""
    now = clock.now()
    # Shared: the booking only reads the Slot and builds new documents from it.
    slot = await store.get(c.RESOURCES, resources.doc_id(tenant, "Slot", slot_id), shared=True)
    if slot is None or slot.get("deleted"):
        return 0
    s = slot["central"]
    usable = s.get("appointment_id") is None and (
        (s.get("status") == "free" and not s.get("hold")) or booking.is_held(s)
    )
    if not usable:
        return 0
    if booking.lead_time_hours(s, now) > rules.ASSIGN_ABOVE_HOURS:
        # The planned entry, if it still waits (or this command claimed it before a
        # redelivery) and still takes the slot; else the slot's best taker now.
        out = await assign_pair(store, now, msg_id=sub, corr=corr, slot=slot, entry_id=entry_id)
        if out == "booked":
            return 1
        if out == "slot":
            return 0
    offered = await offer_slot(
        store,
        clock,
        settings,
        tenant=tenant,
        slot_id=slot_id,
        reason="unlock",
        msg_id=f"{sub}/offer",
        corr=corr,
    )
    return 1 if offered == "booked" else 0


async def handle_accept(
    store: Store, clock: Clock, settings: Settings, msg: Envelope
) -> dict[str, Any]:
    """``waiting-room.accept`` {proposal (global id), pesel}."""
    doc = await accept(
        store,
        clock,
        settings,
        gid=msg.body["proposal"],
        pesel=msg.body["pesel"],
        msg_id=msg.id,
        corr=msg.correlation_id or msg.id,
    )
    view = await patients.appointment_view(store, patients.Directory(store), doc)
    return {"appointment": view}


async def handle_decline(
    store: Store, clock: Clock, settings: Settings, msg: Envelope
) -> dict[str, Any]:
    """``waiting-room.decline`` {proposal, pesel}; ``waiting-room.expire`` {proposal} (the
    clock task); ``waiting-room.withdraw`` {proposal} (the entry was left)."""
    gid = msg.body["proposal"]
    p = await store.get(c.WAITING_ROOM_PROPOSALS, gid)
    if p is None or (
        msg.type == "waiting-room.decline" and p.get("pesel") != msg.body.get("pesel")
    ):
        raise patients.not_found("proposal")
    status: Literal["declined", "expired", "withdrawn"] = "withdrawn"
    if msg.type == "waiting-room.decline":
        status = "declined"
    elif msg.type == "waiting-room.expire":
        status = "expired"
    if msg.type == "waiting-room.decline" and p["status"] != "open":
        raise patients.problem(409, "not-active", f"the proposal is {p['status']}")
    if status == "expired" and from_store(p["expires_at"]) > clock.now():
        return {"proposal": gid, "status": p["status"]}  # not yet (a clock set back)
    done = await close_proposal(
        store,
        clock,
        settings,
        gid=gid,
        status=status,
        msg_id=msg.id,
        corr=msg.correlation_id or msg.id,
    )
    return {"proposal": gid, "status": (done or p).get("status")}
