"""Webhooks to providers (issue 6, R-SCHED-4, R-CAN-3) end to end, with a real HTTP receiver.

A provider subscribes (handshake), a change made outside its system (the
patient portal) arrives signed (verified with the ``standardwebhooks``
library) and numbered; its own changes do not echo back; a receiver that is
down misses nothing (retries on the sandbox clock, gaps closable with
``$events``); ``410`` disables; ``429`` + ``Retry-After`` is honoured; the
last failed try dead-letters and shows ``error``; replay; heartbeats; the
sandbox inbox; SSRF refusal; secret rotation.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from gateway import constants as c
from gateway.http.app import create_app
from gateway.http.keys import SERVICES
from gateway.settings import Settings
from mappings import codes
from tests.e2e.conftest import new_provider, purge_rabbit, settings_for, uses_rabbit
from tests.e2e.webhook_support import (
    Receiver,
    advance,
    appointment,
    call,
    event_numbers,
    notification_type,
    outside_write,
    params_of,
    secret_of,
    seed_slots,
    subscription,
)

FAST = {
    "webhook_sweep_seconds": 0.1,
    "webhook_sweep_grace_seconds": 0.5,
    "token_ttl_seconds": 7 * 86400,  # tests move the sandbox clock by hours
}


async def make_client(
    aiohttp_client: Callable[..., Any], backend: str = "embedded", **overrides: Any
) -> Any:
    settings = settings_for(backend, **{**FAST, **overrides})
    if uses_rabbit(backend):
        await purge_rabbit(settings)
    return await aiohttp_client(create_app(settings))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


async def subscribe(
    client: Any, token: str, endpoint: str, **kw: Any
) -> tuple[dict[str, Any], str]:
    status, created = await call(
        client, "POST", "/fhir/Subscription", token, subscription(endpoint, **kw)
    )
    assert status == 201, created
    return created, secret_of(created)


async def book(client: Any, prov: dict[str, Any], slot_id: str) -> dict[str, Any]:
    """A patient's booking through the portal: Appointment created + Slot updated (2 events)."""
    return await outside_write(
        client, prov["provider_id"], "POST", "Appointment", appointment(slot_id)
    )


async def status_of(client: Any, token: str, sid: str) -> dict[str, Any]:
    status, bundle = await call(client, "GET", f"/fhir/Subscription/{sid}/$status", token)
    assert status == 200, bundle
    assert bundle["type"] == "searchset"
    return params_of({"entry": [{"resource": bundle["entry"][0]["resource"]}]})


async def wait_status(client: Any, token: str, sid: str, want: str, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        _status, sub = await call(client, "GET", f"/fhir/Subscription/{sid}", token)
        if sub["status"] == want:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"subscription status stayed {sub['status']}, wanted {want}")


async def deliveries(client: Any, token: str, sid: str) -> list[dict[str, Any]]:
    status, params = await call(
        client, "GET", f"/fhir/Subscription/{sid}/$deliveries?_count=500", token
    )
    assert status == 200, params
    out = []
    for p in params["parameter"]:
        row: dict[str, Any] = {}
        for part in p["part"]:
            row[part["name"]] = next(v for k, v in part.items() if k.startswith("value"))
        out.append(row)
    return out


