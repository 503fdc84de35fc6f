"""The waiting room (*Poczekalnia*): entries, their queue place, and their FHIR face.

An entry (``waiting_room`` collection) is one patient waiting for one first-time
visit of a scope with a waiting room (R-WAIT-1: ``waiting_room`` in
``mappings/data/scope.json``), on one e-referral (R-PAT-2), with the criteria
chosen at search (R-WAIT-4) and contact data (R-PAT-7). Its place in the queue
is ``rank`` (``waiting_rules.rank_of``: first come first served, urgent and
privileged with a bounded credit, R-WAIT-5); changing the criteria keeps the
place (R-WAIT-4, R-CRIT-2).

Statuses: ``waiting`` -> ``assigning`` (one command is booking a slot for it) ->
``assigned``; ``waiting`` -> ``proposed`` (a 48-72 h slot is offered, R-CAN-2) ->
``assigned`` or back to ``waiting``; ``left`` (the patient left: DELETE or SMS
REZYGNUJE, R-WAIT-6); ``closed`` (the e-referral got a visit another way, or
can no longer book). One active entry per e-referral: the unique ``active_key``.

**FHIR face**: every entry is also an ``Appointment`` of the provider-less
tenant ``cer-waiting-room`` (``constants.WAITING_ROOM_TENANT``): status
``waitlist`` with ``requestedPeriod`` (from / to) and the other criteria in an
extension while active, ``fulfilled`` once a visit is booked for it,
``cancelled`` when left. Providers find a patient's ``waitlist`` entries with
``GET /fhir/Appointment?patient:identifier=...`` (``waiting_fhir``, audited).
Its versions drive the patient messages (``gateway.notifications``: entered,
left) like any visit's. It follows the entry by the entry's ``rev``
(``sync_mirror``): whoever changes an entry brings the Appointment up to date.

Re-entry (R-WAIT-6): after a first-time visit of a patient who was in the
waiting room for that e-referral is cancelled (by the patient, or by the
facility), the entry is active again **with its original place** (``rank``):
the date was chosen for the patient, not by them (R-WAIT-7: "cancel it, then
they wait again"), and the medical need has not changed since they queued.
The slot they gave up is never offered to them again (``gave_up``). Not after
a reschedule (``patient-rescheduled``: they have a visit) nor after
``patient-treated-elsewhere``. A patient who never waited is not entered: the
cancellation answer points to the waiting room (``next_step``).

Commands (tenant ``cer-waiting-room``, one partition): ``waiting-room.enter``,
``waiting-room.change``, ``waiting-room.leave``. The slot side (assignment,
proposals) is ``gateway.waiting_assign``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from gateway import constants as c
from gateway import patients, resources
from gateway import waiting_rules as rules
from gateway.errors import FhirError
from gateway.events import event
from gateway.model import (
    AppointmentStatus,
    CentralAppointment,
    CentralContact,
    CentralPeriod,
    CentralReferral,
)
from gateway.notifications import normalize_phone
from gateway.ports import Clock, DuplicateKey, Envelope, Retry, Store
from gateway.settings import Settings
from gateway.timeutil import from_store, to_fhir, to_store
from mappings import appointment as appointment_map
from mappings import codes

if TYPE_CHECKING:
    from gateway.patients import Criteria

log = structlog.get_logger("gateway.waiting_room")

CHANNEL = "waiting-room"
EXT_CRITERIA = f"{codes.BASE}/StructureDefinition/waiting-room-criteria"
EXT_QUEUED_AT = f"{codes.BASE}/StructureDefinition/waiting-room-queued-at"
EXT_ESTIMATE = f"{codes.BASE}/StructureDefinition/waiting-room-estimate"
# Cancellations after which a patient does not go back to the waiting room (R-WAIT-6).
NO_REENTRY_REASONS = frozenset({"patient-rescheduled", "patient-treated-elsewhere"})
LEFT_REASONS = {"sms": "patient-sms"}  # the mirror's cancelationReason by channel


def problem(status: int, code: str, detail: str, **extra: Any) -> FhirError:
    return patients.problem(status, code, detail, **extra)


def entry_gid(entry_id: str) -> str:
    return entry_id


# --------------------------------------------------------------------------- the FHIR face


def mirror_of(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The entry as a FHIR ``Appointment`` of the waiting room's tenant."""
    status = entry["status"]
    crit = entry.get("criteria") or {}
    fhir_status: AppointmentStatus
    if status in rules.ACTIVE:
        fhir_status = "waitlist"
    elif status == rules.ASSIGNED or entry.get("closed_reason") == "booked-elsewhere":
        fhir_status = "fulfilled"
    else:
        fhir_status = "cancelled"
    reason = None
    if fhir_status == "cancelled":
        reason = (
            LEFT_REASONS.get(entry.get("left_channel") or "", "patient-request")
            if status == rules.LEFT
            else "system-referral-invalid"
        )
    info = codes.scopes().get(entry["scope"])
    category = (
        rules.slot_category_for(entry["queue"]) if info and info.slot_category_required else None
    )
    ref = entry.get("referral")
    central = CentralAppointment(
        status=fhir_status,
        scope=entry["scope"],
        category=category,
        patient_pesel=entry["pesel"],
        referral=CentralReferral(**ref) if ref else None,
        channel=CHANNEL,
        contact=CentralContact(**entry["contact"]) if entry.get("contact") else None,
        privileged=bool(entry.get("privileged")),
        requested_period=(
            [CentralPeriod(start=crit.get("from"), end=crit.get("to"))]
            if crit.get("from") or crit.get("to")
            else []
        ),
        cancel_reason=reason,
        cancelled_at=entry.get("left_at") if fhir_status == "cancelled" else None,
    )
    res = appointment_map.to_fhir(entry["_id"], central)
    view = rules.criteria_view(crit)
    parts: list[dict[str, Any]] = []
    for name in ("weekdays", "hours", "postal_code", "city", "facility"):
        value = view.get(name)
        if name == "weekdays":
            parts += [{"url": "weekday", "valueInteger": d} for d in value or []]
        elif value:
            parts.append({"url": name.replace("_", "-"), "valueString": value})
    res["extension"] = [
        *res.get("extension", []),
        {"url": EXT_QUEUED_AT, "valueDateTime": to_fhir(from_store(entry["queued_at"]))},
        *([{"url": EXT_CRITERIA, "extension": parts}] if parts else []),
    ]
    return {"resource": res, "central": central.model_dump()}


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    strip = ("meta", "id")
    return {k: v for k, v in a.items() if k not in strip} == {
        k: v for k, v in b.items() if k not in strip
    }


