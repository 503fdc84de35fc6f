"""The MessageBus contract, run on the embedded bus and on RabbitMQ."""

from __future__ import annotations

import asyncio
import copy
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import aio_pika
import pytest

from adapters import memory_bus, rabbit_bus
from adapters.memory_bus import DEAD_QUEUE_HEADER, DEAD_REASON, topic_matches
from gateway.constants import COMMAND_QUEUE_PREFIX, COMMANDS_EXCHANGE
from gateway.ports import Envelope, Reject, ReplyLost, RequestTimeout, Retry
from tests.contract.bus_fixtures import AMQP_URL, RETRY_DELAYS, BusHarness

_n = 0


def env(type_: str = "test.cmd", tenant: str | None = "prov-1", **kw: Any) -> Envelope:
    global _n
    _n += 1
    return Envelope(
        id=kw.pop("id", f"msg-{_n}"),
        type=type_,
        body=kw.pop("body", {"n": _n}),
        tenant=tenant,
        **kw,
    )


async def until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def take_dead(bus: Any, count: int, within: float = 10.0) -> list[Envelope]:
    out: list[Envelope] = []
    deadline = time.monotonic() + within
    while len(out) < count:
        out += await bus.dead_letters()
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(out)} dead letters, expected {count}")
        await asyncio.sleep(0.02)
    return out


# --------------------------------------------------------------------------- plain helpers


def test_topic_patterns_like_rabbitmq() -> None:
    assert topic_matches("slot.*", "slot.created")
    assert not topic_matches("slot.*", "slot.created.late")
    assert not topic_matches("slot.*", "slot")
    assert topic_matches("slot.#", "slot")
    assert topic_matches("slot.#", "slot.a.b")
    assert topic_matches("#", "anything.at.all")
    assert topic_matches("*.booked", "appointment.booked")
    assert topic_matches("#.booked", "booked")
    assert topic_matches("a.#.z", "a.z")
    assert topic_matches("a.#.z", "a.b.c.z")
    assert not topic_matches("a.#.z", "a.b.c")
    assert topic_matches("appointment.booked", "appointment.booked")
    assert not topic_matches("appointment.booked", "appointment.cancelled")


def test_both_buses_pick_the_same_partition() -> None:
    for tenant in [None, "", "prov-1", "prov-2", "żółw", "x" * 100]:
        assert memory_bus.partition_of(tenant, 4) == rabbit_bus.partition_of(tenant, 4)
    assert rabbit_bus.partition_of(None, 4) == 0


# --------------------------------------------------------------------------- contract


async def test_ping(bus_harness: BusHarness) -> None:
    assert await bus_harness.bus.ping()
    await bus_harness.bus.close()
    assert not await bus_harness.bus.ping()


async def test_send_consume_round_trip_keeps_every_field(bus: Any) -> None:
    sent = Envelope(
        id="cmd-0001",
        type="resource.put",
        body={
            "resourceType": "Slot",
            "start": "2026-11-25T08:00:00Z",
            "n": 1.5,
            "list": [1, "dwa", None, True],
            "nested": {"ż": "źdźbło"},
        },
        tenant="prov-42",
        correlation_id="corr-9",
        attempt=0,
        reply_to="cer.reply.nobody-listens",
        created_at="2026-11-25T07:59:59.123Z",
        headers={"source": "api", "n": 3, "deep": {"list": [1, 2]}, "none": None},
    )
    got: list[Envelope] = []
    await bus.consume_commands(lambda m: _record(got, m))
    await bus.send(sent)
    await until(lambda: len(got) == 1)
    assert got[0] == sent
    tenantless = env(tenant=None)
    await bus.send(tenantless)
    await until(lambda: len(got) == 2)
    assert got[1] == tenantless


async def _record(into: list[Envelope], msg: Envelope) -> None:
    into.append(msg)