async def wait_attempts(
    client: Any, token: str, sid: str, n: int, timeout: float = 10.0
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for _ in range(int(timeout / 0.05)):
        rows = [r for r in await deliveries(client, token, sid) if r["kind"] == "event"]
        if len(rows) >= n:
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError(f"{len(rows)} delivery attempts, wanted {n}: {rows}")


# --------------------------------------------------------------------------- the main scenario


@pytest.mark.parametrize(
    "backend", ["embedded", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)]
)
async def test_outside_booking_arrives_signed_and_numbered(
    backend: str, aiohttp_client: Callable[..., Any], receiver: Receiver
) -> None:
    client = await make_client(aiohttp_client, backend)
    prov = await new_provider(client)
    token = prov["token"]
    slots = await seed_slots(client, token, 2)  # the provider's own writes: no webhooks

    created, secret = await subscribe(client, token, receiver.url)
    assert created["status"] == "active"  # the handshake got a 2xx
    assert secret.startswith("whsec_")
    assert [notification_type(d["body"]) for d in receiver.deliveries] == ["handshake"]

    started = asyncio.get_running_loop().time()
    appt = await book(client, prov, slots[0])
    await receiver.wait(lambda: len(receiver.numbers()) >= 2, timeout=5)
    assert asyncio.get_running_loop().time() - started < 1.0  # "arrives signed within a second"
    receiver.verify_all(secret)

    events = receiver.of_type("event-notification")
    assert sorted(receiver.numbers()) == [1, 2]
    first = events[0]
    assert first["headers"]["webhook-id"] == f"{created['id']}-1"
    assert first["headers"]["webhook-signature"].startswith("v1,")
    assert first["headers"]["Content-Type"] == "application/fhir+json"
    bundle = first["body"]
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "history"
    params = params_of(bundle)
    assert params["subscription"]["valueReference"]["reference"].endswith(
        f"/fhir/Subscription/{created['id']}"
    )
    assert params["status"]["valueCode"] == "active"
    focus = {e["resource"]["resourceType"]: e for e in (d["body"]["entry"][1] for d in events)}
    assert set(focus) == {"Appointment", "Slot"}
    assert focus["Appointment"]["resource"]["id"] == appt["id"]
    assert focus["Appointment"]["request"] == {"method": "POST", "url": "Appointment"}
    assert focus["Slot"]["resource"]["status"] == "busy"

    # The provider's own change (channel provider) is not echoed back (R-SCHED-4).
    status, _ = await call(
        client,
        "PUT",
        f"/fhir/Appointment/{appt['id']}",
        token,
        {**appt["resource"], "comment": "own"},
    )
    assert status == 200
    # An outside cancellation is (R-CAN-3).
    reason = {"coding": [{"system": codes.CANCELLATION_REASON_SYSTEM, "code": "patient-request"}]}
    cancelled = {**appt["resource"], "status": "cancelled", "cancelationReason": reason}
    await outside_write(
        client, prov["provider_id"], "PUT", "Appointment", cancelled, rid=appt["id"], channel="sms"
    )
    await receiver.wait(lambda: len(receiver.numbers()) >= 4, timeout=5)
    await asyncio.sleep(0.3)
    assert sorted(receiver.numbers()) == [1, 2, 3, 4]  # exactly one event per change
    receiver.verify_all(secret)

    params = await status_of(client, token, created["id"])
    assert params["events-since-subscription-start"]["valueString"] == "4"
    assert params["type"]["valueCode"] == "query-status"

    status, bundle = await call(
        client, "GET", f"/fhir/Subscription/{created['id']}/$events?eventsSinceNumber=2", token
    )
    assert status == 200, bundle
    assert bundle["type"] == "history"
    assert event_numbers(bundle) == [2, 3, 4]
    assert len(bundle["entry"]) == 4  # status + 3 resources

    metrics = await (await client.get("/metrics")).text()
    assert 'webhook_deliveries_total{kind="event",outcome="delivered"} 4.0' in metrics
    assert "webhook_events_total 4.0" in metrics


@pytest.mark.parametrize(
    "backend", ["embedded", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)]
)
async def test_patient_booking_and_cancellation_in_the_portal_reach_the_provider(
    backend: str, aiohttp_client: Callable[..., Any], receiver: Receiver
) -> None:
    """As a new user would: subscribe, a patient books in /patient/v1 (R-SCHED-4) and
    cancels (R-CAN-3); each change arrives signed, numbered, within a second."""
    from tests.e2e.patient_support import (
        CONTACT,
        at,
        clinic,
        patient,
        referral,
        set_clock,
    )
    from tests.e2e.patient_support import (
        book as patient_book,
    )
    from tests.e2e.patient_support import (
        cancel as patient_cancel,
    )

    client = await make_client(aiohttp_client, backend)
    await set_clock(client)
    a = await clinic(client, [("s1", at("2027-01-11", 8), "first-stable")])
    created, secret = await subscribe(client, a.token, receiver.url)
    assert created["status"] == "active"
    p = await patient(client)
    ref = await referral(client, p)
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, appt = await patient_book(client, p, a.slots["s1"], ref, CONTACT)
    assert status == 201, appt
    await receiver.wait(lambda: len(receiver.numbers()) >= 2, timeout=5)
    assert loop.time() - started < 1.0
    kinds = {
        d["body"]["entry"][1]["resource"]["resourceType"]: d["body"]["entry"][1]
        for d in receiver.of_type("event-notification")
    }
    assert kinds["Appointment"]["resource"]["status"] == "booked"
    assert kinds["Slot"]["resource"]["status"] == "busy"
    started = loop.time()
    status, body = await patient_cancel(client, p, appt["id"])
    assert status in (200, 204), body
    await receiver.wait(lambda: len(receiver.numbers()) >= 4, timeout=5)
    assert loop.time() - started < 1.0
    await asyncio.sleep(0.2)
    assert sorted(receiver.numbers()) == [1, 2, 3, 4]
    last = {
        d["body"]["entry"][1]["resource"]["resourceType"]: d["body"]["entry"][1]["resource"]
        for d in receiver.of_type("event-notification")[2:]
    }
    assert last["Appointment"]["status"] == "cancelled"
    assert last["Slot"]["status"] == "free"
    receiver.verify_all(secret)