async def sync_mirror(store: Store, now: datetime, entry_id: str, correlation_id: str) -> None:
    """Bring the entry's FHIR ``Appointment`` up to its current ``rev`` (any writer, any time)."""
    key = resources.doc_id(c.WAITING_ROOM_TENANT, "Appointment", entry_id)
    for _ in range(8):
        entry = await store.get(c.WAITING_ROOM, entry_id)
        if entry is None:
            return
        cur = await store.get(c.RESOURCES, key)
        if cur is not None and cur["central"].get("entry_rev", -1) >= entry["rev"]:
            return
        made = mirror_of(entry)
        if cur is not None and not cur.get("deleted") and _same(cur["resource"], made["resource"]):
            return
        central = {**made["central"], "entry_rev": entry["rev"]}
        try:
            await resources.apply_put(
                store,
                now=now,
                tenant=c.WAITING_ROOM_TENANT,
                rtype="Appointment",
                rid=entry_id,
                resource=made["resource"],
                central=central,
                if_match=cur["version"] if cur is not None and not cur.get("deleted") else None,
                msg_id=f"wr:{entry_id}:{entry['rev']}",
                correlation_id=correlation_id,
                channel=CHANNEL,
                current=cur,
            )
            return
        except FhirError as err:
            if err.status in (409, 412):
                continue  # another writer moved it: look again
            raise


# --------------------------------------------------------------------------- entries


def waiting_event(entry_id: str, now: datetime, correlation_id: str) -> dict[str, Any]:
    """``waiting-room.waiting``: this entry may take a free slot now (scan for one)."""
    return event(
        "waiting-room.waiting",
        {"entry": entry_id},
        tenant=c.WAITING_ROOM_TENANT,
        correlation_id=correlation_id,
        now=now,
    )


def changed_event(entry_id: str, now: datetime, correlation_id: str) -> dict[str, Any]:
    """``waiting-room.changed``: bring the entry's FHIR face up to date (``sync_mirror``)."""
    return event(
        "waiting-room.changed",
        {"entry": entry_id},
        tenant=c.WAITING_ROOM_TENANT,
        correlation_id=correlation_id,
        now=now,
    )


def active_key(scope: str, referral: Mapping[str, str] | None, pesel: str) -> str:
    return f"{scope}|{referral['key'] if referral else pesel}"


