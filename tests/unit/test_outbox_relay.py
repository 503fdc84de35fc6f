"""The outbox relay publishes in chunks, in order, and clears only what was confirmed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from adapters.memory_store import MemoryStore
from gateway.events import event
from gateway.metrics import Metrics
from gateway.ports import Envelope
from gateway.worker import publish_events

NOW = datetime(2027, 1, 11, 8, 0, tzinfo=UTC)


class Bus:
    """Publishes after a pause (so a chunk is in flight together); may fail one event."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.started: list[int] = []
        self.confirmed: list[int] = []
        self.fail_on = fail_on

    async def publish(self, msg: Envelope) -> None:
        n = msg.body["n"]
        self.started.append(n)
        await asyncio.sleep(0.001 * (n % 3))  # confirms come back out of order
        if n == self.fail_on:
            raise ConnectionError("broker gone")
        self.confirmed.append(n)


async def outbox(n: int) -> MemoryStore:
    store = MemoryStore()
    await store.start({"docs": []})
    for i in range(n):
        ev = event("thing.created", {"n": i}, tenant="prov-1", correlation_id="c", now=NOW)
        await store.insert("docs", {"_id": f"d{i}"}, events=[ev])
    return store


def published(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("messages_published_total", {"kind": "event"})
    return value or 0.0


async def test_publishes_every_event_in_order_then_clears_them() -> None:
    store, bus, metrics = await outbox(250), Bus(), Metrics()
    items = await store.pending_events(0)
    await publish_events(store, bus, metrics, items, chunk=100)
    assert bus.started == list(range(250))
    assert sorted(bus.confirmed) == list(range(250))
    assert await store.pending_events(0) == []
    assert published(metrics) == 250


async def test_a_failure_clears_only_the_events_before_it() -> None:
    store, bus, metrics = await outbox(250), Bus(fail_on=150), Metrics()
    items = await store.pending_events(0)
    with pytest.raises(ConnectionError):
        await publish_events(store, bus, metrics, items, chunk=100)
    assert bus.started == list(range(200))  # the chunk 100-199 was in flight; 200+ never started
    left = [item.event["body"]["n"] for item in await store.pending_events(0)]
    assert left == list(range(150, 250))  # published again next pass, in order
    assert published(metrics) == 199

    retry = Bus()
    await publish_events(store, retry, metrics, await store.pending_events(0), chunk=100)
    assert retry.started == list(range(150, 250))
    assert await store.pending_events(0) == []