@pytest.mark.parametrize(
    "backend", ["embedded", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)]
)
async def test_first_tries_take_no_broker_message_failures_do(
    backend: str, aiohttp_client: Callable[..., Any], receiver: Receiver
) -> None:
    """The happy path consumes the event once and publishes nothing more (the first try is
    the worker's own); a failed first try continues through the broker's delay tier."""
    client = await make_client(aiohttp_client, backend)
    bus = client.server.app[SERVICES].bus
    prov = await new_provider(client)
    token = prov["token"]
    slots = await seed_slots(client, token, 2)
    created, secret = await subscribe(client, token, receiver.url)
    deferred: list[float] = []
    published: list[str] = []
    publish, defer = bus.publish, bus.defer

    async def counting_publish(msg: Any) -> None:
        published.append(msg.type)
        await publish(msg)

    async def counting_defer(msg: Any, delay: float, group: str) -> None:
        assert msg.type == c.WEBHOOK_DELIVER and group == c.WEBHOOK_DELIVERY_GROUP
        deferred.append(delay)
        await defer(msg, delay, group)

    bus.publish, bus.defer = counting_publish, counting_defer
    await book(client, prov, slots[0])
    await receiver.wait(lambda: len(receiver.numbers()) == 2)
    assert c.WEBHOOK_DELIVER not in published and deferred == []

    receiver.mode = "fail"
    await book(client, prov, slots[1])
    rows = await wait_attempts(client, token, created["id"], 4)
    assert [r["outcome"] for r in rows[:2]] == ["retrying", "retrying"]
    assert deferred == [5.0, 5.0] and c.WEBHOOK_DELIVER not in published
    receiver.mode = "ok"
    await advance(client, "PT6S")
    await receiver.wait(lambda: sorted(receiver.numbers()) == [1, 2, 3, 4])
    receiver.verify_all(secret)


async def test_a_first_try_lost_with_its_worker_is_sent_by_the_sweeper(
    aiohttp_client: Callable[..., Any], receiver: Receiver
) -> None:
    """The first try waits in memory: if the worker dies before it, the event is still
    pending in the store and the sweeper sends it once its copy is late (the grace)."""
    client = await make_client(aiohttp_client)
    webhooks = client.server.app[SERVICES].webhooks
    prov = await new_provider(client)
    token = prov["token"]
    slots = await seed_slots(client, token, 1)
    await subscribe(client, token, receiver.url)
    lost: list[str] = []

    async def dies_before_the_try(ev: dict[str, Any]) -> None:
        lost.append(ev["_id"])

    webhooks._first_try = dies_before_the_try
    await book(client, prov, slots[0])
    await receiver.wait(lambda: sorted(receiver.numbers()) == [1, 2], timeout=10)
    assert len(lost) == 2
    events = receiver.of_type("event-notification")
    assert {e["headers"]["webhook-id"] for e in events} == {
        f"{lost[0].split(':')[0]}-1",
        f"{lost[0].split(':')[0]}-2",
    }


# --------------------------------------------------------------------------- down, then up


@pytest.mark.parametrize(
    "backend", ["embedded", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)]
)
async def test_receiver_down_then_up_gets_everything(
    backend: str, aiohttp_client: Callable[..., Any], receiver: Receiver
) -> None:
    client = await make_client(aiohttp_client, backend)
    prov = await new_provider(client)
    token = prov["token"]
    slots = await seed_slots(client, token, 3)
    created, secret = await subscribe(client, token, receiver.url)
    sid = created["id"]

    await receiver.stop()  # connection refused from now on
    for s in slots:
        await book(client, prov, s)
    rows = await wait_attempts(client, token, sid, 6)
    assert all(r["outcome"] == "retrying" and "status-code" not in r for r in rows)
    assert receiver.numbers() == []

    # The gap is visible: 6 events since the start, none received; $events has them all.
    params = await status_of(client, token, sid)
    assert params["events-since-subscription-start"]["valueString"] == "6"
    _status, bundle = await call(
        client, "GET", f"/fhir/Subscription/{sid}/$events?eventsSinceNumber=1", token
    )
    assert event_numbers(bundle) == [1, 2, 3, 4, 5, 6]
    assert all("resource" in e for e in bundle["entry"])

    # Back up: the next try (5 s later on the sandbox clock) delivers every event.
    await receiver.start()
    await advance(client, "PT10S")
    await receiver.wait(lambda: len(set(receiver.numbers())) >= 6, timeout=10)
    assert sorted(set(receiver.numbers())) == [1, 2, 3, 4, 5, 6]
    receiver.verify_all(secret)
    rows = [r for r in await deliveries(client, token, sid) if r["kind"] == "event"]
    assert sorted(r["outcome"] for r in rows) == ["delivered"] * 6 + ["retrying"] * 6
    assert {r["trigger"] for r in rows if r["outcome"] == "delivered"} <= {"retry", "sweeper"}