async def own_entry(store: Store, pesel: str, entry_id: str) -> dict[str, Any]:
    doc = await store.get(c.WAITING_ROOM, entry_id) if isinstance(entry_id, str) else None
    if doc is None or doc.get("pesel") != pesel:
        raise patients.not_found("waiting-room entry")
    return doc


async def _check_referral(
    store: Store, pesel: str, scope: str, referral: Mapping[str, str] | None
) -> dict[str, Any] | None:
    """R-PAT-2: a valid e-referral of the scope, with no booked visit (else book / move it)."""
    info = codes.scopes()[scope]
    if not info.referral_required_first_time:
        return None
    ref_doc = await store.get(c.REFERRALS, referral["key"]) if referral else None
    patients.check_referral(
        ref_doc, referral, pesel=pesel, scope=scope, category=None, appointment_id=""
    )
    assert ref_doc is not None
    if ref_doc.get("status") == patients.REFERRAL_BOOKED:
        raise patients.refuse_referral(
            "in-use",
            "this e-referral already has a booked visit: cancel it or move it "
            "(a cancelled first-time visit brings you back to the waiting room, R-WAIT-6)",
        )
    return ref_doc


async def enter(
    store: Store,
    clock: Clock,
    settings: Settings,
    *,
    entry_id: str,
    pesel: str,
    scope: str,
    referral: Mapping[str, str] | None,
    criteria: Criteria,
    criteria_input: Mapping[str, Any],
    contact: Mapping[str, Any] | None,
    channel: str,
    correlation_id: str,
) -> dict[str, Any]:
    """A new entry (R-WAIT-2 by choice or automatically); 409 ``already-waiting`` if the
    referral has one. Redelivery-safe: ``entry_id`` comes with the command."""
    info = codes.scopes().get(scope)
    if info is None or not info.waiting_room:
        with_room = [k for k, v in codes.scopes().items() if v.waiting_room]
        raise problem(
            422,
            "no-waiting-room",
            f"{scope} has no waiting room (R-WAIT-1); scopes with one: {', '.join(with_room)}",
        )
    existing = await store.get(c.WAITING_ROOM, entry_id)
    if existing is not None and existing.get("pesel") == pesel:
        return existing  # a redelivered command
    contact_ok = patients.require_contact(contact)
    ref_doc = await _check_referral(store, pesel, scope, referral)
    now = clock.now()
    queue = rules.queue_of(ref_doc.get("category") if ref_doc else None)
    privileged = bool(ref_doc.get("privileged")) if ref_doc else False
    doc: dict[str, Any] = {
        "_id": entry_id,
        "pesel": pesel,
        "scope": scope,
        "queue": queue,
        "privileged": privileged,
        "referral": dict(referral) if referral else None,
        "criteria": rules.criteria_to_store(criteria),
        "loc_key": rules.location_key(rules.criteria_to_store(criteria)),
        "criteria_input": dict(criteria_input),
        "contact": contact_ok.model_dump(),
        "phone_key": normalize_phone(contact_ok.phone),
        "status": rules.WAITING,
        "active_key": active_key(scope, referral, pesel),
        "queued_at": to_store(now),
        "rank": rules.rank_of(
            entry_id,
            now,
            queue,
            privileged,
            urgent_credit=timedelta(days=settings.waiting_room_urgent_credit_days),
            privileged_credit=timedelta(days=settings.waiting_room_privileged_credit_days),
        ),
        "entered_at": to_store(now),
        "updated_at": to_store(now),
        "channel": channel,
        "gave_up": [],
        "rev": 1,
    }
    try:
        await store.insert(
            c.WAITING_ROOM, doc, events=[waiting_event(entry_id, now, correlation_id)]
        )
    except DuplicateKey:
        again = await store.get(c.WAITING_ROOM, entry_id)
        if again is not None and again.get("pesel") == pesel:
            return again
        other = await store.find_one(c.WAITING_ROOM, {"active_key": doc["active_key"]})
        raise problem(
            409,
            "already-waiting",
            "you are already in the waiting room with this e-referral: change that entry's "
            "criteria instead (PATCH)",
            entry_id=other["_id"] if other else None,
        ) from None
    await sync_mirror(store, now, entry_id, correlation_id)
    log.info("waiting_room.entered", entry=entry_id, channel=channel, queue=queue)
    return doc


