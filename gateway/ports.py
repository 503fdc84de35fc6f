"""Ports: the interfaces the application needs from the outside world.

Each port is a ``typing.Protocol``; every adapter in ``adapters/`` implements
exactly one of them, and has an embedded in-process twin. One contract test
suite per port (``tests/contract/``) runs against both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, NamedTuple, Protocol

Document = dict[str, Any]
Filter = Mapping[str, Any]
Sort = Sequence[tuple[str, int]]


# --------------------------------------------------------------------------- store


class DuplicateKey(Exception):
    """A write would break a unique index (the store's concurrency guard)."""


@dataclass(frozen=True)
class Index:
    """A store index: ``fields`` are ``(path, 1 | -1)``; ``unique`` makes it a guard.

    ``sparse`` (unique only): documents missing the first field are not indexed.

    ``partial``: equality conditions ``(path, value)``; only the documents that meet
    all of them are indexed (MongoDB's ``partialFilterExpression``, equalities only).
    As on MongoDB, such an index serves only a query whose filter has the same
    equalities (e.g. ``"type": "Appointment"``): other queries read another index or
    scan. Not together with ``sparse`` (MongoDB refuses both).
    """

    fields: tuple[tuple[str, int], ...]
    unique: bool = False
    sparse: bool = False
    partial: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.partial and self.sparse:
            raise ValueError("an index is either sparse or partial (as on MongoDB)")

    @property
    def name(self) -> str:
        return "_".join(f"{p}_{d}" for p, d in self.fields)


class OutboxItem(NamedTuple):
    """An event waiting in a document's outbox, with where it is kept (a named tuple:
    the relay makes one per event, and a frozen dataclass's ``__init__`` cost three
    times as much)."""

    collection: str
    doc_id: str
    event: Document


class Store(Protocol):
    """A document store with MongoDB's guarantees and nothing more.

    Documents are JSON-like dicts with a string ``_id``. Instants are stored as
    fixed-width ISO strings (``gateway.timeutil.to_store``) so they sort.

    Filters are a subset of MongoDB's query language, the same on every adapter:
    equality on (dotted) paths, where a list field matches if any element
    equals; operators ``$eq $ne $gt $gte $lt $lte $in $nin $exists``; and
    top-level ``$and`` / ``$or``. Updates are ``$set $unset $inc $setOnInsert``
    and ``$push`` (with optional ``$each``).

    The outbox (ARCHITECTURE.md): ``events`` passed to ``insert`` / ``update_one``
    are written into the same document's ``_outbox`` array in the same atomic
    single-document write, so a state change and its events are never parted.
    A relay reads ``pending_events`` and removes what it published with
    ``clear_events``. ``_outbox`` is never returned by reads.

    ``suspends``: whether its calls give the event loop to other tasks (a network
    round trip, MongoDB). The embedded store's never do: a caller that writes in a
    long loop yields on its own (``waiting_assign.handle_assign``).
    """

    suspends: bool

    async def start(self, indexes: Mapping[str, Sequence[Index]]) -> None:
        """Connect and make sure the collections' indexes exist."""

    async def close(self) -> None: ...

    async def ping(self) -> bool: ...

    async def insert(
        self,
        coll: str,
        doc: Document,
        events: Sequence[Document] = (),
        *,
        handover: bool = False,
    ) -> None:
        """Insert one document; raises ``DuplicateKey`` on ``_id`` or a unique index.

        ``handover``: the caller built ``doc`` for this insert out of JSON values
        (dicts, lists, strings, numbers, booleans, None) and gives it up: it never
        changes any object inside it afterwards (nor lets anybody else), so the store
        may keep those objects instead of copying them (the embedded store; its
        top-level dict is the store's own either way). Reads still hand out copies.
        """

    async def get(
        self,
        coll: str,
        doc_id: str,
        fields: Sequence[str] | None = None,
        *,
        shared: bool = False,
    ) -> Document | None:
        """The document with this ``_id``, or None. ``fields`` (top-level names) returns
        only those and ``_id``, as ``find`` does: a check of a slot's central model need
        not copy its FHIR resource.

        ``shared``: as ``find``'s: the caller changes nothing in the document, nor in
        anything it hands the document's values to (it may keep reading it, and build
        new documents from its values: a stored version is never changed in place, so
        what it reads stays the version it read). The answer is the same."""

    async def find_one(
        self, coll: str, filter: Filter, sort: Sort | None = None
    ) -> Document | None: ...

    async def find(
        self,
        coll: str,
        filter: Filter,
        *,
        sort: Sort | None = None,
        skip: int = 0,
        limit: int = 0,
        fields: Sequence[str] | None = None,
        shared: bool = False,
    ) -> list[Document]:
        """All matching documents; ``limit=0`` means no limit. ``fields`` (top-level
        names) returns only those and ``_id``: a page listing a thousand slots needs
        their central model, not every stored copy of the FHIR resource.

        ``shared``: the caller reads the documents at once and changes nothing in them
        (say, to turn each into a tuple of facts); their nested values may then be the
        store's own, which the embedded store no longer copies (it never changes a stored
        value in place). The answer is the same."""

    async def count(self, coll: str, filter: Filter) -> int: ...

    def iterate(
        self,
        coll: str,
        filter: Filter,
        *,
        sort: Sort | None = None,
        batch_size: int = 500,
        fields: Sequence[str] | None = None,
    ) -> AsyncIterator[Document]:
        """The matching documents one at a time, fetched ``batch_size`` at a time.

        For reads too large to hold as a list (reports over all of a provider's
        visits, the public slot feed): a cursor, never the whole result in memory
        on a server store. ``fields``: only these top-level fields (and ``_id``)
        are returned. Writes made while iterating may or may not be seen.
        """

    async def update_one(
        self,
        coll: str,
        filter: Filter,
        update: Mapping[str, Any],
        *,
        events: Sequence[Document] = (),
        upsert: bool = False,
        fields: Sequence[str] | None = None,
        shared: bool = False,
    ) -> Document | None:
        """Atomically update the first match and return it *after* the update.

        Returns ``None`` when nothing matched and ``upsert`` is false: the
        condition in ``filter`` is the concurrency guard (a booking is
        ``{"_id": slot, "status": "free"}``). Raises ``DuplicateKey``.
        ``fields`` (top-level names) returns only those and ``_id``, as ``get``
        does; ``fields=()`` when only "did it match?" matters (the copy of a
        whole document was most of a guarded write's cost on the embedded store).
        ``shared``: as ``get``'s (the caller changes nothing in what it gets back).
        """

    async def update_many(self, coll: str, filter: Filter, update: Mapping[str, Any]) -> int: ...

    async def delete_one(self, coll: str, filter: Filter) -> bool: ...

    async def delete_many(self, coll: str, filter: Filter) -> int: ...

    async def pending_events(self, limit: int = 500) -> list[OutboxItem]:
        """Events still in outboxes, oldest document first (by insertion)."""

    async def clear_events(self, items: Sequence[OutboxItem]) -> None:
        """Remove published events (by their ``id``) from their documents' outboxes."""


# --------------------------------------------------------------------------- bus


@dataclass(frozen=True)
class Envelope:
    """One message on the bus: a command or a domain event.

    ``id`` is the deduplication key: a consumer that sees an ``id`` twice
    applies it once. ``tenant`` is the provider (None for patient-wide work);
    it picks the command partition so one provider's changes keep their order.
    """

    id: str
    type: str
    body: Document
    tenant: str | None = None
    correlation_id: str = ""
    attempt: int = 0
    reply_to: str | None = None
    created_at: str = ""
    headers: Mapping[str, Any] = field(default_factory=dict)


MessageHandler = Callable[[Envelope], Awaitable[Document | None]]


class Retry(Exception):
    """Raised by a handler: try this message again later (through the retry tiers)."""

    def __init__(self, reason: str = "", delay: float | None = None) -> None:
        super().__init__(reason)
        self.delay = delay


class Reject(Exception):
    """Raised by a handler: this message can never succeed; dead-letter it now."""


class RequestTimeout(Exception):
    """No reply to a request within its timeout."""


class ReplyLost(RequestTimeout):
    """The reply to a request can no longer arrive (the connection to the broker was
    lost with the requester's reply queue): failed at once instead of waiting out the
    timeout. The command itself may still be applied, as after a timeout."""


class MessageBus(Protocol):
    """Commands in, events out; at least once, with retry tiers and dead letters.

    Topology (the same names on every adapter, see ``gateway.constants``):
    commands go to one of ``command_partitions`` durable queues chosen by a
    hash of the tenant; events go to a topic exchange keyed by event type and
    each consumer group has its own durable queue. A handler that raises
    ``Retry`` or any unexpected exception gets the message again after the
    next retry delay (``Envelope.attempt`` counts); after the last delay, or
    on ``Reject``, the message goes to the dead-letter queue. A handler's
    return value is sent as the reply when the message has ``reply_to``.
    Messages are persistent and publishes confirmed.
    """

    async def start(self) -> None:
        """Connect and declare the topology."""

    async def close(self) -> None: ...

    async def ping(self) -> bool: ...

    async def send(self, msg: Envelope) -> None:
        """Publish a command to its tenant's partition; returns when confirmed."""

    async def request(self, msg: Envelope, timeout: float) -> Document:
        """Send a command and await the handler's reply; ``RequestTimeout`` otherwise
        (``ReplyLost``, a kind of it, as soon as the reply cannot arrive any more)."""

    async def publish(self, msg: Envelope) -> None:
        """Publish a domain event (routing key = ``msg.type``); returns when confirmed."""

    async def publish_batch(self, msgs: Sequence[Envelope]) -> None:
        """Publish events of one type and one tenant, in order, as one broker message.

        Returns when the broker confirmed it (all or none). Consumers never see
        the batch: their handler gets each event as its own ``Envelope``, in
        order, exactly as if they had been published one by one; a handler's
        ``Retry`` or ``Reject`` retries or dead-letters that one event alone.
        A redelivered batch hands every event to the handler again (at least
        once, as for single events: consumers dedupe by ``Envelope.id``).
        ``ValueError`` when the events' types or tenants differ.
        """

    async def consume_commands(self, handler: MessageHandler) -> None:
        """Start consuming every command partition; returns once registered."""

    async def consume_events(
        self, group: str, patterns: Sequence[str], handler: MessageHandler
    ) -> None:
        """Start consuming events matching ``patterns`` (topic syntax) as ``group``."""

    async def defer(self, msg: Envelope, delay: float, group: str) -> None:
        """Publish ``msg`` straight into consumer group ``group``'s queue, due after
        ``delay`` seconds (the smallest retry tier at least that long, as ``Retry``
        picks); returns when confirmed. For a failure seen outside a consumer (an
        in-process first try) that continues through the retry tiers."""

    async def dead_letters(self, limit: int = 100) -> list[Envelope]:
        """Take up to ``limit`` dead-lettered messages (for inspection and replay)."""


# --------------------------------------------------------------------------- clock


class Clock(Protocol):
    """What time it is. In sandbox mode the time can be set and advanced."""

    def now(self) -> datetime:
        """The current instant, timezone-aware (UTC)."""

    async def wait_changed(self, timeout: float) -> None:
        """Return after ``timeout`` seconds, or earlier if the clock was set or advanced."""


# --------------------------------------------------------------------------- patient channels


@dataclass(frozen=True)
class Notice:
    """One message to one patient address on one channel (SMS, e-mail or push).

    ``id`` is the idempotency key (``<event id>:<channel>``); adapters pass it
    on (``Idempotency-Key`` header, e-mail ``Message-ID``) so a receiver that
    deduplicates drops the rare resend. ``to`` is a phone number (digits with
    the country code), an e-mail address or a push address (a pseudonym, never
    the PESEL); ``to`` and ``text`` are personal data: never logged.
    ``subject`` is the e-mail subject or the push title; ``kind`` the template
    (``booked``, ``reminder-1d``, ...); ``data`` small non-personal extras
    (appointment id, reply reference) for push payloads.
    """

    id: str
    to: str = field(repr=False)
    text: str = field(repr=False)
    subject: str = ""
    kind: str = ""
    data: Mapping[str, str] = field(default_factory=dict)


class ChannelError(Exception):
    """A channel could not deliver a notice.

    ``permanent`` (the provider refused the address or the message) is not
    worth retrying; anything else (time-out, 5xx, 429, connection) is.
    """

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.permanent = permanent


class SmsSender(Protocol):
    """Sends an SMS through an SMS gateway (R-NOT-1, R-NOT-2)."""

    async def send(self, notice: Notice) -> None:
        """Deliver ``notice`` to the phone number ``notice.to``; ``ChannelError`` otherwise."""

    async def close(self) -> None: ...


class EmailSender(Protocol):
    """Sends an e-mail (R-NOT-1)."""

    async def send(self, notice: Notice) -> None:
        """Deliver ``notice`` to the address ``notice.to``; ``ChannelError`` otherwise."""

    async def close(self) -> None: ...


class PushSender(Protocol):
    """Sends a push message to the patient's mobile app (mojeIKP-like, R-NOT-1)."""

    async def send(self, notice: Notice) -> None:
        """Deliver ``notice`` to the app account ``notice.to``; ``ChannelError`` otherwise."""

    async def close(self) -> None: ...


# --------------------------------------------------------------------------- eligibility


@dataclass(frozen=True)
class EligibilityVerdict:
    """SIMP's answer for one patient, programme and exam day (R-PAT-3, R-PAT-4).

    ``code`` is the patient channel's problem code when not eligible:
    ``not-eligible`` (sex, age or entitlement) or ``screening-interval`` (too
    soon after the last exam, or another exam of the programme is booked);
    ``next_date`` is the first day the interval allows, when known.
    """

    eligible: bool
    code: str | None = None
    reason: str = ""
    next_date: date | None = None


class Eligibility(Protocol):
    """Screening eligibility (SIMP, with eWUŚ behind it): asked for the day of the exam.

    ``replacing`` names an appointment (``<provider>~<id>``) the new booking
    replaces (a reschedule, R-PAT-9): its exam does not count against the
    new one.
    """

    async def check(
        self, pesel: str, scope: str, exam_day: date, *, replacing: str | None = None
    ) -> EligibilityVerdict:
        """May the patient have this programme's exam on ``exam_day``?"""

    async def booked(
        self,
        pesel: str,
        scope: str,
        exam_day: date,
        appointment_id: str,
        *,
        replacing: str | None = None,
    ) -> bool:
        """Report a booked exam (R-PAT-4); False when another booking of the patient for
        this programme got there first (the caller then refuses the booking)."""

    async def cancelled(self, pesel: str, scope: str, appointment_id: str) -> None:
        """The exam booked as ``appointment_id`` will not take place."""


# --------------------------------------------------------------------------- webhooks


@dataclass(frozen=True)
class WebhookRequest:
    """One POST of a notification to a subscriber's endpoint, to be signed per Standard Webhooks.

    ``msg_id`` is the ``webhook-id``: the same on every try of one event, so a
    receiver can drop duplicates. ``secrets`` are the subscription's ``whsec_``
    secrets in force (two during a rotation's overlap: one signature each).
    ``headers`` are the subscriber's own (``Subscription.channel.header``).
    ``tenant`` and ``subscription`` say whose it is (the sandbox inbox files
    deliveries by provider). Secrets and headers are never logged.
    """

    url: str
    msg_id: str
    body: bytes = field(repr=False)
    secrets: tuple[str, ...] = field(repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    timeout: float = 15.0
    tenant: str = ""
    subscription: str = ""


@dataclass(frozen=True)
class WebhookResult:
    """What one try came to: the HTTP status (None: no answer), how long, and why not."""

    status: int | None
    latency_ms: float
    error: str | None = None
    retry_after: float | None = None  # seconds, from a Retry-After header
    response_excerpt: str = ""  # the start of the response body, for the delivery log

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class WebhookSender(Protocol):
    """Delivers signed webhook notifications (Standard Webhooks) to subscriber endpoints."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def refusal(self, url: str) -> str | None:
        """Why ``url`` may not be an endpoint (scheme, private address...), or None."""

    async def send(self, request: WebhookRequest) -> WebhookResult:
        """POST once; the endpoint's failures are in the result, never raised."""