async def test_request_reply(bus: Any) -> None:
    async def handler(msg: Envelope) -> dict[str, Any] | None:
        if msg.type == "test.silent":
            return None
        return {"echo": msg.body, "tenant": msg.tenant, "reply_to_set": bool(msg.reply_to)}

    await bus.consume_commands(handler)
    reply = await bus.request(env(body={"x": 1}, tenant="prov-7"), timeout=5)
    assert reply == {"echo": {"x": 1}, "tenant": "prov-7", "reply_to_set": True}
    replies = await asyncio.gather(
        *(bus.request(env(body={"i": i}, tenant=f"p{i % 3}"), timeout=5) for i in range(20))
    )
    assert [r["echo"]["i"] for r in replies] == list(range(20))
    assert await bus.request(env("test.silent"), timeout=5) == {}


async def test_request_timeout(bus: Any) -> None:
    async def slow(msg: Envelope) -> dict[str, Any]:
        await asyncio.sleep(1.0)
        return {"late": True}

    started = time.monotonic()
    with pytest.raises(RequestTimeout):
        await bus.request(env(), timeout=0.2)  # nobody consumes yet
    await bus.consume_commands(slow)
    with pytest.raises(RequestTimeout):
        await bus.request(env(), timeout=0.3)
    assert time.monotonic() - started < 1.5


async def test_events_fan_out_to_groups_by_topic_pattern(bus: Any) -> None:
    got: dict[str, list[str]] = defaultdict(list)

    def group(name: str) -> Any:
        async def handler(msg: Envelope) -> None:
            got[name].append(msg.type)

        return handler

    await bus.consume_events("audit", ["#"], group("audit"))
    await bus.consume_events("slots", ["slot.*", "appointment.booked"], group("slots"))
    types = [
        "slot.created",
        "slot.updated",
        "appointment.booked",
        "appointment.cancelled",
        "slot.created.late",
        "schedule.created",
    ]
    for t in types:
        await bus.publish(env(t, tenant="prov-1"))
    await until(lambda: len(got["audit"]) == len(types) and len(got["slots"]) == 3)
    await asyncio.sleep(0.2)  # nothing more arrives
    assert got["audit"] == types
    assert got["slots"] == ["slot.created", "slot.updated", "appointment.booked"]


async def test_event_published_without_subscribers_is_fine(bus: Any) -> None:
    await bus.publish(env("nobody.listens"))


async def test_retry_after_exception_then_success(bus: Any) -> None:
    attempts: list[int] = []
    ok: list[str] = []

    async def handler(msg: Envelope) -> None:
        attempts.append(msg.attempt)
        if msg.attempt == 0:
            raise RuntimeError("transient")
        if msg.attempt == 1:
            raise Retry("not yet")
        ok.append(msg.id)

    await bus.consume_commands(handler)
    sent = env()
    await bus.send(sent)
    await until(lambda: ok == [sent.id])
    assert attempts == [0, 1, 2]
    await asyncio.sleep(0.2)
    assert attempts == [0, 1, 2]
    assert await bus.dead_letters() == []


async def test_retry_retries_only_its_own_group(bus: Any) -> None:
    """A retried event comes back to the group that failed, not to every subscriber."""
    seen: dict[str, list[int]] = defaultdict(list)

    async def audit(msg: Envelope) -> None:
        seen["audit"].append(msg.attempt)

    async def webhooks(msg: Envelope) -> None:
        seen["webhooks"].append(msg.attempt)
        if msg.attempt == 0:
            raise Retry("endpoint down")

    await bus.consume_events("audit", ["slot.*"], audit)
    await bus.consume_events("webhooks", ["slot.*"], webhooks)
    await bus.publish(env("slot.created"))
    await until(lambda: seen["webhooks"] == [0, 1])
    await asyncio.sleep(0.2)
    assert seen == {"audit": [0], "webhooks": [0, 1]}


async def test_retry_delay_picks_the_tier(bus: Any) -> None:
    times: list[float] = []

    async def handler(msg: Envelope) -> None:
        times.append(time.monotonic())
        if msg.attempt == 0:
            raise Retry("later", delay=RETRY_DELAYS[0] + 0.01)  # -> the second tier

    await bus.consume_commands(handler)
    await bus.send(env())
    await until(lambda: len(times) == 2)
    assert times[1] - times[0] >= RETRY_DELAYS[1] * 0.9


