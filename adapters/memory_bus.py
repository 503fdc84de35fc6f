"""The embedded message bus: RabbitMQ's semantics in one process.

The same queue names as the RabbitMQ topology (``gateway.constants``): command
partitions chosen by a hash of the tenant, one queue per event consumer group
fed by topic patterns (``*`` one word, ``#`` zero or more), retry tiers, a
dead-letter queue and request/reply. At least once: a message leaves its queue
only when its handler returned, or when its retry or dead-letter copy was
stored; a message in flight when the bus closes goes back to the front of its
queue. The state lives in this object, so ``close()`` then ``start()`` behaves
like a consumer restart against a broker that kept its queues.

Copies as a broker makes them: a message is serialised to JSON once, when it is
sent (a body that is not JSON fails there; the sender's later changes do not
leak in), and decoded afresh for each delivery (a handler that changes its
envelope changes no retry, redelivery, dead letter or other group's copy). An
event batch is one JSON array, decoded once per delivery to a group. On an
Intel Xeon (2 cores, load average 2) this bus costs 3.5 us of CPU per event of
a batch delivered to a no-op handler (9.7 us when each message was copied
through JSON twice) and 14.5 us per command (20 us).

Retry delays follow the application's ``Clock``: advancing a sandbox clock
makes waiting retries due at once.

Commands first: every consumer shares one event loop, so while commands wait or
run (a booking, a write, the waiting room's assignments) each event group
delivers one event at a time instead of up to ``prefetch``; with no command
about, events go at full width again. The follow-ups of a booking (the patient's
message, the entry's FHIR face, webhooks) trail it instead of competing with the
next bookings, and are never starved: one event per group always runs. (On
RabbitMQ each consumer has the broker's own flow control; nothing to do there.)
``python -m bench.waiting_room`` (Intel Xeon, 2 cores, load average 1.6-2.5, one
pair of runs): the nightly unlock's 10,000 assignments at 1,200/s instead of 1,105/s,
and the CPU they caused in all 1,299 us an assignment instead of 1,483 us.
"""

from __future__ import annotations

import asyncio
import copy as copy_module
import heapq
import itertools
import logging
import os
import uuid
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import orjson

from adapters import event_batch
from gateway.constants import (
    COMMAND_QUEUE_PREFIX,
    DEAD_QUEUE,
    EVENT_QUEUE_PREFIX,
    REPLY_QUEUE_PREFIX,
    RETRY_QUEUE_PREFIX,
)
from gateway.ports import (
    Clock,
    Document,
    Envelope,
    MessageHandler,
    Reject,
    RequestTimeout,
    Retry,
)

log = logging.getLogger(__name__)

# Keys added to ``Envelope.headers`` of a dead letter (the same on the RabbitMQ bus).
DEAD_REASON = "x-dead-reason"
DEAD_QUEUE_HEADER = "x-dead-queue"


def partition_of(tenant: str | None, partitions: int) -> int:
    """The command partition of a tenant (the same hash as the RabbitMQ bus)."""
    if tenant is None:
        return 0
    return zlib.crc32(tenant.encode()) % partitions


def _tier_name(delay: float) -> str:
    return str(round(delay * 1000))


def topic_matches(pattern: str, key: str) -> bool:
    """RabbitMQ topic matching: words split on ``.``; ``*`` one word, ``#`` zero or more."""
    return _match(pattern.split("."), key.split("."))


def _match(pat: list[str], words: list[str]) -> bool:
    if not pat:
        return not words
    head, rest = pat[0], pat[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head in ("*", words[0])) and _match(rest, words[1:])