async def change(
    store: Store,
    clock: Clock,
    *,
    entry_id: str,
    pesel: str,
    criteria: Criteria | None,
    criteria_input: Mapping[str, Any] | None,
    contact: Mapping[str, Any] | None,
    correlation_id: str,
) -> dict[str, Any]:
    """New criteria (R-WAIT-4) and/or contact; the place in the queue stays."""
    doc = await own_entry(store, pesel, entry_id)
    if doc["status"] == rules.ASSIGNING:
        raise Retry("a visit is being booked for this entry right now", delay=0.2)
    if doc["status"] not in rules.ACTIVE:
        raise problem(409, "not-active", f"the entry is {doc['status']}: nothing to change")
    now = clock.now()
    fields: dict[str, Any] = {"updated_at": to_store(now)}
    if criteria is not None:
        fields["criteria"] = rules.criteria_to_store(criteria)
        fields["loc_key"] = rules.location_key(fields["criteria"])
        fields["criteria_input"] = dict(criteria_input or {})
    if contact is not None:
        ok = patients.require_contact(contact)
        fields["contact"] = ok.model_dump()
        fields["phone_key"] = normalize_phone(ok.phone)
    events = (
        [waiting_event(entry_id, now, correlation_id)] if doc["status"] == rules.WAITING else []
    )
    done = await store.update_one(
        c.WAITING_ROOM,
        {"_id": entry_id, "rev": doc["rev"]},
        {"$set": fields, "$inc": {"rev": 1}},
        events=events,
    )
    if done is None:
        raise Retry("the entry changed meanwhile", delay=0.05)
    await sync_mirror(store, now, entry_id, correlation_id)
    return done


async def leave(
    store: Store, clock: Clock, *, entry_id: str, pesel: str, channel: str, correlation_id: str
) -> dict[str, Any]:
    """The patient leaves (R-WAIT-6): DELETE in IKP, or SMS REZYGNUJE. An open
    proposal is withdrawn (the slot goes to the next candidate)."""
    doc = await own_entry(store, pesel, entry_id)
    if doc["status"] == rules.LEFT:
        return doc
    if doc["status"] == rules.ASSIGNING:
        raise Retry("a visit is being booked for this entry right now", delay=0.2)
    if doc["status"] not in rules.ACTIVE:
        raise problem(
            409,
            "not-active",
            f"the entry is {doc['status']}"
            + (": cancel the visit it was given instead" if doc.get("appointment") else ""),
            appointment_id=doc.get("appointment"),
        )
    now = clock.now()
    events = []
    if doc["status"] == rules.PROPOSED and doc.get("proposal"):
        events.append(
            event(
                "waiting-room.withdraw",
                {"proposal": doc["proposal"]},
                tenant=c.WAITING_ROOM_TENANT,
                correlation_id=correlation_id,
                now=now,
            )
        )
    done = await store.update_one(
        c.WAITING_ROOM,
        {"_id": entry_id, "status": doc["status"], "rev": doc["rev"]},
        {
            "$set": {
                "status": rules.LEFT,
                "left_at": to_store(now),
                "left_channel": channel,
                "updated_at": to_store(now),
            },
            "$unset": {"active_key": ""},
            "$inc": {"rev": 1},
        },
        events=events,
    )
    if done is None:
        raise Retry("the entry changed meanwhile", delay=0.05)
    await sync_mirror(store, now, entry_id, correlation_id)
    log.info("waiting_room.left", entry=entry_id, channel=channel)
    return done


async def reenter(
    store: Store,
    now: datetime,
    *,
    appointment: Mapping[str, Any],
    slot_gid: str,
    correlation_id: str,
) -> str | None:
    """R-WAIT-6: a cancelled first-time visit puts its patient back, in their old place.

    ``appointment`` is the cancelled visit's document. Returns the entry id, or
    None when the rule does not apply (see the module docstring).
    """
    a = appointment["central"]
    info = codes.scopes().get(a.get("scope") or "")
    cat = codes.slot_categories().get(a.get("category") or "")
    if (
        a.get("status") != "cancelled"
        or info is None
        or not info.waiting_room
        or (cat is not None and not cat.first_time)
        or a.get("cancel_reason") in NO_REENTRY_REASONS
        or not a.get("start")
        or from_store(a["start"]) <= now
        or appointment["tenant"] == c.WAITING_ROOM_TENANT
    ):
        return None
    ref = a.get("referral")
    flt: dict[str, Any] = {"scope": info.code, "pesel": a.get("patient_pesel")}
    if ref:
        flt["referral.key"] = ref["key"]
    found = await store.find(c.WAITING_ROOM, flt, sort=[("entered_at", -1)], limit=1)
    if not found:
        return None
    entry = found[0]
    if entry["status"] not in (rules.ASSIGNED, rules.CLOSED):
        return None
    try:
        done = await store.update_one(
            c.WAITING_ROOM,
            {"_id": entry["_id"], "rev": entry["rev"], "status": entry["status"]},
            {
                "$set": {
                    "status": rules.WAITING,
                    "active_key": active_key(info.code, ref, entry["pesel"]),
                    "appointment": None,
                    "slot": None,
                    "closed_reason": None,
                    "reentered_at": to_store(now),
                    "updated_at": to_store(now),
                    "gave_up": sorted({*(entry.get("gave_up") or []), slot_gid}),
                },
                "$inc": {"rev": 1},
            },
            events=[waiting_event(entry["_id"], now, correlation_id)],
        )
    except DuplicateKey:
        return None  # another active entry holds the referral
    if done is None:
        return None
    await sync_mirror(store, now, entry["_id"], correlation_id)
    log.info("waiting_room.reentered", entry=entry["_id"])
    return str(entry["_id"])