async def test_defer_reaches_only_its_group_after_the_tier(bus: Any) -> None:
    """A deferred message waits in a retry tier, then reaches only the named group, once,
    with every field kept; a handler's Retry then counts from its attempt as usual."""
    seen: dict[str, list[Envelope]] = defaultdict(list)
    arrived: list[float] = []

    async def audit(msg: Envelope) -> None:
        seen["audit"].append(msg)

    async def deliveries(msg: Envelope) -> None:
        seen["deliveries"].append(msg)
        arrived.append(time.monotonic())
        if len(seen["deliveries"]) == 1:
            raise Retry("again")

    await bus.consume_events("audit", ["hook.*"], audit)
    await bus.consume_events("deliveries", ["hook.*"], deliveries)
    sent = env("hook.deliver", tenant="sub-1", body={"event": "e1", "attempt": 1})
    started = time.monotonic()
    await bus.defer(sent, RETRY_DELAYS[0] + 0.01, "deliveries")  # -> the second tier
    await until(lambda: len(seen["deliveries"]) == 2)
    assert arrived[0] - started >= RETRY_DELAYS[1] * 0.9
    first, second = seen["deliveries"]
    assert (first.id, first.type, first.tenant, first.body) == (
        sent.id,
        "hook.deliver",
        "sub-1",
        {"event": "e1", "attempt": 1},
    )
    assert (first.attempt, second.attempt) == (0, 1)
    await asyncio.sleep(0.2)
    assert seen["audit"] == [] and len(seen["deliveries"]) == 2


async def test_dead_letter_after_last_tier(bus: Any) -> None:
    attempts: list[int] = []

    async def handler(msg: Envelope) -> None:
        attempts.append(msg.attempt)
        raise ValueError("always broken")

    await bus.consume_commands(handler)
    sent = env(correlation_id="c-1", headers={"h": 1})
    await bus.send(sent)
    [dead] = await take_dead(bus, 1)
    assert attempts == list(range(len(RETRY_DELAYS) + 1))
    assert dead.id == sent.id and dead.type == sent.type and dead.body == sent.body
    assert dead.tenant == sent.tenant and dead.correlation_id == "c-1"
    assert dead.attempt == len(RETRY_DELAYS)
    assert dead.headers["h"] == 1
    assert "retries exhausted" in dead.headers[DEAD_REASON]
    assert "always broken" in dead.headers[DEAD_REASON]
    assert dead.headers[DEAD_QUEUE_HEADER].startswith(COMMAND_QUEUE_PREFIX)
    assert await bus.dead_letters() == []  # taken


async def test_reject_dead_letters_at_once(bus: Any) -> None:
    calls: list[str] = []

    async def handler(msg: Envelope) -> None:
        calls.append(msg.id)
        raise Reject("unknown command type")

    await bus.consume_events("audit", ["bad.#"], handler)
    sent = env("bad.event")
    await bus.publish(sent)
    [dead] = await take_dead(bus, 1)
    assert calls == [sent.id]
    assert dead.id == sent.id and dead.attempt == 0
    assert dead.headers[DEAD_REASON] == "rejected: unknown command type"
    assert dead.headers[DEAD_QUEUE_HEADER] == "cer.events.audit"


async def test_dead_letters_limit(bus: Any) -> None:
    calls: list[str] = []

    async def handler(msg: Envelope) -> None:
        calls.append(msg.id)
        raise Reject("no")

    await bus.consume_commands(handler)
    for _ in range(5):
        await bus.send(env())
    await until(lambda: len(calls) == 5)
    await asyncio.sleep(0.2)  # the dead copies are confirmed before the acks
    first = await bus.dead_letters(limit=2)
    rest = await bus.dead_letters()
    assert len(first) == 2 and len(rest) == 3
    assert sorted(d.id for d in first + rest) == sorted(calls)


async def test_per_tenant_order_under_concurrency(bus: Any) -> None:
    tenants = [f"prov-{i}" for i in range(5)]
    rnd = random.Random(7)
    sent: dict[str, list[str]] = defaultdict(list)
    got: dict[str, list[str]] = defaultdict(list)
    running = 0
    peak = 0

    async def handler(msg: Envelope) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await asyncio.sleep(rnd.random() * 0.005)
            assert msg.tenant is not None
            got[msg.tenant].append(msg.id)
        finally:
            running -= 1

    await bus.consume_commands(handler)
    for i in range(200):
        tenant = rnd.choice(tenants)
        m = env(tenant=tenant, id=f"ord-{i}")
        sent[tenant].append(m.id)
        await bus.send(m)
    await until(lambda: sum(map(len, got.values())) == 200, within=20)
    for tenant in tenants:
        assert got[tenant] == sent[tenant], tenant
    assert peak > 1, "different tenants should run concurrently"


