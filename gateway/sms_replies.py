"""Patients' SMS replies (R-NOT-2, R-WAIT-6): ``POST /channels/sms/inbound {from, text}``.

Reply grammar (case, Polish diacritics and punctuation do not matter; words
after the ones below are ignored unless they are a reference):

==========================  =====================================================
``ANULUJ <kod>``            cancel the upcoming visit whose reference is ``<kod>``
                            (the 4+ character code in every SMS about the visit)
``ANULUJ``                  cancel the one upcoming visit booked with this phone
                            number; with several, the answer lists their codes
``REZYGNUJE``               leave the waiting room (R-WAIT-6): every active entry
                            with this phone number (``gateway.waiting_room``)
``POMOC`` or anything else  the help text
==========================  =====================================================

Synonyms: ``ANULUJE``, ``ODWOLAJ``, ``ODWOŁAJ``, ``CANCEL``; ``REZYGNUJĘ``,
``REZYGNUJ``, ``REZYGNACJA``; ``HELP``. A visit is matched by the sender's
phone number (normalised to digits with the country code) and the reference
(``sms_refs``, kept by the notification service); only visits still ahead
are cancelled.

The cancellation is the patient portal's own command (``patient.cancel`` on
the slot's provider partition, ``gateway.patients``) with channel ``sms`` and
reason ``patient-sms`` (R-CAN-1): the same rules as a cancellation in IKP,
the slot released with its lead time (R-CAN-2, the waiting room acts on
``slot.released``), the provider's webhook fired from the resulting events
(R-CAN-3, R-SCHED-4) and the patient told by the cancellation notice.

Answers that are not a cancellation (help, choose a code, not found) are
sent back by SMS at once; a cancellation is confirmed by the regular
"cancelled" notification. Every answer is also returned in the response.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from gateway import constants as c
from gateway.events import command, new_id
from gateway.notifications import Visit, current_visit
from gateway.ports import Notice, RequestTimeout
from gateway.timeutil import from_store
from mappings import notifications as templates
from mappings.notifications import VisitFacts, fold_ascii

if TYPE_CHECKING:
    from gateway.bootstrap import Services

log = structlog.get_logger("gateway.sms_replies")

CANCEL_WORDS = frozenset({"ANULUJ", "ANULUJE", "ODWOLAJ", "ODWOLUJE", "CANCEL"})
LEAVE_WORDS = frozenset({"REZYGNUJE", "REZYGNUJ", "REZYGNACJA"})
HELP_WORDS = frozenset({"POMOC", "HELP"})
REF_RE = re.compile(r"[A-Z2-9]{4,12}")
_WORDS = re.compile(r"[A-Z0-9]+")
SMS_CANCEL_REASON = "patient-sms"


@dataclass(frozen=True)
class Parsed:
    """What a reply asks for: ``cancel`` (with an optional reference), ``leave-waiting-room``
    or ``help``."""

    action: str
    ref: str | None = None


def parse(text: str) -> Parsed:
    words = _WORDS.findall(fold_ascii(text or "").upper())
    if not words:
        return Parsed("help")
    head, rest = words[0], words[1:]
    if head in CANCEL_WORDS:
        if not rest:
            return Parsed("cancel")
        if REF_RE.fullmatch(rest[0]):
            return Parsed("cancel", rest[0])
        return Parsed("help")
    if head in LEAVE_WORDS:
        return Parsed("leave-waiting-room")
    return Parsed("help")


@dataclass
class SmsRequest:
    phone: str  # normalised: digits with the country code
    parsed: Parsed
    correlation_id: str


@dataclass
class SmsOutcome:
    """The answer: ``result`` is a stable code, ``reply`` the text sent back."""

    result: str
    reply: str
    appointment_id: str | None = None
    send_reply: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"result": self.result, "reply": self.reply}
        if self.appointment_id:
            out["appointment_id"] = self.appointment_id
        out.update(self.extra)
        return out


SmsAction = Callable[["Services", SmsRequest], Awaitable[SmsOutcome]]


def _text(services: Services, kind: str, facts: VisitFacts | None = None, **extra: str) -> str:
    lang = services.settings.notification_language
    return templates.render(kind, "sms", lang, facts or VisitFacts(), **extra)[1]


def _facts(visit: Visit | None) -> VisitFacts:
    if visit is None or not visit.start:
        return VisitFacts()
    return VisitFacts(start=from_store(visit.start), scope=visit.scope, category=visit.category)


async def help_text(services: Services, req: SmsRequest) -> SmsOutcome:
    return SmsOutcome("help", _text(services, "sms-help"))


async def leave_waiting_room(services: Services, req: SmsRequest) -> SmsOutcome:
    """R-WAIT-6: ``REZYGNUJE`` leaves every active waiting-room entry with this phone number.

    Each is the portal's own ``waiting-room.leave`` command with channel ``sms``
    (an open proposal is withdrawn); the "left the waiting room" notification
    confirms it, so nothing else is sent back. No entry: the answer says so.
    """
    active = await services.store.find(
        c.WAITING_ROOM,
        {"phone_key": req.phone, "status": {"$in": ["waiting", "assigning", "proposed"]}},
    )
    if not active:
        return SmsOutcome("not-in-waiting-room", _text(services, "sms-waiting-room-none"))
    left: list[str] = []
    for entry in active:
        msg = command(
            "waiting-room.leave",
            {"entry": entry["_id"], "pesel": entry["pesel"], "channel": "sms"},
            tenant=c.WAITING_ROOM_TENANT,
            correlation_id=req.correlation_id or new_id(),
            now=services.clock.now(),
        )
        services.metrics.published("command")
        try:
            reply = await services.bus.request(msg, services.settings.command_timeout_seconds)
        except RequestTimeout:
            left.append(entry["_id"])  # queued: it will be applied
            continue
        if "error" not in reply:
            left.append(entry["_id"])
    log.info("sms.left_waiting_room", entries=len(left))
    return SmsOutcome("left-waiting-room", "", send_reply=False, extra={"entries": left})


async def cancel_by_sms(services: Services, req: SmsRequest) -> SmsOutcome:
    store, now = services.store, services.clock.now()
    refs = await store.find(c.SMS_REFS, {"phone": req.phone, "active": True}, sort=[("start", 1)])
    upcoming = [r for r in refs if r.get("start") and from_store(r["start"]) > now]
    ref = req.parsed.ref
    if ref is not None:
        match = [r for r in upcoming if r["ref"] == ref]
        if not match:
            old = await store.find_one(c.SMS_REFS, {"phone": req.phone, "ref": ref})
            visit = (
                await current_visit(store, old["tenant"], old["appointment_id"]) if old else None
            )
            if visit is not None and visit.status == "cancelled":
                return SmsOutcome(
                    "already-cancelled",
                    _text(services, "sms-already-cancelled", _facts(visit)),
                    visit.id,
                )
            return SmsOutcome("not-found", _text(services, "sms-not-found"))
    else:
        if not upcoming:
            return SmsOutcome("not-found", _text(services, "sms-not-found"))
        if len(upcoming) > 1:
            choices = ", ".join(f"{r['ref']} ({_facts_short(r['start'])})" for r in upcoming[:5])
            return SmsOutcome(
                "choose",
                _text(services, "sms-choose", choices=choices),
                extra={"choices": [r["ref"] for r in upcoming]},
            )
        match = upcoming
    target = match[0]
    return await cancel_visit(
        services, target["tenant"], target["appointment_id"], req.correlation_id
    )


def _facts_short(start: str) -> str:
    local = templates.values(VisitFacts(start=from_store(start)), "pl", "sms")
    return f"{local['date'][:5]} {local['time']}"


async def cancel_visit(
    services: Services, tenant: str, rid: str, correlation_id: str
) -> SmsOutcome:
    """Cancel ``Appointment/rid`` of ``tenant`` with the patient portal's own command.

    ``patient.cancel`` (``gateway.patients``) on the slot's provider partition,
    with reason ``patient-sms`` and channel ``sms``: the same checks (only a
    booked visit still ahead), the same slot release (R-CAN-2), e-referral and
    SIMP bookkeeping as a cancellation in IKP.
    """
    visit = await current_visit(services.store, tenant, rid)
    if visit is None:
        return SmsOutcome("not-found", _text(services, "sms-not-found"))
    facts = _facts(visit)
    if visit.status == "cancelled":
        return SmsOutcome("already-cancelled", _text(services, "sms-already-cancelled", facts), rid)
    msg = command(
        "patient.cancel",
        {"pesel": visit.pesel, "appointment": rid, "reason": SMS_CANCEL_REASON, "channel": "sms"},
        tenant=tenant,
        correlation_id=correlation_id or new_id(),
        now=services.clock.now(),
    )
    services.metrics.published("command")
    try:
        reply = await services.bus.request(msg, services.settings.command_timeout_seconds)
    except RequestTimeout:
        # Queued: it will be applied, and the cancellation notice follows by SMS.
        return SmsOutcome("cancel-queued", "", rid, send_reply=False)
    error = reply.get("error")
    if error is None:
        log.info("sms.cancelled", appointment=rid)
        return SmsOutcome(
            "cancelled", _text(services, "sms-cancelled", facts), rid, send_reply=False
        )
    now = await current_visit(services.store, tenant, rid)
    if now is not None and now.status == "cancelled":
        return SmsOutcome("already-cancelled", _text(services, "sms-already-cancelled", facts), rid)
    log.warning("sms.cancel_refused", appointment=rid, code=error.get("code"))
    return SmsOutcome("cancel-failed", _text(services, "sms-cancel-failed", facts), rid)


# What each parsed action does.
SMS_ACTIONS: dict[str, SmsAction] = {
    "cancel": cancel_by_sms,
    "leave-waiting-room": leave_waiting_room,
    "help": help_text,
}


async def handle_inbound(
    services: Services, phone: str, text: str, correlation_id: str
) -> SmsOutcome:
    """Apply one SMS reply from ``phone`` (normalised) and send the answer back."""
    parsed = parse(text)
    req = SmsRequest(phone, parsed, correlation_id)
    outcome = await SMS_ACTIONS.get(parsed.action, help_text)(services, req)
    log.info("sms.inbound", action=parsed.action, result=outcome.result)
    if outcome.send_reply and outcome.reply and services.notifier is not None:
        notice = Notice(
            id=f"sms-reply:{new_id()}",
            to=phone,
            text=outcome.reply,
            kind=f"sms-{outcome.result}",
        )
        pesel = None
        if outcome.appointment_id:
            ref = await services.store.find_one(
                c.SMS_REFS, {"phone": phone, "appointment_id": outcome.appointment_id}
            )
            if ref is not None:
                visit = await current_visit(services.store, ref["tenant"], ref["appointment_id"])
                pesel = visit.pesel if visit else None
        await services.notifier.send_direct(
            notice, {"pesel": pesel, "appointment_id": outcome.appointment_id}
        )
    return outcome