async def test_gap_closed_with_events_while_retries_wait(
    aiohttp_client: Callable[..., Any], receiver: Receiver
) -> None:
    client = await make_client(aiohttp_client)
    prov = await new_provider(client)
    token = prov["token"]
    slots = await seed_slots(client, token, 2)
    created, _ = await subscribe(client, token, receiver.url)
    sid = created["id"]
    receiver.mode = "fail"  # 500 for a while
    await book(client, prov, slots[0])
    await wait_attempts(client, token, sid, 2)
    receiver.mode = "ok"
    await book(client, prov, slots[1])
    await receiver.wait(lambda: len(receiver.numbers()) >= 2)
    assert sorted(receiver.numbers()) == [3, 4]  # the receiver sees a gap: 1 and 2
    _status, bundle = await call(
        client,
        "GET",
        f"/fhir/Subscription/{sid}/$events?eventsSinceNumber=1&eventsUntilNumber=2",
        token,
    )
    assert event_numbers(bundle) == [1, 2]  # ...and closes it without waiting for the retries


# --------------------------------------------------------------------------- failures


async def test_410_disables_the_subscription(
    aiohttp_client: Callable[..., Any], receiver: Receiver
) -> None:
    client = await make_client(aiohttp_client)
    prov = await new_provider(client)
    token = prov["token"]
    slots = await seed_slots(client, token, 2)
    created, _ = await subscribe(client, token, receiver.url)
    receiver.mode = "gone"
    await book(client, prov, slots[0])
    await wait_status(client, token, created["id"], "off")
    status, sub = await call(client, "GET", f"/fhir/Subscription/{created['id']}", token)
    assert "410" in sub["error"]
    rows = await deliveries(client, token, created["id"])
    assert rows[0]["outcome"] == "disabled" and rows[0]["status-code"] == 410
    # No more events for an off subscription; replay refuses until it is turned on again.
    receiver.mode = "ok"
    await book(client, prov, slots[1])
    await asyncio.sleep(0.3)
    assert receiver.numbers() == []
    status, _ = await call(
        client, "POST", f"/fhir/Subscription/{created['id']}/$replay?eventsSinceNumber=1", token
    )
    assert status == 409
    body = {**sub, "status": "requested"}
    status, sub = await call(client, "PUT", f"/fhir/Subscription/{created['id']}", token, body)
    assert status == 200 and sub["status"] == "active", sub


@pytest.mark.parametrize(
    "backend", ["embedded", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)]
)
async def test_endpoint_failing_for_the_grace_period_is_disabled_and_keeps_events(
    backend: str, aiohttp_client: Callable[..., Any], receiver: Receiver
) -> None:
    """Svix-like: after 5 days in which every try failed the subscription is disabled
    (status error with the reason), new events are kept but not sent, $replay resumes.
    A success within the run starts it again."""
    client = await make_client(
        aiohttp_client,
        backend,
        webhook_retry_schedule=[0, 5],
        token_ttl_seconds=30 * 86400,
    )
    prov = await new_provider(client)
    token = prov["token"]
    slots = await seed_slots(client, token, 6)
    created, secret = await subscribe(client, token, receiver.url, criteria="Slot?")
    sid = created["id"]
    receiver.mode = "fail"
    await book(client, prov, slots[0])  # event 1 (Slot) fails: the run starts (day 0)
    await wait_attempts(client, token, sid, 1)
    await advance(client, "P3D")  # its last try fails too: dead-lettered, status error
    await wait_attempts(client, token, sid, 2)
    await wait_status(client, token, sid, "error")
    receiver.mode = "ok"
    await book(client, prov, slots[1])  # event 2 delivered on day 3: the run is over
    await receiver.wait(lambda: receiver.numbers() == [2])
    await wait_status(client, token, sid, "active")
    receiver.mode = "fail"
    await book(client, prov, slots[2])  # event 3 fails: a new run from day 3
    await wait_attempts(client, token, sid, 4)
    await advance(client, "P3D")  # day 6: 6 days since the first failure, 3 of this run
    await book(client, prov, slots[3])  # event 4 fails: not disabled
    await wait_attempts(client, token, sid, 6)
    _status, sub = await call(client, "GET", f"/fhir/Subscription/{sid}", token)
    assert "disabled" not in (sub.get("error") or "")

    # Day 8 and an hour: event 4's next try fails after 5 days of unbroken failure.
    await advance(client, "P2DT1H")
    rows = await wait_attempts(client, token, sid, 7)
    assert rows[0]["outcome"] == "disabled" and rows[0]["event-number"] == "4", rows[0]
    _status, sub = await call(client, "GET", f"/fhir/Subscription/{sid}", token)
    assert sub["status"] == "error" and sub["error"].startswith("disabled"), sub
    params = await status_of(client, token, sid)
    assert params["status"]["valueCode"] == "error"
    assert params["error"]["valueCodeableConcept"]["text"].startswith("disabled")

    # Nothing is sent any more, but new events are numbered and kept for $events.
    receiver.mode = "ok"
    await book(client, prov, slots[4])  # event 5: kept, not sent
    await book(client, prov, slots[5])  # event 6
    await advance(client, "PT1H")
    await asyncio.sleep(0.5)
    assert receiver.numbers() == [2]
    _status, bundle = await call(
        client, "GET", f"/fhir/Subscription/{sid}/$events?eventsSinceNumber=1", token
    )
    assert event_numbers(bundle) == [1, 2, 3, 4, 5, 6]

    # $replay enables it again: everything kept arrives, the subscription is active.
    status, out = await call(
        client, "POST", f"/fhir/Subscription/{sid}/$replay?eventsSinceNumber=1", token
    )
    assert status == 200, out
    await receiver.wait(lambda: sorted(set(receiver.numbers())) == [1, 2, 3, 4, 5, 6])
    await wait_status(client, token, sid, "active")
    _status, sub = await call(client, "GET", f"/fhir/Subscription/{sid}", token)
    assert "error" not in sub
    receiver.verify_all(secret)