async def test_per_tenant_order_for_events(bus: Any) -> None:
    got: list[int] = []

    async def handler(msg: Envelope) -> None:
        await asyncio.sleep(random.random() * 0.003)
        got.append(msg.body["i"])

    await bus.consume_events("ordering", ["slot.#"], handler)
    for i in range(50):
        await bus.publish(env("slot.updated", tenant="prov-1", body={"i": i}))
    await until(lambda: len(got) == 50)
    assert got == list(range(50))


# --------------------------------------------------------------------------- copies


def _nested(i: int) -> dict[str, Any]:
    return {"i": i, "deep": {"list": [1, {"x": "ż"}]}}


async def test_a_sender_changing_its_message_after_sending_changes_nothing_delivered(
    bus: Any,
) -> None:
    """What is delivered is what was sent, as a broker copied it when it confirmed."""
    got: list[Envelope] = []
    await bus.consume_events("audit", ["copy.#"], lambda m: _record(got, m))
    event = env("copy.single", body=_nested(0), headers={"h": {"n": 1}})
    batch = [env("copy.batch", body=_nested(i), headers={"h": {"n": i}}) for i in (1, 2)]
    deferred = env("copy.deferred", body=_nested(3))
    command = env("copy.command", body=_nested(4), headers={"h": {"n": 4}})
    sent = [event, *batch, deferred, command]
    before = [(m.body, dict(m.headers)) for m in copy.deepcopy(sent)]
    await bus.publish(event)
    await bus.publish_batch(batch)
    await bus.defer(deferred, RETRY_DELAYS[0], "audit")
    await bus.send(command)
    for m in sent:  # the sender reuses its objects at once
        m.body["i"] = -1
        m.body["deep"]["list"].append("later")
        if m.headers:
            m.headers["h"]["n"] = -1  # type: ignore[index]
            m.headers["added"] = True  # type: ignore[index]
    await until(lambda: len(got) == 4)
    await bus.consume_commands(lambda m: _record(got, m))
    await until(lambda: len(got) == 5)
    by_id = {m.id: m for m in got}
    for m, (body, headers) in zip(sent, before, strict=True):
        assert by_id[m.id].body == body, m.type
        assert dict(by_id[m.id].headers) == headers, m.type


async def test_a_handler_changing_its_message_changes_nothing_else_delivered(bus: Any) -> None:
    """A retry, a dead letter and another group get the message as it was published,
    whatever a handler did to its own copy."""
    seen: dict[str, list[tuple[int, Any, Any]]] = defaultdict(list)

    def changing(name: str, fail: Callable[[Envelope], None]) -> Any:
        async def handler(msg: Envelope) -> None:
            seen[name].append(
                (msg.attempt, copy.deepcopy(msg.body), copy.deepcopy(dict(msg.headers)))
            )
            msg.body["i"] = -1
            msg.body["deep"]["list"].clear()
            if msg.headers:
                msg.headers["h"]["n"] = -1  # type: ignore[index]
            fail(msg)

        return handler

    def retry_once(msg: Envelope) -> None:
        if msg.attempt == 0:
            raise Retry("once more")

    def reject_once(msg: Envelope) -> None:
        if msg.attempt == 0:
            raise Reject("no")

    await bus.consume_events("webhooks", ["change.#"], changing("webhooks", retry_once))
    await bus.consume_events("audit", ["change.#"], changing("audit", lambda m: None))
    await bus.consume_commands(changing("commands", retry_once))
    single = env("change.single", body=_nested(0), headers={"h": {"n": 0}})
    batch = [env("change.batch", body=_nested(i), headers={"h": {"n": i}}) for i in (1, 2)]
    command = env("change.command", body=_nested(3), headers={"h": {"n": 3}})
    await bus.publish(single)
    await bus.publish_batch(batch)
    await bus.send(command)
    await until(lambda: len(seen["webhooks"]) == 6 and len(seen["commands"]) == 2)
    await until(lambda: len(seen["audit"]) == 3)
    original = {m.body["i"]: (m.body, dict(m.headers)) for m in [single, *batch, command]}
    for name, expect in (
        ("webhooks", [0, 0, 0, 1, 1, 1]),
        ("audit", [0, 0, 0]),
        ("commands", [0, 1]),
    ):
        assert sorted(a for a, _, _ in seen[name]) == expect, name
        for _, body, headers in seen[name]:
            assert (body, headers) == original[body["i"]], name
    await bus.consume_events("ordering", ["dead.#"], changing("ordering", reject_once))
    await bus.publish(env("dead.one", body=_nested(7), headers={"h": {"n": 7}}))
    [dead] = await take_dead(bus, 1)
    assert dead.body == _nested(7) and dead.headers["h"] == {"n": 7}