class _Message:
    """A message as a queue holds it: the envelope's fields, its body and headers as JSON.

    Serialised once when sent (so the sender's later changes do not leak in, and a
    body that is not JSON fails at the sender, as on RabbitMQ) and decoded afresh for
    each delivery (a handler that changes its envelope cannot change what a retry, a
    redelivery or another consumer group gets). Never changed once made, so every
    queue a published event is routed to shares one. A batch (``publish_batch``) is
    one message whose ``body`` is the JSON list ``[[id, body, correlation_id,
    created_at, headers], ...]`` of its events, all of ``type`` and ``tenant``.
    """

    __slots__ = (
        "attempt",
        "batch",
        "body",
        "correlation_id",
        "created_at",
        "headers",
        "id",
        "reply_to",
        "tenant",
        "type",
    )

    def __init__(
        self,
        env: Envelope,
        body: bytes,
        headers: bytes,
        *,
        batch: bool = False,
    ) -> None:
        self.id = env.id
        self.type = env.type
        self.tenant = env.tenant
        self.correlation_id = env.correlation_id
        self.attempt = env.attempt
        self.reply_to = env.reply_to
        self.created_at = env.created_at
        self.body = body
        self.headers = headers  # b"" for none
        self.batch = batch

    @classmethod
    def of(cls, env: Envelope) -> _Message:
        return cls(
            env, orjson.dumps(env.body), orjson.dumps(dict(env.headers)) if env.headers else b""
        )

    @classmethod
    def of_batch(cls, msgs: Sequence[Envelope]) -> _Message:
        event_batch.check(msgs)
        body = orjson.dumps(
            [
                (m.id, m.body, m.correlation_id, m.created_at, dict(m.headers) if m.headers else {})
                for m in msgs
            ]
        )
        return cls(msgs[0], body, b"", batch=True)

    def with_attempt(self, attempt: int) -> _Message:
        copy = copy_module.copy(self)
        copy.attempt = attempt
        return copy

    def with_headers(self, headers: bytes) -> _Message:
        copy = copy_module.copy(self)
        copy.headers = headers
        return copy

    def envelope(self) -> Envelope:
        """A fresh copy of the message (not of a batch)."""
        return Envelope(
            self.id,
            self.type,
            orjson.loads(self.body),
            self.tenant,
            self.correlation_id,
            self.attempt,
            self.reply_to,
            self.created_at,
            orjson.loads(self.headers) if self.headers else {},
        )

    def events(self) -> list[Envelope]:
        """Fresh copies of a batch's events, as their publisher made them."""
        type_, tenant = self.type, self.tenant
        return [
            Envelope(id_, type_, body, tenant, correlation_id, 0, None, created_at, headers)
            for id_, body, correlation_id, created_at, headers in orjson.loads(self.body)
        ]

    def event(self, index: int) -> _Message:
        """Event ``index`` of a batch as a message of its own (for its retry or dead letter)."""
        id_, body, correlation_id, created_at, headers = orjson.loads(self.body)[index]
        env = Envelope(id_, self.type, body, self.tenant, correlation_id, 0, None, created_at)
        return _Message(env, orjson.dumps(body), orjson.dumps(headers) if headers else b"")


@dataclass
class _Queue:
    name: str
    items: deque[tuple[int, _Message]] = field(default_factory=deque)
    unacked: dict[int, _Message] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, seq: int, msg: _Message) -> None:
        self.items.append((seq, msg))
        self.ready.set()

    def requeue_unacked(self) -> None:
        """Unacked messages go back to the head of the queue, in their original order."""
        for seq in sorted(self.unacked, reverse=True):
            self.items.appendleft((seq, self.unacked[seq]))
        self.unacked.clear()
        if self.items:
            self.ready.set()


