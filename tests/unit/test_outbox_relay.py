"""The outbox relay publishes in chunks, in order, and clears only what was confirmed;
consecutive events of one type and tenant travel as one message (a batch)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import pytest

from adapters.memory_store import MemoryStore
from gateway.events import event
from gateway.metrics import Metrics
from gateway.ports import Envelope
from gateway.worker import publish_events

NOW = datetime(2027, 1, 11, 8, 0, tzinfo=UTC)


class Bus:
    """Publishes after a pause (so a chunk is in flight together); may fail one event
    (and the batch carrying it)."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.started: list[int] = []
        self.confirmed: list[int] = []
        self.messages: list[list[int]] = []  # the events of each message, as published
        self.fail_on = fail_on

    async def publish(self, msg: Envelope) -> None:
        await self.publish_batch([msg])

    async def publish_batch(self, msgs: Sequence[Envelope]) -> None:
        assert len({(m.type, m.tenant) for m in msgs}) == 1
        ns = [m.body["n"] for m in msgs]
        self.started += ns
        self.messages.append(ns)
        await asyncio.sleep(0.001 * (ns[0] % 3))  # confirms come back out of order
        if self.fail_on in ns:
            raise ConnectionError("broker gone")
        self.confirmed += ns


async def outbox(n: int, kind: Callable[[int], tuple[str, str]] | None = None) -> MemoryStore:
    """``n`` events; ``kind(i)`` is the i-th event's (type, tenant)."""
    store = MemoryStore()
    await store.start({"docs": []})
    for i in range(n):
        etype, tenant = kind(i) if kind else ("thing.created", "prov-1")
        ev = event(etype, {"n": i}, tenant=tenant, correlation_id="c", now=NOW)
        await store.insert("docs", {"_id": f"d{i}"}, events=[ev])
    return store


def published(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("messages_published_total", {"kind": "event"})
    return value or 0.0


async def test_publishes_every_event_in_order_then_clears_them() -> None:
    store, bus, metrics = await outbox(250), Bus(), Metrics()
    items = await store.pending_events(0)
    await publish_events(store, bus, metrics, items, chunk=100, per_message=1)
    assert bus.started == list(range(250))
    assert sorted(bus.confirmed) == list(range(250))
    assert await store.pending_events(0) == []
    assert published(metrics) == 250


async def test_a_failure_clears_only_the_events_before_it() -> None:
    store, bus, metrics = await outbox(250), Bus(fail_on=150), Metrics()
    items = await store.pending_events(0)
    with pytest.raises(ConnectionError):
        await publish_events(store, bus, metrics, items, chunk=100, per_message=1)
    assert bus.started == list(range(200))  # the chunk 100-199 was in flight; 200+ never started
    left = [item.event["body"]["n"] for item in await store.pending_events(0)]
    assert left == list(range(150, 250))  # published again next pass, in order
    assert published(metrics) == 199

    retry = Bus()
    await publish_events(
        store, retry, metrics, await store.pending_events(0), chunk=100, per_message=1
    )
    assert retry.started == list(range(150, 250))
    assert await store.pending_events(0) == []


async def test_consecutive_events_of_one_type_and_tenant_travel_together() -> None:
    def kind(i: int) -> tuple[str, str]:
        # 0-299 slots of prov-1, 300-309 of prov-2, 310-319 appointments of prov-2
        if i < 300:
            return "resource.Slot.created", "prov-1"
        return ("resource.Slot.created" if i < 310 else "resource.Appointment.created"), "prov-2"

    store, bus, metrics = await outbox(320, kind), Bus(), Metrics()
    await publish_events(
        store, bus, metrics, await store.pending_events(0), chunk=100, per_message=120
    )
    assert bus.messages == [
        list(range(0, 120)),
        list(range(120, 240)),
        list(range(240, 300)),
        list(range(300, 310)),
        list(range(310, 320)),
    ]
    assert await store.pending_events(0) == []
    assert published(metrics) == 320


async def test_a_failed_batch_clears_only_the_messages_before_it() -> None:
    store, bus, metrics = await outbox(500), Bus(fail_on=250), Metrics()
    with pytest.raises(ConnectionError):
        await publish_events(
            store, bus, metrics, await store.pending_events(0), chunk=2, per_message=100
        )
    # messages 0-99 and 100-199 confirmed; 200-299 failed; 300-399 was in flight with it
    left = [item.event["body"]["n"] for item in await store.pending_events(0)]
    assert left == list(range(200, 500))
    assert bus.started == list(range(400))
    assert published(metrics) == 300