async def test_a_message_that_is_not_json_is_refused_at_once(bus: Any) -> None:
    """As on the broker: the sender learns it, no consumer ever gets half a message."""
    got: list[Envelope] = []
    await bus.consume_events("audit", ["json.#"], lambda m: _record(got, m))
    with pytest.raises(TypeError):
        await bus.publish(env("json.single", body={"x": object()}))
    with pytest.raises(TypeError):
        await bus.publish_batch([env("json.batch"), env("json.batch", body={"x": {1, 2}})])
    with pytest.raises(TypeError):
        await bus.send(env(headers={"x": object()}))
    await bus.publish(env("json.fine"))
    await until(lambda: len(got) == 1)
    await asyncio.sleep(0.2)
    assert [m.type for m in got] == ["json.fine"]


# --------------------------------------------------------------------------- batches


async def test_a_batch_reaches_each_group_as_single_events_in_order(bus: Any) -> None:
    got: dict[str, list[Envelope]] = defaultdict(list)

    def group(name: str) -> Any:
        async def handler(msg: Envelope) -> None:
            await asyncio.sleep(random.random() * 0.002)
            got[name].append(msg)

        return handler

    await bus.consume_events("audit", ["#"], group("audit"))
    await bus.consume_events("slots", ["slot.*"], group("slots"))
    batch = [
        env(
            "slot.created",
            tenant="prov-1",
            body={"i": i, "ż": [1, None]},
            correlation_id=f"c-{i}",
            created_at=f"2027-01-11T08:00:0{i % 10}.000Z",
            headers={"h": i} if i % 2 else {},
        )
        for i in range(30)
    ]
    single = env("slot.updated", tenant="prov-1", body={"i": 30})
    await bus.publish_batch(batch)
    await bus.publish(single)
    await until(lambda: len(got["audit"]) == 31 and len(got["slots"]) == 31)
    await asyncio.sleep(0.2)  # nothing more arrives
    for name in ("audit", "slots"):
        assert got[name] == [*batch, single], name  # every field, one by one, in order


async def test_a_retry_in_a_batch_retries_that_event_alone(bus: Any) -> None:
    seen: list[tuple[int, int]] = []

    async def handler(msg: Envelope) -> None:
        seen.append((msg.body["i"], msg.attempt))
        if msg.body["i"] == 2 and msg.attempt == 0:
            raise Retry("endpoint down")
        if msg.body["i"] == 3 and msg.attempt == 0:
            raise RuntimeError("transient")

    await bus.consume_events("webhooks", ["slot.*"], handler)
    await bus.publish_batch([env("slot.created", body={"i": i}) for i in range(5)])
    await until(lambda: len(seen) == 7)
    await asyncio.sleep(0.3)
    assert seen[:5] == [(i, 0) for i in range(5)]
    assert sorted(seen[5:]) == [(2, 1), (3, 1)]
    assert await bus.dead_letters() == []


async def test_a_rejected_event_of_a_batch_is_dead_lettered_alone(bus: Any) -> None:
    calls: list[int] = []

    async def handler(msg: Envelope) -> None:
        calls.append(msg.body["i"])
        if msg.body["i"] == 1:
            raise Reject("no")

    await bus.consume_events("audit", ["bad.#"], handler)
    batch = [env("bad.event", body={"i": i}) for i in range(3)]
    await bus.publish_batch(batch)
    [dead] = await take_dead(bus, 1)
    assert calls == [0, 1, 2]
    assert dead.id == batch[1].id and dead.body == {"i": 1} and dead.type == "bad.event"
    assert dead.headers[DEAD_REASON] == "rejected: no"