async def test_429_retry_after_is_respected(
    aiohttp_client: Callable[..., Any], receiver: Receiver
) -> None:
    client = await make_client(aiohttp_client)
    prov = await new_provider(client)
    token = prov["token"]
    slots = await seed_slots(client, token, 1)
    created, _ = await subscribe(client, token, receiver.url, criteria="Appointment?")
    receiver.mode, receiver.retry_after = "throttle", "120"
    await book(client, prov, slots[0])  # one event: Appointment only
    rows = await wait_attempts(client, token, created["id"], 1)
    assert rows[0]["status-code"] == 429
    receiver.mode = "ok"
    # The schedule's next try would be 5 s later; Retry-After asked for 120 s.
    await advance(client, "PT30S")
    await asyncio.sleep(0.5)
    assert receiver.numbers() == []
    await advance(client, "PT100S")
    await receiver.wait(lambda: receiver.numbers() == [1])


async def test_last_try_dead_letters_and_shows_error(
    aiohttp_client: Callable[..., Any], receiver: Receiver
) -> None:
    client = await make_client(aiohttp_client, webhook_retry_schedule=[0, 5, 300])
    services = client.server.app[SERVICES]
    prov = await new_provider(client)
    token = prov["token"]
    slots = await seed_slots(client, token, 1)
    created, _ = await subscribe(client, token, receiver.url, criteria="Slot?")
    sid = created["id"]
    receiver.mode = "fail"
    await book(client, prov, slots[0])  # one event: the Slot
    await wait_attempts(client, token, sid, 1)
    await advance(client, "PT6S")
    await wait_attempts(client, token, sid, 2)
    await advance(client, "PT6M")
    rows = await wait_attempts(client, token, sid, 3)
    assert [r["outcome"] for r in rows] == ["dead-lettered", "retrying", "retrying"]
    await wait_status(client, token, sid, "error")
    dead = []
    for _ in range(50):
        # (another test's dead letters may share the broker's queue: only this one's count)
        dead += [
            d
            for d in await services.bus.dead_letters()
            if d.type == c.WEBHOOK_DELIVER and d.body["event"].startswith(sid)
        ]
        if dead:
            break
        await asyncio.sleep(0.05)
    assert dead and dead[0].body["event"].startswith(sid)
    # Replay after fixing the endpoint: delivered, and the subscription is active again.
    receiver.mode = "ok"
    status, out = await call(
        client,
        "POST",
        f"/fhir/Subscription/{sid}/$replay",
        token,
        {
            "resourceType": "Parameters",
            "parameter": [{"name": "eventsSinceNumber", "valueString": "1"}],
        },
    )
    assert status == 200, out
    await receiver.wait(lambda: receiver.numbers() == [1])
    await wait_status(client, token, sid, "active")


# --------------------------------------------------------------------------- replay, heartbeats


