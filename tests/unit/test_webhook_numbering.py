"""Webhook events: one per change and subscription, numbered without gaps (issue 6).

On the embedded store and bus with a recording sender: a redelivered event
keeps its number; the provider's own changes make none (R-SCHED-4, R-CAN-3);
concurrent numbering (several workers) gives 1..n; a worker that died between
taking a number and moving the counter leaves no gap.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from adapters.clock import SandboxClock
from adapters.memory_bus import MemoryBus
from adapters.memory_store import MemoryStore
from gateway import constants as c
from gateway.ports import Envelope, WebhookRequest, WebhookResult
from gateway.schema import INDEXES
from gateway.settings import Settings
from gateway.subscriptions import TOPIC_ALL, SubscriptionSpec
from gateway.timeutil import to_store
from gateway.webhooks import Webhooks


class RecordingSender:
    def __init__(self) -> None:
        self.sent: list[WebhookRequest] = []

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def refusal(self, url: str) -> str | None:
        return None

    async def send(self, request: WebhookRequest) -> WebhookResult:
        self.sent.append(request)
        return WebhookResult(200, 1.0)


@pytest.fixture
async def hooks() -> AsyncIterator[tuple[Webhooks, RecordingSender]]:
    clock = SandboxClock()
    store = MemoryStore()
    await store.start(INDEXES)
    settings = Settings(cer_mode="sandbox")
    bus = MemoryBus(clock, partitions=1, retry_delays=settings.bus_retry_delays, prefetch=8)
    await bus.start()
    sender = RecordingSender()
    webhooks = Webhooks(store, bus, clock, sender, settings)
    yield webhooks, sender
    await webhooks.close()
    await bus.close()


def spec(types: list[str] | None = None) -> SubscriptionSpec:
    return SubscriptionSpec(
        topic=TOPIC_ALL,
        types=types or ["Appointment", "Slot"],
        endpoint="sandbox:inbox",
        headers=[],
        content="id-only",
        heartbeat=None,
        timeout=15.0,
        end=None,
        wants_off=False,
        resource={"resourceType": "Subscription", "reason": "t", "criteria": TOPIC_ALL},
    )


def change(n: int, channel: str = "portal", rtype: str = "Appointment") -> Envelope:
    return Envelope(
        id=f"ev{n}",
        type=f"resource.{rtype}.updated",
        body={"type": rtype, "id": f"a{n}", "version": 2, "channel": channel},
        tenant="prov-1",
        created_at=to_store(datetime.now(UTC)),
    )


async def numbers(webhooks: Webhooks, sid: str) -> list[int]:
    docs = await webhooks.store.find(c.WEBHOOK_EVENTS, {"subscription": sid}, sort=[("number", 1)])
    return [d["number"] for d in docs]


async def test_redelivery_keeps_the_number_and_own_changes_make_none(hooks: Any) -> None:
    webhooks, _ = hooks
    sub, _ = await webhooks.create("prov-1", spec())
    only_slots, _ = await webhooks.create("prov-1", spec(["Slot"]))
    other_tenant, _ = await webhooks.create("prov-2", spec())
    await webhooks.on_resource_event(change(1))
    await webhooks.on_resource_event(change(1))  # the broker redelivers it
    await webhooks.on_resource_event(change(2, channel="provider"))  # the provider's own
    await webhooks.on_resource_event(change(3, channel="waiting-room"))
    assert await numbers(webhooks, sub["_id"]) == [1, 2]
    assert await numbers(webhooks, only_slots["_id"]) == []
    assert await numbers(webhooks, other_tenant["_id"]) == []
    doc = await webhooks.store.get(c.WEBHOOK_COUNTERS, sub["_id"])
    assert doc["events_count"] == 2


async def test_concurrent_numbering_is_gap_free(hooks: Any) -> None:
    webhooks, _ = hooks
    sub, _ = await webhooks.create("prov-1", spec())
    # Several workers at once (and each event twice): 1..40, once each.
    events = [change(n) for n in range(40)]
    await asyncio.gather(*(webhooks.on_resource_event(e) for e in events + events[::-1]))
    assert await numbers(webhooks, sub["_id"]) == list(range(1, 41))


async def test_a_worker_that_died_before_moving_the_counter_leaves_no_gap(hooks: Any) -> None:
    webhooks, _ = hooks
    store = webhooks.store
    sub, _ = await webhooks.create("prov-1", spec())
    await webhooks.on_resource_event(change(1))
    # A worker inserted event "dead" as number 2 and died before moving the counter.
    dead = change(99)
    await store.insert(
        c.WEBHOOK_EVENTS,
        {
            "_id": f"{sub['_id']}:{dead.id}",
            "tenant": "prov-1",
            "subscription": sub["_id"],
            "event_id": dead.id,
            "number": 2,
            "status": "pending",
            "round": 0,
            "attempts": 0,
            "at": to_store(datetime.now(UTC)),
        },
    )
    await webhooks.on_resource_event(change(2))  # finds 2 taken: moves the counter, takes 3
    await webhooks.on_resource_event(dead)  # the dead worker's event, redelivered: still 2
    docs = await store.find(c.WEBHOOK_EVENTS, {"subscription": sub["_id"]}, sort=[("number", 1)])
    assert [(d["event_id"], d["number"]) for d in docs] == [("ev1", 1), ("ev99", 2), ("ev2", 3)]
    counter = await store.get(c.WEBHOOK_COUNTERS, sub["_id"])
    assert counter["events_count"] == 3


async def test_first_try_is_sent_with_the_number_as_webhook_id(hooks: Any) -> None:
    webhooks, sender = hooks
    await webhooks.start()
    sub, _ = await webhooks.create("prov-1", spec())
    await webhooks.on_resource_event(change(1))
    for _ in range(100):
        if len(sender.sent) >= 2:
            break
        await asyncio.sleep(0.01)
    assert [r.msg_id for r in sender.sent][1:] == [f"{sub['_id']}-1"]
    ev = await webhooks.store.get(c.WEBHOOK_EVENTS, f"{sub['_id']}:ev1")
    assert ev["status"] == "delivered" and ev["attempts"] == 1


class HeldSender(RecordingSender):
    """Answers handshakes at once and event tries when ``gate`` opens."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def send(self, request: WebhookRequest) -> WebhookResult:
        self.sent.append(request)
        if not request.msg_id.startswith("hs-"):
            await self.gate.wait()
        return WebhookResult(200, 1.0)