async def test_a_batch_is_one_type_and_one_tenant(bus: Any) -> None:
    with pytest.raises(ValueError):
        await bus.publish_batch([env("slot.created"), env("slot.updated")])
    with pytest.raises(ValueError):
        await bus.publish_batch([env("slot.created", tenant="a"), env("slot.created", tenant="b")])
    with pytest.raises(ValueError):
        await bus.publish_batch([])


async def test_a_batch_cut_short_by_a_crash_comes_again_whole(bus_harness: BusHarness) -> None:
    """At least once: events handled before the crash are handed over again (consumers
    dedupe by id), none is lost."""
    bus = bus_harness.bus
    first: list[int] = []
    gate = asyncio.Event()

    async def stuck(msg: Envelope) -> None:
        first.append(msg.body["i"])
        if msg.body["i"] == 3:
            await gate.wait()  # never set: the process dies here

    await bus.consume_events("ordering", ["slot.#"], stuck)
    batch = [env("slot.created", body={"i": i}) for i in range(6)]
    await bus.publish_batch(batch)
    await until(lambda: first == [0, 1, 2, 3])
    await bus_harness.crash()
    bus = await bus_harness.reopen()
    again: list[str] = []

    async def fine(msg: Envelope) -> None:
        again.append(msg.id)

    await bus.consume_events("ordering", ["slot.#"], fine)
    await until(lambda: len(again) == 6)
    assert again == [m.id for m in batch]


async def test_messages_survive_a_consumer_restart(bus_harness: BusHarness) -> None:
    bus = bus_harness.bus
    for i in range(10):
        await bus.send(env(tenant="prov-1", id=f"p-{i}"))
    handled: list[str] = []
    never = asyncio.Event()

    async def stuck_at_4(msg: Envelope) -> None:
        if msg.id == "p-4":
            await never.wait()  # still running when the bus closes
        handled.append(msg.id)

    await bus.consume_commands(stuck_at_4)
    await until(lambda: len(handled) == 4)
    bus = await bus_harness.reopen()  # p-4 is cancelled after close_timeout, unacked
    for i in range(10, 13):
        await bus.send(env(tenant="prov-1", id=f"p-{i}"))  # no consumer yet
    after: list[str] = []
    await bus.consume_commands(lambda m: _record_id(after, m))
    await until(lambda: len(after) == 9)
    assert handled == [f"p-{i}" for i in range(4)]
    assert after == [f"p-{i}" for i in range(4, 13)]


async def _record_id(into: list[str], msg: Envelope) -> None:
    into.append(msg.id)


async def test_a_crashing_consumer_loses_nothing(bus_harness: BusHarness) -> None:
    bus = bus_harness.bus
    entered: list[str] = []
    never = asyncio.Event()

    async def dies_midway(msg: Envelope) -> None:
        entered.append(msg.id)
        await never.wait()

    await bus.consume_commands(dies_midway)
    ids = [f"c-{i}" for i in range(6)]
    for i, mid in enumerate(ids):
        await bus.send(env(tenant=f"prov-{i % 3}", id=mid))
    await until(lambda: len(entered) == 3)  # one running per tenant, the rest queued behind
    await bus_harness.crash()
    bus = await bus_harness.reopen()
    done: list[str] = []
    await bus.consume_commands(lambda m: _record_id(done, m))
    await until(lambda: sorted(done) == ids)


async def test_unexpected_exceptions_never_drop_a_message(bus: Any) -> None:
    calls: Counter[str] = Counter()
    done: list[str] = []

    class Weird(Exception):
        def __str__(self) -> str:
            return "weird"

    async def flaky(msg: Envelope) -> None:
        calls[msg.id] += 1
        if calls[msg.id] == 1:
            raise [KeyError("k"), ZeroDivisionError(), Weird(), TimeoutError()][msg.body["i"] % 4]
        done.append(msg.id)

    await bus.consume_commands(flaky)
    for i in range(8):
        await bus.send(env(body={"i": i}, tenant=f"prov-{i}"))
    await until(lambda: len(done) == 8)
    assert set(calls.values()) == {2}