async def test_replay_from_a_number_and_from_a_time(
    aiohttp_client: Callable[..., Any], receiver: Receiver
) -> None:
    client = await make_client(aiohttp_client)
    prov = await new_provider(client)
    token = prov["token"]
    slots = await seed_slots(client, token, 2)
    created, secret = await subscribe(client, token, receiver.url, content="id-only")
    sid = created["id"]
    await book(client, prov, slots[0])
    await receiver.wait(lambda: len(receiver.numbers()) == 2)
    status, clock = await call(client, "GET", "/sandbox/clock", token)
    await advance(client, "PT1H")
    await book(client, prov, slots[1])
    await receiver.wait(lambda: len(receiver.numbers()) == 4)
    # id-only: the resource entries carry no resource
    assert all(
        "resource" not in d["body"]["entry"][1] for d in receiver.of_type("event-notification")
    )

    status, out = await call(
        client, "POST", f"/fhir/Subscription/{sid}/$replay?eventsSinceNumber=2", token
    )
    assert status == 200, out
    await receiver.wait(lambda: len(receiver.numbers()) == 7)
    assert sorted(receiver.numbers()[4:]) == [2, 3, 4]

    # From a time: the events of the second booking (an hour later on the sandbox clock).
    status, out = await call(
        client,
        "POST",
        f"/fhir/Subscription/{sid}/$replay",
        token,
        {
            "resourceType": "Parameters",
            "parameter": [{"name": "since", "valueInstant": clock["now"].replace("Z", "+00:00")}],
        },
    )
    assert status == 200, out
    replayed = {p["name"]: p for p in out["parameter"]}
    assert replayed["replayed"]["valueInteger"] == 2
    assert replayed["eventsSinceNumber"]["valueString"] == "3"
    await receiver.wait(lambda: len(receiver.numbers()) == 9)
    assert sorted(receiver.numbers()[7:]) == [3, 4]
    receiver.verify_all(secret)
    # The same event keeps its webhook-id on every send (receivers dedupe on it).
    ids = {d["headers"]["webhook-id"] for d in receiver.of_type("event-notification")}
    assert ids == {f"{sid}-{n}" for n in (1, 2, 3, 4)}
    rows = await deliveries(client, token, sid)
    assert {r["trigger"] for r in rows if r["kind"] == "event"} == {"initial", "replay"}


async def test_heartbeats_follow_the_sandbox_clock(
    aiohttp_client: Callable[..., Any], receiver: Receiver
) -> None:
    client = await make_client(aiohttp_client)
    prov = await new_provider(client)
    _created, secret = await subscribe(client, prov["token"], receiver.url, heartbeat=3600)
    await asyncio.sleep(0.4)
    assert receiver.of_type("heartbeat") == []
    await advance(client, "PT1H1M")
    await receiver.wait(lambda: len(receiver.of_type("heartbeat")) == 1)
    await advance(client, "PT30M")
    await asyncio.sleep(0.4)
    assert len(receiver.of_type("heartbeat")) == 1
    await advance(client, "PT31M")
    await receiver.wait(lambda: len(receiver.of_type("heartbeat")) == 2)
    hb = receiver.of_type("heartbeat")[0]["body"]
    assert params_of(hb)["events-since-subscription-start"]["valueString"] == "0"
    assert len(hb["entry"]) == 1
    receiver.verify_all(secret)
    # A heartbeatPeriod below the minimum is refused.
    status, outcome = await call(
        client, "POST", "/fhir/Subscription", prov["token"], subscription(receiver.url, heartbeat=5)
    )
    assert status == 422, outcome


async def test_no_heartbeat_while_events_flow(
    aiohttp_client: Callable[..., Any], receiver: Receiver
) -> None:
    """A heartbeat keeps a quiet channel alive (Backport IG): traffic within the period
    pushes it back to a period after the last event."""
    client = await make_client(aiohttp_client)
    prov = await new_provider(client)
    token = prov["token"]
    slots = await seed_slots(client, token, 2)
    await subscribe(client, token, receiver.url, heartbeat=3600)
    await advance(client, "PT50M")
    await book(client, prov, slots[0])  # 2 events at 0:50
    await receiver.wait(lambda: len(receiver.numbers()) == 2)
    await advance(client, "PT20M")  # 1:10: a period since the start, 20 min since traffic
    await asyncio.sleep(0.4)
    assert receiver.of_type("heartbeat") == []
    await advance(client, "PT35M")  # 1:45: still less than a period since 0:50
    await asyncio.sleep(0.4)
    assert receiver.of_type("heartbeat") == []
    await advance(client, "PT6M")  # 1:51: a quiet period
    await receiver.wait(lambda: len(receiver.of_type("heartbeat")) == 1)
    hb = receiver.of_type("heartbeat")[0]["body"]
    assert params_of(hb)["events-since-subscription-start"]["valueString"] == "2"
    await book(client, prov, slots[1])  # 1:51, traffic again
    await receiver.wait(lambda: len(receiver.numbers()) == 4)
    await advance(client, "PT59M")
    await asyncio.sleep(0.4)
    assert len(receiver.of_type("heartbeat")) == 1
    await advance(client, "PT2M")
    await receiver.wait(lambda: len(receiver.of_type("heartbeat")) == 2)


