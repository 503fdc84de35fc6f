"""The worker: applies commands from the bus, relays outbox events to the bus.

Commands are deduplicated by message id (``processed_messages`` keeps each
applied id with its reply), so a redelivered command answers the same and
changes nothing twice. The outbox relay publishes events written with state
changes and only then clears them: at least once, never lost while the broker
is down (they wait in the store).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import structlog

from gateway import constants as c
from gateway.errors import FhirError
from gateway.events import event_envelope
from gateway.handlers import COMMAND_HANDLERS, invoke
from gateway.logging import bind_correlation
from gateway.metrics import Metrics, Outcome
from gateway.ports import Clock, DuplicateKey, Envelope, MessageBus, OutboxItem, Reject, Store
from gateway.timeutil import to_store

log = structlog.get_logger("gateway.worker")


class CommandWorker:
    """Consumes command partitions and applies each command once."""

    def __init__(
        self,
        store: Store,
        bus: MessageBus,
        clock: Clock,
        metrics: Metrics,
        outbox_signal: asyncio.Event,
        retry_tiers: int = 0,
        dependencies: Mapping[str, Any] | None = None,
    ) -> None:
        """``dependencies``: ports handlers may name besides ``store`` and ``clock``."""
        self.retry_tiers = retry_tiers
        self.deps: dict[str, Any] = {"store": store, "clock": clock, **(dependencies or {})}
        self.store = store
        self.bus = bus
        self.clock = clock
        self.metrics = metrics
        self.outbox_signal = outbox_signal

    async def start(self) -> None:
        await self.bus.consume_commands(self.handle)

    async def handle(self, msg: Envelope) -> dict[str, Any] | None:
        try:
            return await self._apply(msg)
        except Exception as exc:
            # The bus retries it through the delay tiers, or dead-letters it.
            last = isinstance(exc, Reject) or msg.attempt >= self.retry_tiers
            outcome: Outcome = "dead_lettered" if last else "retried"
            self.metrics.consumed("command", outcome)
            log.warning("command.failed", error=repr(exc), attempt=msg.attempt, outcome=outcome)
            if last and not isinstance(exc, Reject):
                # The bus has more tiers than commands retry (webhook deliveries use
                # them, see Settings.bus_retry_delays): a command stops here.
                raise Reject(f"retries exhausted: {exc!r}") from exc
            raise

    async def _apply(self, msg: Envelope) -> dict[str, Any] | None:
        bind_correlation(msg.correlation_id or msg.id, message_id=msg.id, command=msg.type)
        done = await self.store.get(c.PROCESSED, msg.id)
        if done is not None:
            self.metrics.consumed("command", "duplicate")
            log.info("command.duplicate")
            reply: dict[str, Any] | None = done.get("reply")
            return reply
        handler = COMMAND_HANDLERS.get(msg.type)
        if handler is None:
            raise Reject(f"unknown command type {msg.type!r}")
        try:
            reply = await invoke(handler, msg, self.deps)
        except FhirError as err:
            reply = err.to_reply()
        with contextlib.suppress(DuplicateKey):
            await self.store.insert(
                c.PROCESSED,
                {"_id": msg.id, "type": msg.type, "at": to_store(self.clock.now()), "reply": reply},
            )
        self.outbox_signal.set()
        self.metrics.consumed("command", "ok")
        error = (reply or {}).get("error")
        log.info("command.applied", outcome=f"error {error['status']}" if error else "ok")
        return reply


async def relay_outbox(
    store: Store,
    bus: MessageBus,
    metrics: Metrics,
    signal: asyncio.Event,
    poll_seconds: float,
    batch: int = 500,
    chunk: int = 100,
) -> None:
    """Publish outbox events forever; cleared only after the broker confirmed them."""
    while True:
        try:
            items = await store.pending_events(batch)
            metrics.outbox_pending.set(len(items))
            if items:
                await publish_events(store, bus, metrics, items, chunk)
                if len(items) == batch:
                    continue
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # broker or store down: the events wait in the store
            log.warning("outbox.relay_failed", error=repr(exc))
            await asyncio.sleep(min(poll_seconds * 4, 2.0))
        signal.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(signal.wait(), poll_seconds)


async def publish_events(
    store: Store,
    bus: MessageBus,
    metrics: Metrics,
    items: Sequence[OutboxItem],
    chunk: int,
    per_message: int = 500,
) -> None:
    """Publish ``items`` in order, ``chunk`` messages in flight at a time; clear them.

    Consecutive events of one type and tenant (a transaction's hundreds of
    ``resource.Slot.created``) travel as one message of up to ``per_message``
    events (``MessageBus.publish_batch``): one publish and one confirm each,
    instead of one per event; consumers still get them one by one, in order.
    One publish at a time waits a broker round trip per message; in flight
    together the confirms overlap. Publishes start in order and RabbitMQ keeps
    one channel's order. On a failure only the events of the messages before
    the first failed one are cleared: the rest are published again (at least
    once, and in order) on the next pass.
    """
    runs = list(_runs(items, per_message))
    for start in range(0, len(runs), chunk):
        part = runs[start : start + chunk]
        results = await asyncio.gather(
            *(_publish_run(bus, run) for run in part), return_exceptions=True
        )
        failed = next((i for i, r in enumerate(results) if isinstance(r, BaseException)), None)
        for run, r in zip(part, results, strict=True):
            if not isinstance(r, BaseException):
                metrics.published("event", len(run))
        if failed is not None:
            done = [item for run in runs[: start + failed] for item in run]
            if done:
                await store.clear_events(done)
            error = results[failed]
            assert isinstance(error, BaseException)
            if isinstance(error, Exception):
                raise error
            raise RuntimeError(f"publishing an event was interrupted: {error!r}") from error
    await store.clear_events(items)


def _runs(items: Sequence[OutboxItem], per_message: int) -> Iterator[list[OutboxItem]]:
    """``items`` cut into runs of one event type and tenant, ``per_message`` at most."""
    run: list[OutboxItem] = []
    key: tuple[Any, Any] | None = None
    for item in items:
        k = (item.event.get("type"), item.event.get("tenant"))
        if run and (k != key or len(run) >= per_message):
            yield run
            run = []
        key = k
        run.append(item)
    if run:
        yield run


async def _publish_run(bus: MessageBus, run: list[OutboxItem]) -> None:
    if len(run) == 1:
        await bus.publish(event_envelope(run[0].event))
    else:
        await bus.publish_batch([event_envelope(item.event) for item in run])