# --------------------------------------------------------------------------- embedded only


async def test_memory_retry_follows_the_clock(memory_harness: BusHarness) -> None:
    bus = memory_harness.new_bus(retry_delays=[3600.0])
    await bus.start()
    try:
        attempts: list[int] = []

        async def handler(msg: Envelope) -> None:
            attempts.append(msg.attempt)
            if msg.attempt == 0:
                raise Retry("in an hour")

        await bus.consume_commands(handler)
        await bus.send(env())
        await until(lambda: attempts == [0])
        depths = await bus.queue_depths()
        assert depths["cer.retry.3600000"] == 1
        await asyncio.sleep(0.1)
        assert attempts == [0]
        memory_harness.clock.advance(timedelta(hours=1, seconds=1))
        await until(lambda: attempts == [0, 1], within=2)
    finally:
        await bus.close()


async def test_memory_events_go_one_at_a_time_while_commands_are_busy(
    memory_harness: BusHarness,
) -> None:
    """Commands first (the embedded bus's docstring): while a command waits or runs, an
    event group has one event in flight, and its events still flow (never starved);
    with no command about, they go at full width again."""
    bus = memory_harness.bus
    command_may_end = asyncio.Event()
    commands_done: list[str] = []
    running = 0
    widest: list[int] = []
    seen: list[str] = []

    async def command(msg: Envelope) -> None:
        await command_may_end.wait()
        commands_done.append(msg.id)

    async def event(msg: Envelope) -> None:
        nonlocal running
        running += 1
        widest.append(running)
        await asyncio.sleep(0.005)  # an event handler that awaits (I/O)
        running -= 1
        seen.append(msg.id)

    await bus.consume_commands(command)
    await bus.consume_events("audit", ["resource.#"], event)
    await bus.send(env())
    await until(bus.commands_busy)
    for i in range(12):  # other tenants: nothing but the bus orders them
        await bus.publish(env("resource.Slot.created", tenant=f"prov-{i}"))
    await until(lambda: len(seen) == 12)  # they flow while the command is busy
    assert commands_done == []
    assert max(widest) == 1

    command_may_end.set()
    await until(lambda: len(commands_done) == 1 and not bus.commands_busy())
    widest.clear()
    for i in range(12):
        await bus.publish(env("resource.Slot.created", tenant=f"prov-{i}"))
    await until(lambda: len(seen) == 24)
    assert max(widest) > 1


# --------------------------------------------------------------------------- RabbitMQ only


@pytest.mark.rabbitmq
async def test_rabbit_undecodable_message_is_dead_lettered(rabbit_harness: BusHarness) -> None:
    bus = rabbit_harness.bus
    calls: list[Envelope] = []
    await bus.consume_commands(lambda m: _record(calls, m))
    conn = await aio_pika.connect(AMQP_URL)
    try:
        channel = await conn.channel()
        ex = await channel.get_exchange(COMMANDS_EXCHANGE)
        await ex.publish(aio_pika.Message(b"\xff not json", message_id="raw-1"), routing_key="0")
    finally:
        await conn.close()
    [dead] = await take_dead(bus, 1)
    assert calls == []
    assert dead.id == "raw-1" and "undecodable" in dead.headers[DEAD_REASON]


@pytest.mark.rabbitmq
async def test_rabbit_queue_depths(rabbit_harness: BusHarness) -> None:
    bus = rabbit_harness.bus
    for _ in range(3):
        await bus.send(env(tenant=None))
    depths = await bus.queue_depths()
    assert depths[f"{COMMAND_QUEUE_PREFIX}0"] == 3
    assert set(depths) >= {"cer.retry.50", "cer.retry.100", "cer.dead-letters"}