async def test_events_are_kept_for_the_retention_then_forgotten(
    aiohttp_client: Callable[..., Any], receiver: Receiver
) -> None:
    client = await make_client(
        aiohttp_client, webhook_event_retention_days=30, token_ttl_seconds=60 * 86400
    )
    prov = await new_provider(client)
    token = prov["token"]
    slots = await seed_slots(client, token, 1)
    created, _ = await subscribe(client, token, receiver.url)
    sid = created["id"]
    await book(client, prov, slots[0])
    await receiver.wait(lambda: len(receiver.numbers()) == 2)
    await advance(client, "P29D")
    await asyncio.sleep(0.3)
    _, bundle = await call(client, "GET", f"/fhir/Subscription/{sid}/$events", token)
    assert event_numbers(bundle) == [1, 2]
    await advance(client, "P2D")
    for _ in range(50):
        _, bundle = await call(client, "GET", f"/fhir/Subscription/{sid}/$events", token)
        if not event_numbers(bundle):
            break
        await asyncio.sleep(0.05)
    assert event_numbers(bundle) == []
    # the count still says how many there were
    params = await status_of(client, token, sid)
    assert params["events-since-subscription-start"]["valueString"] == "2"


# --------------------------------------------------------------------------- sandbox inbox


async def test_sandbox_inbox_keeps_signed_deliveries(aiohttp_client: Callable[..., Any]) -> None:
    client = await make_client(aiohttp_client)
    prov = await new_provider(client)
    token = prov["token"]
    slots = await seed_slots(client, token, 1)
    created, secret = await subscribe(client, token, "sandbox:inbox")
    assert created["status"] == "active"
    await book(client, prov, slots[0])
    inbox: dict[str, Any] = {}
    for _ in range(100):
        resp = await client.get(f"/sandbox/inbox/{prov['provider_id']}")
        inbox = await resp.json()
        if inbox["count"] >= 3:
            break
        await asyncio.sleep(0.05)
    kinds = [notification_type(d["body"]) for d in inbox["deliveries"]]
    assert kinds == ["handshake", "event-notification", "event-notification"]
    for d in inbox["deliveries"]:
        Webhook(secret).verify(d["raw_body"], d["headers"])
    other = await new_provider(client)
    resp = await client.get(f"/sandbox/inbox/{other['provider_id']}")
    assert (await resp.json())["count"] == 0
    resp = await client.delete(f"/sandbox/inbox/{prov['provider_id']}")
    assert (await resp.json())["removed"] == 3


# --------------------------------------------------------------------------- safety


@pytest.mark.parametrize(
    ("endpoint", "mode", "allow", "expected"),
    [
        ("http://127.0.0.1:9/hook", "production", None, 422),
        ("http://localhost:9/hook", "production", None, 422),
        ("http://10.1.2.3/hook", "production", None, 422),
        ("http://169.254.169.254/latest/meta-data", "production", None, 422),
        ("http://[::1]:9/hook", "production", None, 422),
        ("ftp://example.org/hook", "sandbox", None, 422),
        ("sandbox:inbox", "production", None, 422),
        ("http://user:pw@example.org/hook", "sandbox", None, 422),
    ],
)
async def test_endpoint_refusals(
    aiohttp_client: Callable[..., Any], endpoint: str, mode: str, allow: bool | None, expected: int
) -> None:
    client = await make_client(aiohttp_client, cer_mode=mode, webhook_allow_private_addresses=allow)
    token = await _token(client)
    status, outcome = await call(
        client, "POST", "/fhir/Subscription", token, subscription(endpoint)
    )
    assert status == expected, outcome
    assert outcome["issue"][0]["expression"] == ["Subscription.channel.endpoint"]


async def test_private_endpoint_allowed_by_the_setting_in_production(
    aiohttp_client: Callable[..., Any], receiver: Receiver
) -> None:
    client = await make_client(
        aiohttp_client, cer_mode="production", webhook_allow_private_addresses=True
    )
    token = await _token(client)
    status, created = await call(
        client, "POST", "/fhir/Subscription", token, subscription(receiver.url)
    )
    assert status == 201 and created["status"] == "active", created


async def _token(client: Any) -> str:
    """A provider token without the sandbox (production mode has no /sandbox/providers)."""
    services = client.server.app[SERVICES]
    from gateway.auth import Principal

    await services.store.insert(
        c.PROVIDERS, {"_id": "prov-prod", "client_id": "cp", "public_key_pem": ""}
    )
    return str(services.tokens.issue(Principal("provider", "prov-prod")))