async def close_for_referral(
    store: Store, now: datetime, referral_key: str, appointment_gid: str, correlation_id: str
) -> None:
    """The e-referral booked a visit another way (the patient booked it): the entry is done."""
    entry = await store.find_one(
        c.WAITING_ROOM, {"referral.key": referral_key, "status": rules.WAITING}
    )
    if entry is None:
        return
    done = await store.update_one(
        c.WAITING_ROOM,
        {"_id": entry["_id"], "status": rules.WAITING, "rev": entry["rev"]},
        {
            "$set": {
                "status": rules.CLOSED,
                "closed_reason": "booked-elsewhere",
                "appointment": appointment_gid,
                "updated_at": to_store(now),
            },
            "$unset": {"active_key": ""},
            "$inc": {"rev": 1},
        },
    )
    if done is not None:
        await sync_mirror(store, now, entry["_id"], correlation_id)


# --------------------------------------------------------------------------- command handlers


def _criteria(scope: str, body: Mapping[str, Any]) -> Criteria | None:
    raw = body.get("criteria")
    if raw is None:
        return None
    try:
        return patients.parse_criteria(rules.criteria_query(scope, raw))
    except ValueError as exc:
        raise patients.invalid(str(exc)) from exc


async def handle_enter(
    store: Store, clock: Clock, settings: Settings, msg: Envelope
) -> dict[str, Any]:
    """``waiting-room.enter`` {entry, pesel, scope, referral, criteria, contact, channel}."""
    b = msg.body
    crit = _criteria(b["scope"], b) or patients.parse_criteria([("scope", b["scope"])])
    doc = await enter(
        store,
        clock,
        settings,
        entry_id=b["entry"],
        pesel=b["pesel"],
        scope=b["scope"],
        referral=b.get("referral"),
        criteria=crit,
        criteria_input=b.get("criteria") or {},
        contact=b.get("contact"),
        channel=b.get("channel") or patients.CHANNEL,
        correlation_id=msg.correlation_id or msg.id,
    )
    return {"entry": doc["_id"]}


async def handle_change(store: Store, clock: Clock, msg: Envelope) -> dict[str, Any]:
    """``waiting-room.change`` {entry, pesel, criteria?, contact?}."""
    b = msg.body
    doc = await own_entry(store, b["pesel"], b["entry"])
    await change(
        store,
        clock,
        entry_id=b["entry"],
        pesel=b["pesel"],
        criteria=_criteria(doc["scope"], b),
        criteria_input=b.get("criteria"),
        contact=b.get("contact"),
        correlation_id=msg.correlation_id or msg.id,
    )
    return {"entry": b["entry"]}


async def handle_leave(store: Store, clock: Clock, msg: Envelope) -> dict[str, Any]:
    """``waiting-room.leave`` {entry, pesel, channel}."""
    b = msg.body
    await leave(
        store,
        clock,
        entry_id=b["entry"],
        pesel=b["pesel"],
        channel=b.get("channel") or patients.CHANNEL,
        correlation_id=msg.correlation_id or msg.id,
    )
    return {"entry": b["entry"]}


def new_entry_id() -> str:
    """A FHIR-valid id for a new entry (also its Appointment's id): a UUID, so a provider's
    search shows the provider-less Appointment as ``urn:uuid:<id>``."""
    return str(uuid.uuid4())


def claim_stamp(msg_id: str, slot_gid: str) -> dict[str, Any]:
    """Who is booking an entry: the command, the slot, and the wall-clock time (for the
    recovery of a claim whose command died, ``waiting_service``)."""
    return {"by": msg_id, "slot": slot_gid, "real": time.time()}