async def _rabbitmqctl(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {err.decode()}")


@pytest.mark.rabbitmq
async def test_rabbit_broker_restart_while_publishing(rabbit_harness: BusHarness) -> None:
    bus = rabbit_harness.bus
    total = 1000
    seen: Counter[str] = Counter()

    async def handler(msg: Envelope) -> None:
        await asyncio.sleep(0.01)  # slower than the publishers: a backlog is queued and in flight
        seen[msg.id] += 1

    await bus.consume_commands(handler)
    ids = [f"r-{i:04d}" for i in range(total)]
    halfway = asyncio.Event()
    published: list[str] = []

    broker_down = asyncio.Event()

    async def publisher(lane: int, lanes: int) -> None:
        for i in range(lane, total, lanes):
            if len(published) >= total // 2:
                # The second half only once the broker is down: on a loaded machine all
                # of it could otherwise go out while ``rabbitmqctl stop_app`` starts.
                await broker_down.wait()
            await bus.send(env(tenant=f"prov-{i % 7}", id=ids[i], body={"i": i}))
            published.append(ids[i])
            if len(published) == 300:
                halfway.set()
            await asyncio.sleep(0.005)  # spread over a few seconds: the outage lands mid-stream

    stopped_at = resumed_at = 0.0
    pub = asyncio.gather(*(publisher(lane, 4) for lane in range(4)))
    try:
        await halfway.wait()
        stopped_at = time.monotonic()
        await _rabbitmqctl("stop_app")
        broker_down.set()
        at_stop = len(published)
        await asyncio.sleep(1.0)
    finally:
        broker_down.set()
        await _rabbitmqctl("start_app")  # never leave the broker stopped
        resumed_at = time.monotonic()
    await asyncio.wait_for(pub, 90)
    await until(lambda: len(seen) == total, within=60)
    lost = [i for i in ids if i not in seen]
    duplicates = {i: n for i, n in seen.items() if n > 1}
    print(
        f"\nbroker restart: {total} published ({at_stop} before the stop finished), "
        f"outage {resumed_at - stopped_at:.1f}s, all consumed {time.monotonic() - resumed_at:.1f}s "
        f"after start_app; lost {len(lost)}, duplicates {len(duplicates)}: "
        f"{sorted(duplicates.items())[:20]}"
    )
    assert at_stop < total, "every message was published before the broker stopped"
    assert lost == []
    assert sorted(published) == ids


async def _close_connection_of(instance_id: str) -> None:
    """Close one bus's connection from the broker's side (as a broker shutting down
    does), leaving every other connection alone."""
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl",
        "list_connections",
        "-q",
        "--no-table-headers",
        "pid",
        "client_properties",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    pids = [line.split()[0] for line in out.decode().splitlines() if instance_id in line]
    assert pids, f"no connection of {instance_id} in rabbitmqctl list_connections"
    for pid in pids:
        await _rabbitmqctl("close_connection", pid, "test: connection lost")


@pytest.mark.rabbitmq
async def test_rabbit_request_fails_fast_when_the_connection_is_lost(
    rabbit_harness: BusHarness,
) -> None:
    """The reply queue is exclusive: it dies with the connection, and a reply sent before
    the reconnection is dropped. A waiting request fails at once (``ReplyLost``, a
    ``RequestTimeout``: the API's 503) instead of after its whole timeout; after the
    reconnection requests get their replies again."""
    bus = rabbit_harness.bus
    started = asyncio.Event()
    release = asyncio.Event()

    async def handler(msg: Envelope) -> dict[str, Any]:
        if msg.body.get("hold"):
            started.set()
            await release.wait()
        return {"echo": msg.body}

    await bus.consume_commands(handler)
    assert await bus.request(env(body={"n": 0}), timeout=10) == {"echo": {"n": 0}}
    waiting = asyncio.create_task(bus.request(env(body={"hold": True}), timeout=60))
    await asyncio.wait_for(started.wait(), 10)
    t0 = time.monotonic()
    await _close_connection_of(bus.instance_id)
    with pytest.raises(ReplyLost):
        await asyncio.wait_for(waiting, 30)
    assert time.monotonic() - t0 < 15  # the close, not the 60 s timeout
    release.set()
    reply = None
    for _ in range(40):  # once reconnected (reconnect_interval 0.5 s), replies arrive again
        try:
            reply = await bus.request(env(body={"n": 1}), timeout=2)
            break
        except RequestTimeout:
            await asyncio.sleep(0.25)
    assert reply == {"echo": {"n": 1}}
