"""The embedded message bus: RabbitMQ's semantics in one process.

The same queue names as the RabbitMQ topology (``gateway.constants``): command
partitions chosen by a hash of the tenant, one queue per event consumer group
fed by topic patterns (``*`` one word, ``#`` zero or more), retry tiers, a
dead-letter queue and request/reply. At least once: a message leaves its queue
only when its handler returned, or when its retry or dead-letter copy was
stored; a message in flight when the bus closes goes back to the front of its
queue. The state lives in this object, so ``close()`` then ``start()`` behaves
like a consumer restart against a broker that kept its queues.

Retry delays follow the application's ``Clock``: advancing a sandbox clock
makes waiting retries due at once.
"""

from __future__ import annotations

import asyncio
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


def _copy(env: Envelope) -> Envelope:
    """A detached copy through JSON, as a broker would deliver it (and failing as it would)."""
    return replace(
        env,
        body=orjson.loads(orjson.dumps(env.body)),
        headers=orjson.loads(orjson.dumps(dict(env.headers))),
    )


@dataclass
class _Queue:
    name: str
    items: deque[tuple[int, Envelope]] = field(default_factory=deque)
    unacked: dict[int, Envelope] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, seq: int, env: Envelope) -> None:
        self.items.append((seq, env))
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
        for n in range(partitions):
            self._queue(f"{COMMAND_QUEUE_PREFIX}{n}")
        self._queue(DEAD_QUEUE)
        self._bindings: dict[str, set[str]] = {}  # event queue -> patterns
        self._routes: dict[str, list[str]] = {}  # routing key -> event queues
        # (due, seq, queue, tier name, envelope): the retry tiers' wait queues in one heap
        self._delayed: list[tuple[datetime, int, str, str, Envelope]] = []
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
        self._queues[name].put(next(self._seq), _copy(msg))

    async def publish(self, msg: Envelope) -> None:
        copy = _copy(msg)
        for name in self._route(msg.type):
            self._queues[name].put(next(self._seq), copy)

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
        await self.publish(event_batch.pack(msgs))

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
        heapq.heappush(self._delayed, (due, next(self._seq), name, _tier_name(wait), _copy(msg)))
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

    async def _pump(self, q: _Queue, handler: MessageHandler) -> None:
        """Deliver in queue order with at most ``prefetch`` unacked at a time."""
        slots = asyncio.Semaphore(self._prefetch)
        while True:
            await slots.acquire()
            while not q.items:
                q.ready.clear()
                await q.ready.wait()
            seq, env = q.items.popleft()
            q.unacked[seq] = env
            # The tenant's chain is extended here, in delivery order.
            key = (q.name, env.tenant)
            prev = self._tails.get(key)
            done = asyncio.Event()
            self._tails[key] = done
            self._spawn(self._deliver(q, handler, seq, env, prev, done, slots), self._inflight)

    async def _deliver(
        self,
        q: _Queue,
        handler: MessageHandler,
        seq: int,
        env: Envelope,
        prev: asyncio.Event | None,
        done: asyncio.Event,
        slots: asyncio.Semaphore,
    ) -> None:
        key = (q.name, env.tenant)
        try:
            if prev is not None:
                await prev.wait()
            if not self._running:
                return  # left unacked: requeued by close()
            if await self._process(q, handler, env):
                q.unacked.pop(seq, None)  # ack
        finally:
            done.set()
            if self._tails.get(key) is done:
                del self._tails[key]
            slots.release()

    async def _process(self, q: _Queue, handler: MessageHandler, env: Envelope) -> bool:
        """Handle ``env``; False when the bus closed half way through a batch (not acked:
        the whole batch comes again, and consumers dedupe what they had seen)."""
        if event_batch.is_batch(env):
            # One by one, as if published so: a failure retries its own event only.
            for given, kept in zip(
                event_batch.unpack(_copy(env)), event_batch.unpack(env), strict=True
            ):
                if not self._running:
                    return False
                await self._process_one(q, handler, given, kept)
            return True
        await self._process_one(q, handler, _copy(env), env)
        return True

    async def _process_one(
        self, q: _Queue, handler: MessageHandler, given: Envelope, env: Envelope
    ) -> None:
        """``given``: the handler's copy; ``env``: the stored message (for retry copies)."""
        try:
            result = await handler(given)
        except Retry as exc:
            self._retry(q.name, env, str(exc) or "retry", exc.delay)
        except Reject as exc:
            self._dead(q.name, env, f"rejected: {exc}")
        except Exception as exc:
            log.exception("bus.handler_failed queue=%s id=%s type=%s", q.name, env.id, env.type)
            self._retry(q.name, env, f"{type(exc).__name__}: {exc}")
        else:
            if env.reply_to:
                self._reply(env, result)

    def _retry(self, queue: str, env: Envelope, reason: str, delay: float | None = None) -> None:
        if env.attempt >= len(self._delays):
            self._dead(queue, env, f"retries exhausted: {reason}")
            return
        if delay is None:
            wait = self._delays[env.attempt]
        else:
            wait = next((t for t in self._tiers if t >= delay), self._tiers[-1])
        due = self._clock.now() + timedelta(seconds=wait)
        copy = replace(env, attempt=env.attempt + 1)
        heapq.heappush(self._delayed, (due, next(self._seq), queue, _tier_name(wait), copy))
        self._delayed_changed.set()

    def _dead(self, queue: str, env: Envelope, reason: str) -> None:
        log.warning("bus.dead_letter queue=%s id=%s reason=%s", queue, env.id, reason)
        copy = replace(env, headers={**env.headers, DEAD_REASON: reason, DEAD_QUEUE_HEADER: queue})
        self._queues[DEAD_QUEUE].put(next(self._seq), copy)

    def _reply(self, env: Envelope, result: Document | None) -> None:
        if env.reply_to != self._reply_queue:
            return  # another process's reply queue: gone with it (nothing to route to)
        fut = self._pending.get(env.id)
        if fut is not None and not fut.done():
            fut.set_result(orjson.loads(orjson.dumps(result or {})))

    async def _scheduler(self) -> None:
        """Move due retries back to their queues; wake on a new retry or a clock change."""
        while True:
            self._delayed_changed.clear()
            now = self._clock.now()
            while self._delayed and self._delayed[0][0] <= now:
                _, seq, name, _, env = heapq.heappop(self._delayed)
                self._queue(name).put(seq, env)
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
            out.append(_copy(q.items.popleft()[1]))
        return out

    async def queue_depths(self) -> dict[str, int]:
        """Ready messages per queue, with the retry tiers' waiting messages."""
        depths = {name: len(q.items) for name, q in self._queues.items()}
        for delay in self._tiers:
            depths[f"{RETRY_QUEUE_PREFIX}{_tier_name(delay)}"] = 0
        for *_, tier, _env in self._delayed:
            depths[f"{RETRY_QUEUE_PREFIX}{tier}"] += 1
        return depths
