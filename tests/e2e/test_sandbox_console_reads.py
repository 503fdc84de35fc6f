"""The console's read side (``gateway.sandbox_console``) on a real app: a provider's
deliveries with their tries and kept requests, the failing ones across providers, and why."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gateway import sandbox_console as console
from gateway.http.app import create_app
from gateway.http.keys import SERVICES
from tests.e2e.conftest import purge_rabbit, settings_for, uses_rabbit
from tests.e2e.console_support import scene
from tests.e2e.webhook_support import Receiver

FAST = {
    "webhook_sweep_seconds": 0.1,
    "webhook_sweep_grace_seconds": 0.5,
    "token_ttl_seconds": 7 * 86400,
    "webhook_retry_schedule": [0, 5, 300],
}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    r.mode = "fail"
    await r.start()
    yield r
    await r.stop()


async def until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    for _ in range(int(timeout / 0.05)):
        found = await predicate()
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.mark.parametrize(
    "backend", ["embedded", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)]
)
async def test_deliveries_tries_and_the_reason_of_a_failure(
    aiohttp_client: Callable[..., Any], receiver: Receiver, backend: str
) -> None:
    """R-SCHED-4: the patient's booking reaches both subscriptions; the inbox one is kept
    signed, the 500 one fails with its reason, and the console finds it across providers."""
    settings = settings_for(backend, **FAST)
    if uses_rabbit(backend):
        await purge_rabbit(settings)
    else:
        settings = settings_for(backend, amqp_url=None, **FAST)
    client = await aiohttp_client(create_app(settings))
    store = client.server.app[SERVICES].store
    s = await scene(client, receiver.url)
    tenant = s.clinic.provider_id

    async def both_tried() -> list[console.Delivery] | None:
        found = await console.provider_deliveries(store, tenant)
        events = [d for d in found if d.kind == "event-notification"]
        ok = len(events) == 4 and all(d.tries >= 1 for d in events)
        return found if ok else None

    found = await until(both_tried)
    inbox = [d for d in found if d.inbox and d.kind == "event-notification"]
    failing = [
        d
        for d in found
        if d.subscription == s.failing_subscription and d.kind == "event-notification"
    ]
    # Appointment created and Slot updated, to each subscription
    assert sorted(d.focus.split("/")[0] for d in inbox if d.focus) == ["Appointment", "Slot"]
    assert all(d.status == "delivered" and len(d.captures) == 1 for d in inbox)
    assert all(d.captures[0].signature.ok for d in inbox)
    assert '"resourceType": "Bundle"' in inbox[0].captures[0].pretty_body
    shakes = {d.endpoint: d for d in found if d.kind == "handshake"}
    assert shakes["sandbox:inbox"].status == "delivered"
    failed_shake = shakes[receiver.url]
    assert failed_shake.status == "failed" and failed_shake.attempts[0].status_code == 500
    why = failed_shake.reason()
    assert why is not None
    assert why.english() == "the endpoint did not accept it: HTTP 500 (down for maintenance)"
    assert len(failing) == 2 and all(d.failing and d.status == "pending" for d in failing)
    reason = failing[0].reason()
    assert reason is not None
    assert "HTTP 500 (down for maintenance)" in reason.english()
    assert failing[0].attempts[0].status_code == 500 and failing[0].next_attempt_at

    # pages: the same order, a page at a time
    keys = [d.key for d in found]
    assert len(keys) == 6  # 2 events to each subscription, 2 handshakes
    assert [d.key for d in await console.provider_deliveries(store, tenant, limit=3, skip=2)] == (
        keys[2:5]
    )
    mine = await console.failing_deliveries(store, tenant=tenant)
    assert {d.key for d in mine} == {d.key for d in failing}
    assert await console.failing_deliveries(store, tenant="prov-someone-else") == []
    assert [d.key for d in await console.refused_handshakes(store, tenant)] == [failed_shake.key]

    front = await console.failing_deliveries(store)
    assert {d.key for d in front} == {d.key for d in failing}
    assert [sub["_id"] for sub in await console.failing_subscriptions(store)] == [
        s.failing_subscription
    ]
    rows = {r.id: r for r in await console.providers(store)}
    assert rows[tenant].subscriptions == 2 and rows[tenant].failing == 2

    detail = await console.delivery(store, tenant, failing[0].key, base="http://x")
    assert detail is not None and detail.payload and '"event-notification"' in detail.payload
    assert await console.delivery(store, "prov-someone-else", failing[0].key, base="") is None
    capture = inbox[0].captures[0]
    # a kept request opens its event's delivery
    opened = await console.delivery(store, tenant, capture.id, base="")
    assert opened is not None and opened.key == inbox[0].key and opened.attempts
    handshake = shakes["sandbox:inbox"]
    again = await console.delivery(store, tenant, handshake.key, base="")
    assert again is not None and again.captures[0].signature.ok
    tried = await console.delivery(store, tenant, failed_shake.key, base="")
    assert tried is not None and tried.status == "failed" and tried.attempts
    assert await console.delivery(store, "prov-someone-else", failed_shake.key, base="") is None