class MemoryBus:
    """``MessageBus`` in process. See the module docstring."""

    def __init__(
        self,
        clock: Clock,
        *,
        partitions: int,
        retry_delays: Sequence[float],
        prefetch: int,
        instance_id: str | None = None,
        close_timeout: float = 10.0,
    ) -> None:
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        self._clock = clock
        self._partitions = partitions
        self._delays = [float(d) for d in retry_delays]
        self._tiers = sorted(set(self._delays))
        self._prefetch = max(1, prefetch)
        self._close_timeout = close_timeout
        self.instance_id = instance_id or f"memory.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self._reply_queue = f"{REPLY_QUEUE_PREFIX}{self.instance_id}"
        self._seq = itertools.count()
        # Broker state: survives close() / start().
        self._queues: dict[str, _Queue] = {}
        self._commands = [self._queue(f"{COMMAND_QUEUE_PREFIX}{n}") for n in range(partitions)]
        self._queue(DEAD_QUEUE)
        self._bindings: dict[str, set[str]] = {}  # event queue -> patterns
        self._routes: dict[str, list[str]] = {}  # routing key -> event queues
        # (due, seq, queue, tier name, envelope): the retry tiers' wait queues in one heap
        self._delayed: list[tuple[datetime, int, str, str, _Message]] = []
        # Client state: reset by start().
        self._running = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._inflight: set[asyncio.Task[Any]] = set()
        self._tails: dict[tuple[str, str | None], asyncio.Event] = {}
        self._pending: dict[str, asyncio.Future[Document]] = {}
        self._delayed_changed = asyncio.Event()

    def _queue(self, name: str) -> _Queue:
        q = self._queues.get(name)
        if q is None:
            q = self._queues[name] = _Queue(name)
        return q

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._tails = {}
        self._pending = {}
        self._delayed_changed = asyncio.Event()
        for q in self._queues.values():
            q.ready = asyncio.Event()  # bound to the running loop
            if q.items:
                q.ready.set()
        self._spawn(self._scheduler(), self._tasks)

    async def close(self) -> None:
        """Stop consuming, let running handlers finish (``close_timeout``), requeue the rest."""
        if not self._running:
            return
        self._running = False
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=self._close_timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        for q in self._queues.values():
            q.requeue_unacked()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(RequestTimeout("bus closed"))

    async def ping(self) -> bool:
        return self._running

    def _spawn(self, coro: Any, group: set[asyncio.Task[Any]]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        group.add(task)
        task.add_done_callback(group.discard)
        return task

    # ------------------------------------------------------------------ publishing

    async def send(self, msg: Envelope) -> None:
        name = f"{COMMAND_QUEUE_PREFIX}{partition_of(msg.tenant, self._partitions)}"
        self._queues[name].put(next(self._seq), _Message.of(msg))

    async def publish(self, msg: Envelope) -> None:
        self._publish(_Message.of(msg))

    def _publish(self, msg: _Message) -> None:
        for name in self._route(msg.type):
            self._queues[name].put(next(self._seq), msg)

    def _route(self, key: str) -> list[str]:
        """The event queues bound to ``key`` (remembered until the bindings change)."""
        names = self._routes.get(key)
        if names is None:
            names = self._routes[key] = [
                name
                for name, patterns in self._bindings.items()
                if any(topic_matches(p, key) for p in patterns)
            ]
        return names

    async def publish_batch(self, msgs: Sequence[Envelope]) -> None:
        self._publish(_Message.of_batch(msgs))

    async def request(self, msg: Envelope, timeout: float) -> Document:
        fut: asyncio.Future[Document] = asyncio.get_running_loop().create_future()
        self._pending[msg.id] = fut
        try:
            await self.send(replace(msg, reply_to=self._reply_queue))
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise RequestTimeout(f"no reply to {msg.type} {msg.id} within {timeout}s") from None
        finally:
            self._pending.pop(msg.id, None)

    async def defer(self, msg: Envelope, delay: float, group: str) -> None:
        name = f"{EVENT_QUEUE_PREFIX}{group}"
        self._queue(name)
        wait = next((t for t in self._tiers if t >= delay), self._tiers[-1])
        due = self._clock.now() + timedelta(seconds=wait)
        heapq.heappush(
            self._delayed, (due, next(self._seq), name, _tier_name(wait), _Message.of(msg))
        )
        self._delayed_changed.set()

    # ------------------------------------------------------------------ consuming

    async def consume_commands(self, handler: MessageHandler) -> None:
        for n in range(self._partitions):
            self._consume(f"{COMMAND_QUEUE_PREFIX}{n}", handler)

    async def consume_events(
        self, group: str, patterns: Sequence[str], handler: MessageHandler
    ) -> None:
        name = f"{EVENT_QUEUE_PREFIX}{group}"
        self._queue(name)
        self._bindings.setdefault(name, set()).update(patterns)
        self._routes.clear()
        self._consume(name, handler)

    def _consume(self, name: str, handler: MessageHandler) -> None:
        if not self._running:
            raise RuntimeError("bus not started")
        self._spawn(self._pump(self._queues[name], handler), self._tasks)

    def commands_busy(self) -> bool:
        """Whether a command waits in a partition or is being handled."""
        return any(q.items or q.unacked for q in self._commands)

    async def _pump(self, q: _Queue, handler: MessageHandler) -> None:
        """Deliver in queue order with at most ``prefetch`` unacked at a time; an event
        queue one at a time while commands are busy (commands first: the module's
        docstring)."""
        slots = asyncio.Semaphore(self._prefetch)
        lane = asyncio.Semaphore(1) if q.name.startswith(EVENT_QUEUE_PREFIX) else None
        while True:
            await slots.acquire()
            single: asyncio.Semaphore | None = None
            while True:
                while not q.items:
                    q.ready.clear()
                    await q.ready.wait()
                if lane is None or single is not None or not self.commands_busy():
                    break
                await lane.acquire()
                single = lane  # then look again: the queue may have changed meanwhile
            seq, msg = q.items.popleft()
            q.unacked[seq] = msg
            # The tenant's chain is extended here, in delivery order.
            key = (q.name, msg.tenant)
            prev = self._tails.get(key)
            done = asyncio.Event()
            self._tails[key] = done
            self._spawn(
                self._deliver(q, handler, seq, msg, prev, done, slots, single), self._inflight
            )

    async def _deliver(
        self,
        q: _Queue,
        handler: MessageHandler,
        seq: int,
        msg: _Message,
        prev: asyncio.Event | None,
        done: asyncio.Event,
        slots: asyncio.Semaphore,
        single: asyncio.Semaphore | None = None,
    ) -> None:
        key = (q.name, msg.tenant)
        try:
            if prev is not None:
                await prev.wait()
            if not self._running:
                return  # left unacked: requeued by close()
            if await self._process(q, handler, msg):
                q.unacked.pop(seq, None)  # ack
        finally:
            done.set()
            if self._tails.get(key) is done:
                del self._tails[key]
            slots.release()
            if single is not None:
                single.release()

    async def _process(self, q: _Queue, handler: MessageHandler, msg: _Message) -> bool:
        """Handle ``msg``; False when the bus closed half way through a batch (not acked:
        the whole batch comes again, and consumers dedupe what they had seen)."""
        if msg.batch:
            # One by one, as if published so: a failure retries its own event only.
            for index, event in enumerate(msg.events()):
                if not self._running:
                    return False
                try:
                    await handler(event)
                except Exception as exc:
                    self._failed(q.name, event, msg.event(index), exc)
            return True
        given = msg.envelope()
        try:
            result = await handler(given)
        except Exception as exc:
            self._failed(q.name, given, msg, exc)
        else:
            if msg.reply_to:
                self._reply(msg, result)
        return True

    def _failed(self, queue: str, given: Envelope, msg: _Message, exc: Exception) -> None:
        """The handler raised ``exc`` on ``given``, its copy of ``msg``."""
        if isinstance(exc, Retry):
            self._retry(queue, msg, str(exc) or "retry", exc.delay)
        elif isinstance(exc, Reject):
            self._dead(queue, msg, f"rejected: {exc}")
        else:
            log.error(
                "bus.handler_failed queue=%s id=%s type=%s",
                queue,
                given.id,
                given.type,
                exc_info=exc,
            )
            self._retry(queue, msg, f"{type(exc).__name__}: {exc}")

    def _retry(self, queue: str, msg: _Message, reason: str, delay: float | None = None) -> None:
        if msg.attempt >= len(self._delays):
            self._dead(queue, msg, f"retries exhausted: {reason}")
            return
        if delay is None:
            wait = self._delays[msg.attempt]
        else:
            wait = next((t for t in self._tiers if t >= delay), self._tiers[-1])
        due = self._clock.now() + timedelta(seconds=wait)
        copy = msg.with_attempt(msg.attempt + 1)
        heapq.heappush(self._delayed, (due, next(self._seq), queue, _tier_name(wait), copy))
        self._delayed_changed.set()

    def _dead(self, queue: str, msg: _Message, reason: str) -> None:
        log.warning("bus.dead_letter queue=%s id=%s reason=%s", queue, msg.id, reason)
        headers = orjson.loads(msg.headers) if msg.headers else {}
        headers.update({DEAD_REASON: reason, DEAD_QUEUE_HEADER: queue})
        self._queues[DEAD_QUEUE].put(next(self._seq), msg.with_headers(orjson.dumps(headers)))

    def _reply(self, msg: _Message, result: Document | None) -> None:
        if msg.reply_to != self._reply_queue:
            return  # another process's reply queue: gone with it (nothing to route to)
        fut = self._pending.get(msg.id)
        if fut is not None and not fut.done():
            fut.set_result(orjson.loads(orjson.dumps(result or {})))

    async def _scheduler(self) -> None:
        """Move due retries back to their queues; wake on a new retry or a clock change."""
        while True:
            self._delayed_changed.clear()
            now = self._clock.now()
            while self._delayed and self._delayed[0][0] <= now:
                _, seq, name, _, msg = heapq.heappop(self._delayed)
                self._queue(name).put(seq, msg)
            timeout = (
                max((self._delayed[0][0] - now).total_seconds(), 0.001) if self._delayed else 3600.0
            )
            clock_changed = asyncio.ensure_future(self._clock.wait_changed(timeout))
            retry_added = asyncio.ensure_future(self._delayed_changed.wait())
            try:
                await asyncio.wait(
                    {clock_changed, retry_added}, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                # Cancel without awaiting: awaiting here could swallow a cancellation
                # of this task that arrives meanwhile (and hang close()).
                for waiter in (clock_changed, retry_added):
                    waiter.cancel()

    # ------------------------------------------------------------------ inspection

    async def dead_letters(self, limit: int = 100) -> list[Envelope]:
        q = self._queues[DEAD_QUEUE]
        out: list[Envelope] = []
        while q.items and len(out) < limit:
            out.append(q.items.popleft()[1].envelope())
        return out

    async def queue_depths(self) -> dict[str, int]:
        """Ready messages per queue, with the retry tiers' waiting messages."""
        depths = {name: len(q.items) for name, q in self._queues.items()}
        for delay in self._tiers:
            depths[f"{RETRY_QUEUE_PREFIX}{_tier_name(delay)}"] = 0
        for *_, tier, _env in self._delayed:
            depths[f"{RETRY_QUEUE_PREFIX}{tier}"] += 1
        return depths