async def test_a_long_lane_is_renewed_so_the_sweeper_leaves_it_alone() -> None:
    """First tries waiting in a lane longer than the grace are not taken for lost: the
    worker renews their copy time, the sweeper sends nothing, each event goes once."""
    clock = SandboxClock()
    store = MemoryStore()
    await store.start(INDEXES)
    settings = Settings(cer_mode="sandbox", webhook_sweep_grace_seconds=0.2)
    bus = MemoryBus(clock, partitions=1, retry_delays=settings.bus_retry_delays, prefetch=8)
    await bus.start()
    sender = HeldSender()
    webhooks = Webhooks(store, bus, clock, sender, settings)
    try:
        await webhooks.start()
        sub, _ = await webhooks.create("prov-1", spec())
        for n in (1, 2, 3):
            await webhooks.on_resource_event(change(n))
        await asyncio.sleep(0.5)  # the first try hangs; 2 and 3 wait: more than the grace
        first = await store.find(c.WEBHOOK_EVENTS, {"subscription": sub["_id"]})
        late = to_store(datetime.now(UTC) - timedelta(seconds=0.2))
        assert all(ev["status"] == "pending" and ev["copy_at"] > late for ev in first)
        await webhooks.sweeper.sweep_once()
        assert (await bus.queue_depths())["cer.events.webhook-deliveries"] == 0
        sender.gate.set()
        for _ in range(200):
            if len(sender.sent) >= 4:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        assert [r.msg_id for r in sender.sent[1:]] == [f"{sub['_id']}-{n}" for n in (1, 2, 3)]
        done = await store.find(c.WEBHOOK_EVENTS, {"subscription": sub["_id"]})
        assert {ev["status"] for ev in done} == {"delivered"}
    finally:
        await webhooks.close()
        await bus.close()
