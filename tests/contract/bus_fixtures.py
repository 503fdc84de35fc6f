"""Bus fixtures for the contract suite: the embedded bus and RabbitMQ, same tests.

``bus_harness`` is parametrized over both adapters; ``rabbit_harness`` and
``memory_harness`` are for the tests that only make sense on one of them. The
RabbitMQ side deletes the ``cer.*`` queues before and after each test (the
tests run serially against one broker), and skips, saying why, when the broker
cannot be reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aio_pika
import pytest

from adapters.clock import SandboxClock
from adapters.memory_bus import MemoryBus
from adapters.rabbit_bus import RabbitBus, delete_queues, queue_names

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1/")
PARTITIONS = 4
PREFETCH = 32
RETRY_DELAYS = [0.05, 0.1]
# Every consumer group a bus test uses: their queues are deleted around each test.
EVENT_GROUPS = ("audit", "slots", "webhooks", "ordering")

_swept = False


def _leftover_queues() -> list[str]:
    """``cer.*`` queues from earlier runs (other partition counts, groups or tiers)."""
    try:
        out = subprocess.run(
            ["rabbitmqctl", "list_queues", "-q", "--no-table-headers", "name"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [
        n.strip()
        for n in out.splitlines()
        if n.strip().startswith("cer.") and not n.strip().startswith("cer.reply.")
    ]


async def _rabbit_reachable() -> str | None:
    try:
        conn = await aio_pika.connect(AMQP_URL, timeout=3)
    except Exception as exc:
        return f"RabbitMQ unreachable at {AMQP_URL}: {exc!r}"
    await conn.close()
    return None


@dataclass
class BusHarness:
    """A started bus plus what a test needs to restart or crash its consumer side."""

    kind: str
    bus: Any
    clock: SandboxClock

    def new_bus(self, **overrides: Any) -> Any:
        if self.kind == "memory":
            return MemoryBus(
                self.clock,
                partitions=PARTITIONS,
                retry_delays=overrides.pop("retry_delays", RETRY_DELAYS),
                prefetch=PREFETCH,
                close_timeout=1.0,
                **overrides,
            )
        return RabbitBus(
            AMQP_URL,
            partitions=PARTITIONS,
            prefetch=PREFETCH,
            retry_delays=overrides.pop("retry_delays", RETRY_DELAYS),
            close_timeout=1.0,
            reconnect_interval=0.5,
            **overrides,
        )

    async def reopen(self) -> Any:
        """Close the bus (graceful: running handlers get ``close_timeout``) and open it again.

        The embedded bus is its own broker, so the same object restarts; on
        RabbitMQ a new bus (a new connection) replaces the old one.
        """
        await self.bus.close()
        if self.kind == "rabbitmq":
            self.bus = self.new_bus()
        await self.bus.start()
        return self.bus

    async def crash(self) -> None:
        """Kill the consumer side as a dying process would: no acks, no grace."""
        bus = self.bus
        if self.kind == "memory":
            bus._close_timeout = 0.0
            await bus.close()
            return
        for task in list(bus._inflight):
            task.cancel()
        await bus._conn.close()  # the broker requeues everything unacked
        bus._conn = None


@contextlib.asynccontextmanager
async def make_harness(kind: str) -> AsyncIterator[BusHarness]:
    global _swept
    clock = SandboxClock()
    if kind == "rabbitmq":
        reason = await _rabbit_reachable()
        if reason is not None:
            print(reason)
            pytest.skip(reason)
        names = queue_names(PARTITIONS, RETRY_DELAYS, EVENT_GROUPS)
        if not _swept:
            names = sorted(set(names) | set(_leftover_queues()))
            _swept = True
        await delete_queues(AMQP_URL, names)
    harness = BusHarness(kind, None, clock)
    harness.bus = harness.new_bus()
    await harness.bus.start()
    try:
        yield harness
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(harness.bus.close(), 15)
        if kind == "rabbitmq":
            await delete_queues(AMQP_URL, queue_names(PARTITIONS, RETRY_DELAYS, EVENT_GROUPS))


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
async def bus_harness(request: pytest.FixtureRequest) -> AsyncIterator[BusHarness]:
    async with make_harness(request.param) as harness:
        yield harness


@pytest.fixture
async def bus(bus_harness: BusHarness) -> Any:
    return bus_harness.bus


@pytest.fixture
async def rabbit_harness() -> AsyncIterator[BusHarness]:
    async with make_harness("rabbitmq") as harness:
        yield harness


@pytest.fixture
async def memory_harness() -> AsyncIterator[BusHarness]:
    async with make_harness("memory") as harness:
        yield harness
