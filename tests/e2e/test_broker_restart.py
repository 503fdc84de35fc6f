"""A broker restart in the middle of 1,000 commands: none lost, none applied twice.

Runs the whole gateway (API + workers) on the real RabbitMQ and stops the broker's
app (``rabbitmqctl stop_app``) while commands are being sent, then starts it again.
"""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import pytest

from gateway import constants as c
from gateway.events import command
from gateway.http.app import create_app
from gateway.http.fhir import prepare
from gateway.http.keys import SERVICES
from tests.e2e.conftest import new_provider, purge_rabbit, settings_for

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

N = 1000


async def rabbitmqctl(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl", *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    await asyncio.wait_for(proc.wait(), 60)


async def test_broker_restart_loses_nothing_and_applies_nothing_twice(
    aiohttp_client: Any,
) -> None:
    settings = settings_for("rabbitmq", command_timeout_seconds=60.0)
    await purge_rabbit(settings)
    client = await aiohttp_client(create_app(settings))
    services = client.server.app[SERVICES]
    prov = await new_provider(client)
    tenant = prov["provider_id"]
    sent = 0
    third_sent = asyncio.Event()
    broker_down = asyncio.Event()

    async def send(i: int) -> None:
        nonlocal sent
        loc = {"resourceType": "Location", "status": "active", "name": f"Clinic {i}"}
        msg = command(
            "fhir.write",
            {"mode": "single", "ops": [prepare("PUT", "Location", f"loc-{i}", loc)]},
            tenant=tenant,
            correlation_id=f"restart-{i}",
            now=services.clock.now(),
        )
        if i >= N // 2:
            # The second half goes out only once the broker is down (a loaded machine
            # could otherwise send all of it while ``rabbitmqctl stop_app`` starts).
            await broker_down.wait()
        await services.bus.send(msg)
        sent += 1
        if sent >= N * 0.3:
            third_sent.set()

    async def sender() -> None:
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with sem:
                await send(i)

        await asyncio.gather(*(one(i) for i in range(N)))

    task = asyncio.create_task(sender())
    ready_during_outage = None
    try:
        await asyncio.wait_for(third_sent.wait(), 60)
        await rabbitmqctl("stop_app")
        broker_down.set()
        await asyncio.sleep(1.0)
        resp = await client.get("/health/ready")
        ready_during_outage = resp.status
        sent_during_outage = sent
    finally:
        broker_down.set()
        await rabbitmqctl("start_app")
    await asyncio.wait_for(task, 120)
    assert ready_during_outage == 503
    assert sent_during_outage < N, "every command was sent before the broker stopped"

    store = services.store
    tenant_filter = {"tenant": tenant, "type": "Location"}
    for _ in range(600):
        if await store.count(c.RESOURCES, tenant_filter) == N:
            break
        await asyncio.sleep(0.1)
    docs = await store.find(c.RESOURCES, tenant_filter)
    assert len(docs) == N, f"lost {N - len(docs)} commands"
    twice = [d["rid"] for d in docs if d["version"] != 1]
    assert twice == [], f"applied more than once: {twice[:10]}"
    # Each written once: one version each, the document (none superseded in the history).
    assert await store.count(c.HISTORY, tenant_filter) == 0
    for _ in range(200):
        if not await store.pending_events(10):
            break
        await asyncio.sleep(0.1)
    assert await store.pending_events(10) == []
    # Ready again once the connection is back (aio-pika reconnects every second).
    statuses = []
    for _ in range(30):
        resp = await client.get("/health/ready")
        statuses.append(resp.status)
        if resp.status == 200:
            break
        await asyncio.sleep(1.0)
    assert statuses[-1] == 200, f"not ready 30 s after the broker came back: {statuses}"