async def test_secret_rotation_signs_with_both_for_the_overlap(
    aiohttp_client: Callable[..., Any], receiver: Receiver
) -> None:
    client = await make_client(aiohttp_client, webhook_secret_overlap_seconds=3600)
    prov = await new_provider(client)
    token = prov["token"]
    slots = await seed_slots(client, token, 2)
    created, old = await subscribe(client, token, receiver.url, criteria="Appointment?")
    status, out = await call(
        client, "POST", f"/fhir/Subscription/{created['id']}/$rotate-secret", token
    )
    assert status == 200, out
    new = next(p["valueString"] for p in out["parameter"] if p["name"] == "secret")
    assert new.startswith("whsec_") and new != old
    await book(client, prov, slots[0])
    await receiver.wait(lambda: receiver.numbers() == [1])
    last = receiver.of_type("event-notification")[-1]
    assert len(last["headers"]["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(last["raw"], last["headers"])
    Webhook(new).verify(last["raw"], last["headers"])
    # After the overlap only the new secret signs.
    await advance(client, "PT2H")
    await book(client, prov, slots[1])
    await receiver.wait(lambda: receiver.numbers() == [1, 2])
    last = receiver.of_type("event-notification")[-1]
    assert len(last["headers"]["webhook-signature"].split(" ")) == 1
    Webhook(new).verify(last["raw"], last["headers"])
    # The secret is never shown again.
    status, sub = await call(client, "GET", f"/fhir/Subscription/{created['id']}", token)
    assert "whsec_" not in str(sub)


# --------------------------------------------------------------------------- the resource


async def test_subscription_crud_search_and_tenancy(
    aiohttp_client: Callable[..., Any], receiver: Receiver
) -> None:
    client = await make_client(aiohttp_client)
    a = await new_provider(client)
    b = await new_provider(client)
    created, _ = await subscribe(
        client, a["token"], receiver.url, headers=["Authorization: Bearer abc"]
    )
    sid = created["id"]
    assert created["meta"]["versionId"] == "1"
    assert receiver.deliveries[0]["headers"]["Authorization"] == "Bearer abc"
    for method in ("GET", "PUT", "DELETE"):
        status, _ = await call(
            client,
            method,
            f"/fhir/Subscription/{sid}",
            b["token"],
            created if method == "PUT" else None,
        )
        assert status == 404
    status, _ = await call(client, "GET", f"/fhir/Subscription/{sid}/$status", b["token"])
    assert status == 404
    status, bundle = await call(client, "GET", "/fhir/Subscription", b["token"])
    assert bundle["total"] == 0
    status, bundle = await call(client, "GET", "/fhir/Subscription?status=active", a["token"])
    assert [e["resource"]["id"] for e in bundle["entry"]] == [sid]
    status, bundle = await call(client, "GET", "/fhir/Subscription?endpoint=x", a["token"])
    assert status == 400
    status, bundle = await call(client, "GET", "/fhir/Subscription/$status", a["token"])
    assert status == 200 and bundle["total"] == 1
    assert bundle["entry"][0]["resource"]["resourceType"] == "Parameters"
    status, bundle = await call(client, "GET", "/fhir/Subscription/$status", b["token"])
    assert bundle["total"] == 0
    # Update with If-Match; a stale one is 412; off pauses.
    resp = await client.put(
        f"/fhir/Subscription/{sid}",
        json={**created, "status": "off"},
        headers={
            "Authorization": f"Bearer {a['token']}",
            "Content-Type": "application/fhir+json",
            "If-Match": 'W/"1"',
        },
    )
    assert resp.status == 200
    assert (await resp.json())["status"] == "off"
    resp = await client.put(
        f"/fhir/Subscription/{sid}",
        json=created,
        headers={
            "Authorization": f"Bearer {a['token']}",
            "Content-Type": "application/fhir+json",
            "If-Match": 'W/"1"',
        },
    )
    assert resp.status == 412
    status, outcome = await call(
        client,
        "POST",
        "/fhir/Subscription",
        a["token"],
        {**subscription(receiver.url), "criteria": "Appointment?status=booked"},
    )
    assert status == 422 and outcome["issue"][0]["expression"] == ["Subscription.criteria"]
    status, outcome = await call(
        client,
        "POST",
        "/fhir/Subscription",
        a["token"],
        subscription(receiver.url, headers=["webhook-signature: x"]),
    )
    assert status == 422
    status, _ = await call(client, "DELETE", f"/fhir/Subscription/{sid}", a["token"])
    assert status == 204
    status, _ = await call(client, "GET", f"/fhir/Subscription/{sid}", a["token"])
    assert status == 404


async def test_handshake_failure_shows_error(
    aiohttp_client: Callable[..., Any], receiver: Receiver
) -> None:
    client = await make_client(aiohttp_client)
    prov = await new_provider(client)
    receiver.mode = "fail"
    status, created = await call(
        client, "POST", "/fhir/Subscription", prov["token"], subscription(receiver.url)
    )
    assert status == 201
    assert created["status"] == "error"
    assert "handshake failed" in created["error"]
    receiver.mode = "ok"
    status, sub = await call(
        client,
        "PUT",
        f"/fhir/Subscription/{created['id']}",
        prov["token"],
        {**created, "status": "requested"},
    )
    assert status == 200 and sub["status"] == "active"
    settings: Settings = client.server.app[SERVICES].settings
    assert settings.webhook_timeout_seconds == 15.0
