"""Patient notifications: messages on booking changes, reminders, exactly once per channel.

The ``notifications`` consumer group listens to ``resource.Appointment.*`` (any
channel: provider, portal, SMS, waiting room) and to ``reminder.due``:

- **What happened** is read from the store, not guessed from the event: the
  event's version and the one before it (``resources.version_doc``) say whether a
  visit was booked, moved, cancelled, entered or left the waiting room, was
  assigned or proposed (R-NOT-1, R-NOT-3). A change that a patient does not
  see (a comment, a status the facility sets after the visit) sends nothing.
  Visits of the initial import (R-SCHED-5) and visits in the past get no
  message (they still get reminders when in the future). The visit is read
  once per event; the version before it only when the change may be told
  (``TELLING``: a visit ``fulfilled``, say, tells nothing whatever it was).
- **Channels** come from the visit's contact data (R-NOT-4, R-PAT-7): an SMS
  when it has a phone, an e-mail when it has an address, and a push message
  when the patient has an account in the patient channel (addressed by a
  pseudonym of the PESEL, never the PESEL).
- **Exactly one message per event and channel**: before sending, a record
  keyed ``<event id>:<channel>`` is claimed in ``notifications`` (unique
  index); after the channel accepted the message the record is marked
  ``sent``. A redelivered event finds ``sent`` and sends nothing. The one
  at-least-once window is a crash (or a lost store write) *between* the
  channel accepting the message and the ``sent`` mark: the claim is then
  taken again after ``CLAIM_LEASE`` and the message is sent a second time.
  Adapters pass the key on (``Idempotency-Key`` / ``Message-ID``) so a
  receiver that deduplicates closes that window too.
- **Failures**: a channel that fails for now raises ``Retry`` (the bus's
  delay tiers), channels already sent are not repeated; after the last tier
  the event is dead-lettered. A permanent refusal (bad number) is recorded as
  ``failed`` and not retried. Both show in ``/metrics``.

**Reminders** 7 days and 1 day before the visit (R-NOT-2) are planned here
on every Appointment event (``gateway.reminders``: re-timed when the visit
moves, cancelled when it is cancelled; not for the waiting room's FHIR face
of an entry, tenant ``cer-waiting-room``, which is never a booked visit) and
come back as ``reminder.due`` events; the visit's *current* state is checked
at send time, so a cancelled or moved visit gets no stale reminder.

Every message about a booked visit carries the visit's short **reply
reference** (``sms_refs``): ``ANULUJ <ref>`` in an SMS reply cancels that
visit (``gateway.sms_replies``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Literal

import structlog

from gateway import constants as c
from gateway import pesel as pesel_rules
from gateway.errors import FhirError
from gateway.logging import bind_correlation
from gateway.metrics import Metrics, Outcome
from gateway.ports import (
    ChannelError,
    Clock,
    Document,
    DuplicateKey,
    EmailSender,
    Envelope,
    MessageBus,
    Notice,
    PushSender,
    Reject,
    Retry,
    SmsSender,
    Store,
)
from gateway.reminders import Reminders
from gateway.resources import UNREAD, Unread, version_doc
from gateway.timeutil import from_store, to_store
from mappings import appointment as appointment_map
from mappings import notifications as templates
from mappings.notifications import VisitFacts

log = structlog.get_logger("gateway.notifications")

GROUP = "notifications"
PATTERNS = ("resource.Appointment.*", "reminder.due")
Channel = Literal["sms", "email", "push"]
CHANNELS: tuple[Channel, ...] = ("sms", "email", "push")
# Statuses of a visit that is booked and still ahead (messages and reminders).
BOOKED = frozenset({"booked", "pending"})
# The statuses a change to which may be told (``classify``); to any other, nothing is.
TELLING = BOOKED | {"cancelled", "waitlist", "proposed"}
# How long a claim on (event, channel) protects a send in progress (seconds).
CLAIM_LEASE = 120.0
REF_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud and typed safely
REF_LENGTH = 4
_NOT_DIGIT = re.compile(r"[^0-9]")


# --------------------------------------------------------------------------- pure helpers


def normalize_phone(raw: str | None) -> str | None:
    """Digits with the country code (``48600100200``); a 9-digit number is Polish."""
    if not raw:
        return None
    text = raw.strip()
    digits = _NOT_DIGIT.sub("", text)
    if text.startswith("00"):
        digits = digits[2:]
    if len(digits) == 9:
        digits = "48" + digits
    return digits if 9 <= len(digits) <= 15 else None


# Byte b -> REF_ALPHABET[b % len(REF_ALPHABET)] (an ASCII alphabet), for bytes.translate.
_REF_BYTES = bytes(ord(REF_ALPHABET[b % len(REF_ALPHABET)]) for b in range(256))


def reference(key: str, taken: set[str]) -> str:
    """A short reply reference derived from ``key``; longer when the phone already uses it."""
    digest = hashlib.sha256(key.encode()).digest()
    chars = digest.translate(_REF_BYTES).decode("ascii")  # REF_ALPHABET[b % len], per byte
    for n in range(REF_LENGTH, len(chars)):
        if chars[:n] not in taken:
            return chars[:n]
    return chars


@dataclass(frozen=True)
class Visit:
    """One version of an appointment, as the messages need it (personal data: never log)."""

    tenant: str
    id: str
    version: int
    status: str
    start: str | None
    scope: str | None
    category: str | None
    channel: str
    pesel: str
    phone: str | None
    email: str | None
    slot_id: str | None
    cancel_reason: str | None

    @classmethod
    def of(cls, tenant: str, rid: str, version: int, central: Mapping[str, Any]) -> Visit:
        contact = central.get("contact") or {}
        slots = central.get("slot_ids") or []
        return cls(
            tenant=tenant,
            id=rid,
            version=version,
            status=central.get("status") or "",
            start=central.get("start"),
            scope=central.get("scope"),
            category=central.get("category"),
            channel=central.get("channel") or "provider",
            pesel=central.get("patient_pesel") or "",
            phone=normalize_phone(contact.get("phone")),
            email=contact.get("email") or None,
            slot_id=slots[0] if slots else None,
            cancel_reason=central.get("cancel_reason"),
        )


def classify(prev: Visit | None, cur: Visit | None, verb: str) -> str | None:
    """The message kind for a change from ``prev`` to ``cur`` (None: nothing to tell)."""
    if verb == "deleted" or cur is None:
        if prev is None:
            return None
        if prev.status in BOOKED:
            return "cancelled"
        return "waiting-room-left" if prev.status == "waitlist" else None
    booked_kind = "assigned" if cur.channel == "waiting-room" else "booked"
    if prev is None or prev.status == cur.status == "cancelled":
        if prev is not None:
            return None
        return {
            "booked": booked_kind,
            "pending": booked_kind,
            "waitlist": "waiting-room-entered",
            "proposed": "proposal",
        }.get(cur.status)
    if cur.status == "cancelled":
        if prev.status in BOOKED:
            return "cancelled"
        return "waiting-room-left" if prev.status == "waitlist" else None
    if cur.status in BOOKED:
        if prev.status in BOOKED:
            moved = prev.slot_id != cur.slot_id or (
                prev.start is not None and cur.start is not None and prev.start != cur.start
            )
            return "changed" if moved else None
        if prev.status in ("waitlist", "proposed"):
            return "assigned"
        return booked_kind if prev.status == "cancelled" else None
    if cur.status == "proposed" and prev.status != "proposed":
        return "proposal"
    if cur.status == "waitlist" and prev.status != "waitlist":
        return "waiting-room-entered"
    return None


# --------------------------------------------------------------------------- store reads


def _appt_key(tenant: str, rid: str) -> str:
    return f"{tenant}/Appointment/{rid}"


async def load_visit(
    store: Store, tenant: str, rid: str, version: int, current: Document | Unread | None = UNREAD
) -> Visit | None:
    """Version ``version`` of an appointment: the current document or its history entry.

    ``current``: the current document as the caller just read it (None: absent)."""
    if version < 1:
        return None
    doc = (
        await store.get(c.RESOURCES, _appt_key(tenant, rid))
        if isinstance(current, Unread)
        else current
    )
    if doc is not None and doc.get("version") == version and not doc.get("deleted"):
        return Visit.of(tenant, rid, version, doc["central"])
    hist = await version_doc(store, tenant, "Appointment", rid, version, current=doc)
    if hist is None or hist.get("deleted") or not hist.get("resource"):
        return None
    try:
        central: dict[str, Any] = appointment_map.to_central(hist["resource"]).model_dump()
    except FhirError:
        return None
    slots = central.get("slot_ids") or []
    if slots and not central.get("start"):
        # The worker copies start / scope from the slot into the central model only.
        slot = await store.get(c.RESOURCES, f"{tenant}/Slot/{slots[0]}")
        if slot is not None:
            for name in ("start", "scope", "category"):
                central[name] = central.get(name) or slot["central"].get(name)
    return Visit.of(tenant, rid, version, central)


async def current_visit(
    store: Store, tenant: str, rid: str, current: Document | Unread | None = UNREAD
) -> Visit | None:
    doc = (
        await store.get(c.RESOURCES, _appt_key(tenant, rid))
        if isinstance(current, Unread)
        else current
    )
    if doc is None or doc.get("deleted"):
        return None
    return Visit.of(tenant, rid, int(doc["version"]), doc["central"])


async def place_of(store: Store, visit: Visit) -> tuple[str | None, str | None]:
    """The facility's name and address (from the slot's Location)."""
    if not visit.slot_id:
        return None, None
    slot = await store.get(c.RESOURCES, f"{visit.tenant}/Slot/{visit.slot_id}")
    loc_id = (slot or {}).get("central", {}).get("location_id")
    if not loc_id:
        return None, None
    loc = await store.get(c.RESOURCES, f"{visit.tenant}/Location/{loc_id}")
    if loc is None:
        return None, None
    central = loc.get("central") or {}
    parts = [*(central.get("lines") or []), central.get("city")]
    address = ", ".join(p for p in parts if p)
    return central.get("name"), address or None


# --------------------------------------------------------------------------- the service


class Notifier:
    """Sends patient notifications (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        metrics: Metrics,
        *,
        sms: SmsSender,
        email: EmailSender,
        push: PushSender,
        sandbox: bool = False,
        language: str = "pl",
        push_secret: str = "cer-push-sandbox",
        retry_tiers: int = 0,
        outbox_signal: asyncio.Event | None = None,
        reminder_poll_seconds: float = 30.0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.senders: dict[str, SmsSender | EmailSender | PushSender] = {
            "sms": sms,
            "email": email,
            "push": push,
        }
        self.sandbox = sandbox
        self.language = language
        self.push_secret = (push_secret or "cer-push-sandbox").encode()
        self.retry_tiers = retry_tiers
        self.outbox_signal = outbox_signal or asyncio.Event()
        self.reminders = Reminders(
            store, clock, metrics, self.outbox_signal, poll_seconds=reminder_poll_seconds
        )

    async def start(self, bus: MessageBus) -> None:
        await bus.consume_events(GROUP, PATTERNS, self.handle)

    async def run_reminders(self) -> None:
        """The reminder task (one per worker process, started by ``bootstrap``)."""
        await self.reminders.run()

    async def close(self) -> None:
        for sender in self.senders.values():
            with contextlib.suppress(Exception):
                await sender.close()

    # ------------------------------------------------------------------ consuming

    async def handle(self, msg: Envelope) -> None:
        bind_correlation(msg.correlation_id or msg.id, message_id=msg.id, event=msg.type)
        try:
            if msg.type == "reminder.due":
                await self.on_reminder(msg)
            elif msg.type.startswith("resource.Appointment."):
                await self.on_appointment(msg)
        except Exception as exc:
            last = isinstance(exc, Reject) or msg.attempt >= self.retry_tiers
            outcome: Outcome = "dead_lettered" if last else "retried"
            self.metrics.consumed("notification", outcome)
            if last:
                for channel in getattr(exc, "channels", ()):
                    self.metrics.notifications_dead_lettered_total.labels(channel).inc()
            log.warning("notification.failed", error=str(exc), attempt=msg.attempt, outcome=outcome)
            if last and not isinstance(exc, Reject):
                # The bus has more tiers than notifications retry (webhooks use
                # them, Settings.bus_retry_delays): a notification stops here.
                raise Reject(f"retries exhausted: {exc}") from exc
            raise
        self.metrics.consumed("notification", "ok")

    async def on_appointment(self, msg: Envelope) -> None:
        tenant, body = msg.tenant, msg.body
        if tenant is None or not body.get("id"):
            raise Reject("an Appointment event without tenant or id")
        rid, version, verb = body["id"], int(body.get("version") or 0), msg.type.rsplit(".", 1)[1]
        doc = await self.store.get(c.RESOURCES, _appt_key(tenant, rid))
        ref: str | None = None
        if tenant != c.WAITING_ROOM_TENANT:
            # A waiting-room entry's face is never a booked visit: no reference, no reminder.
            ref = await self.sync_visit(tenant, rid, doc)
        cur = None if verb == "deleted" else await load_visit(self.store, tenant, rid, version, doc)
        if cur is not None and cur.status not in TELLING:
            return  # nothing to tell whatever the version before (classify)
        prev = await load_visit(self.store, tenant, rid, version - 1, doc)
        kind = classify(prev, cur, verb)
        if kind is None:
            return
        if kind in ("cancelled", "waiting-room-left") or cur is None:
            # Tell what the patient had: the version before the change, with the reason.
            base = prev if prev is not None else cur
            assert base is not None
            visit = replace(
                base,
                cancel_reason=(cur.cancel_reason if cur else None) or base.cancel_reason,
                phone=(cur.phone if cur else None) or base.phone,
                email=(cur.email if cur else None) or base.email,
            )
        else:
            visit = cur
        if body.get("channel") == "import" or visit.channel == "import":
            log.debug("notification.skipped", kind=kind, why="initial import (R-SCHED-5)")
            return
        if visit.start and from_store(visit.start) <= self.clock.now():
            log.info("notification.skipped", kind=kind, why="visit in the past")
            return
        # The reply reference sync_visit just wrote (the appointment's, whatever the
        # version) is not read again; one it left alone (a cancelled visit's) is read.
        await self.notify(msg.id, kind, visit, ref=ref)

    async def on_reminder(self, msg: Envelope) -> None:
        rem_id = str(msg.body.get("reminder_id") or "")
        rem = await self.store.get(c.REMINDERS, rem_id) if rem_id else None
        if rem is None or rem.get("start") != msg.body.get("start"):
            # Re-planned for another date since it was queued: that one comes on its own.
            log.info("reminder.skipped", why="re-planned")
            return
        kind = rem["kind"]
        visit = await current_visit(self.store, rem["tenant"], rem["appointment_id"])
        why = None
        if visit is None or visit.status not in BOOKED:
            why = "visit cancelled"
        elif visit.start != rem["start"]:
            why = "visit moved"
        elif visit.start is None or from_store(visit.start) <= self.clock.now():
            why = "visit already started"
        if why is not None or visit is None:
            await self.reminders.finish(rem_id, rem["start"], "skipped", why)
            self.metrics.reminders_total.labels(kind, "skipped").inc()
            log.info("reminder.skipped", kind=kind, why=why)
            return
        await self.notify(msg.id, kind, visit)
        await self.reminders.finish(rem_id, rem["start"], "sent")
        self.metrics.reminders_total.labels(kind, "sent").inc()

    # ------------------------------------------------------------------ sending

    async def addresses(self, visit: Visit) -> list[tuple[Channel, str]]:
        """Where this visit's messages go (R-NOT-4): from its contact data."""
        out: list[tuple[Channel, str]] = []
        if visit.phone:
            out.append(("sms", visit.phone))
        if visit.email:
            out.append(("email", visit.email))
        if visit.pesel and await self.store.get(c.PATIENTS, visit.pesel) is not None:
            # The patient has an account in the patient channel (IKP / mojeIKP app).
            out.append(("push", pesel_rules.pseudonym(visit.pesel, self.push_secret)[:32]))
        return out

    async def facts(self, visit: Visit, ref: str | None = None) -> VisitFacts:
        """What the messages say; ``ref``: the visit's reply reference when the caller knows it."""
        place, address = await place_of(self.store, visit)
        if ref is None:
            ref_doc = await self.store.get(c.SMS_REFS, _appt_key(visit.tenant, visit.id))
            ref = (ref_doc or {}).get("ref")
        return VisitFacts(
            start=from_store(visit.start) if visit.start else None,
            scope=visit.scope,
            category=visit.category,
            place=place,
            address=address,
            ref=ref,
            cancel_reason=visit.cancel_reason,
        )

    async def notify(
        self, event_id: str, kind: str, visit: Visit, *, ref: str | None = None
    ) -> None:
        """Send ``kind`` about ``visit`` on each of its channels, once per event and channel."""
        facts = await self.facts(visit, ref)
        temporary: list[str] = []
        permanent: list[str] = []
        for channel, to in await self.addresses(visit):
            if not templates.has(kind, channel):
                continue
            subject, text = templates.render(kind, channel, self.language, facts)
            notice = Notice(
                id=f"{event_id}:{channel}",
                to=to,
                text=text,
                subject=subject,
                kind=kind,
                data={"appointment_id": visit.id, "ref": facts.ref or ""},
            )
            meta = {
                "tenant": visit.tenant,
                "appointment_id": visit.id,
                "pesel": visit.pesel,
                "kind": kind,
            }
            try:
                await self.deliver(event_id, channel, notice, meta)
            except ChannelError as err:
                (permanent if err.permanent else temporary).append(channel)
        if temporary:
            raise ChannelsRetry(temporary + permanent)
        if permanent:
            raise ChannelsRejected(permanent)

    async def deliver(
        self, event_id: str, channel: str, notice: Notice, meta: Mapping[str, Any]
    ) -> bool:
        """Claim ``<event>:<channel>``, send, mark sent. False when it was already sent."""
        key = notice.id
        now = self.clock.now()
        record = {
            "_id": key,
            "event_id": event_id,
            "channel": channel,
            "status": "sending",
            "claimed_at": to_store(now),
            "attempts": 1,
            "tenant": meta.get("tenant"),
            "appointment_id": meta.get("appointment_id"),
            "kind": notice.kind,
        }
        try:
            await self.store.insert(c.NOTIFICATIONS, record)
        except DuplicateKey:
            existing = await self.store.get(c.NOTIFICATIONS, key) or {}
            if existing.get("status") in ("sent", "failed"):
                self.metrics.notified(channel, "duplicate")
                log.info("notification.duplicate", channel=channel, kind=notice.kind)
                return False
            stale = to_store(now - timedelta(seconds=CLAIM_LEASE))
            claimed = await self.store.update_one(
                c.NOTIFICATIONS,
                {
                    "_id": key,
                    "$or": [
                        {"status": "error"},
                        {"status": "sending", "claimed_at": {"$lt": stale}},
                    ],
                },
                {
                    "$set": {"status": "sending", "claimed_at": to_store(now)},
                    "$inc": {"attempts": 1},
                },
                fields=(),
            )
            if claimed is None:
                raise ChannelError(f"{channel}: being sent by another consumer") from None
        try:
            await self.senders[channel].send(notice)
        except ChannelError as err:
            self.metrics.notified(channel, "failed")
            await self.store.update_one(
                c.NOTIFICATIONS,
                {"_id": key},
                {"$set": {"status": "failed" if err.permanent else "error", "error": str(err)}},
                fields=(),
            )
            log.warning(
                "notification.channel_failed",
                channel=channel,
                kind=notice.kind,
                error=str(err),
                permanent=err.permanent,
            )
            raise
        # The at-least-once window: a crash here sends again after CLAIM_LEASE.
        await self.store.update_one(
            c.NOTIFICATIONS,
            {"_id": key},
            {"$set": {"status": "sent", "sent_at": to_store(self.clock.now())}},
            fields=(),
        )
        self.metrics.notified(channel, "sent")
        log.info("notification.sent", channel=channel, kind=notice.kind)
        await self.capture(channel, notice, meta)
        return True

    async def send_direct(self, notice: Notice, meta: Mapping[str, Any]) -> bool:
        """Send an SMS answer (help text) at once, outside the event flow; False if it failed."""
        try:
            await self.senders["sms"].send(notice)
        except ChannelError as err:
            self.metrics.notified("sms", "failed")
            log.warning("notification.reply_failed", error=str(err))
            return False
        self.metrics.notified("sms", "sent")
        await self.capture("sms", notice, meta)
        return True

    async def capture(self, channel: str, notice: Notice, meta: Mapping[str, Any]) -> None:
        """Sandbox: keep what was sent for ``GET /sandbox/outbox``."""
        if not self.sandbox:
            return
        with contextlib.suppress(DuplicateKey):
            await self.store.insert(
                c.SANDBOX_OUTBOX,
                {
                    "_id": notice.id,
                    "channel": channel,
                    "to": notice.to,
                    "subject": notice.subject,
                    "text": notice.text,
                    "kind": notice.kind,
                    "pesel": meta.get("pesel"),
                    "tenant": meta.get("tenant"),
                    "appointment_id": meta.get("appointment_id"),
                    "ref": notice.data.get("ref") or None,
                    "at": to_store(self.clock.now()),
                },
            )

    # ------------------------------------------------------------------ visit state

    async def sync_visit(
        self, tenant: str, rid: str, current: Document | Unread | None = UNREAD
    ) -> str | None:
        """Bring the visit's reply reference and reminders in step with its current state
        (``current``: the stored document as the caller just read it). The reference of
        a booked visit with a phone, else None."""
        visit = await current_visit(self.store, tenant, rid, current)
        key = _appt_key(tenant, rid)
        active = visit is not None and visit.status in BOOKED and visit.start is not None
        if not active or visit is None or visit.start is None:
            await self.store.update_many(
                c.SMS_REFS, {"_id": key, "active": True}, {"$set": {"active": False}}
            )
            await self.reminders.cancel(tenant, rid)
            return None
        ref = await self._sync_ref(key, visit)
        await self.reminders.plan(tenant, rid, visit.start)
        return ref

    async def _sync_ref(self, key: str, visit: Visit) -> str | None:
        if not visit.phone:
            return None
        existing = await self.store.get(c.SMS_REFS, key)
        if existing is not None and existing.get("phone") == visit.phone:
            ref = existing["ref"]
        else:
            others = await self.store.find(c.SMS_REFS, {"phone": visit.phone, "active": True})
            ref = reference(key, {d["ref"] for d in others if d["_id"] != key})
        fields = {
            "phone": visit.phone,
            "ref": ref,
            "start": visit.start,
            "active": True,
            "tenant": visit.tenant,
            "appointment_id": visit.id,
        }
        await self.store.update_one(
            c.SMS_REFS, {"_id": key}, {"$set": fields}, upsert=True, fields=()
        )
        return ref


class ChannelsRetry(Retry):
    """Some channels failed for now: the event comes back through the retry tiers."""

    def __init__(self, channels: list[str]) -> None:
        super().__init__(f"channels failed: {', '.join(channels)}")
        self.channels = tuple(channels)


class ChannelsRejected(Reject):
    """Every failing channel refused for good: dead-letter the event now."""

    def __init__(self, channels: list[str]) -> None:
        super().__init__(f"channels refused: {', '.join(channels)}")
        self.channels = tuple(channels)
