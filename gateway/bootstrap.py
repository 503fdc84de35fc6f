"""Wiring: the one place that builds the adapters and the services from settings.

Nothing connects here; ``start`` / ``stop`` open and close the resources inside
the running event loop (the app factory calls them from ``cleanup_ctx``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from dataclasses import dataclass, field
from datetime import timedelta

import structlog

from adapters.clock import SandboxClock, SystemClock
from adapters.factory import (
    make_bus,
    make_clock,
    make_eligibility,
    make_email,
    make_push,
    make_sms,
    make_store,
)
from gateway import constants as c
from gateway.auth import TokenService
from gateway.metrics import Metrics
from gateway.notifications import Notifier
from gateway.ports import Clock, MessageBus, Store
from gateway.schema import INDEXES
from gateway.settings import Settings
from gateway.waiting_service import WaitingRoomService
from gateway.webhooks import Webhooks
from gateway.worker import CommandWorker, relay_outbox

log = structlog.get_logger("gateway.bootstrap")


@dataclass
class Services:
    """Everything a handler may need, built once per process."""

    settings: Settings
    store: Store
    bus: MessageBus
    clock: Clock
    tokens: TokenService
    metrics: Metrics
    outbox_signal: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Webhooks to providers (issue 6): built by start() with their sender.
    webhooks: Webhooks | None = None
    # Patient notifications (issue 7): the channels and the service that uses them.
    notifier: Notifier | None = None
    # The waiting room (issue 5): its consumer, clock task and estimates.
    waiting: WaitingRoomService | None = None


def build_services(
    settings: Settings,
    *,
    store: Store | None = None,
    bus: MessageBus | None = None,
    clock: Clock | None = None,
) -> Services:
    clock = clock or make_clock(settings)
    secret = (settings.token_secret or secrets.token_hex(32)).encode()
    services = Services(
        settings=settings,
        store=store or make_store(settings),
        bus=bus or make_bus(settings, clock),
        clock=clock,
        # Token lifetimes are security, not domain time: they follow the wall clock even
        # when the sandbox clock has been moved (a tester's token survives "advance P7D").
        tokens=TokenService(secret, settings.token_ttl_seconds, SystemClock()),
        metrics=Metrics(),
    )
    services.notifier = make_notifier(services)
    services.waiting = WaitingRoomService(
        services.store, services.bus, services.clock, settings, services.metrics
    )
    return services


def make_notifier(services: Services) -> Notifier:
    """The notification service on the channels the settings choose (twins when unset)."""
    settings = services.settings
    return Notifier(
        services.store,
        services.clock,
        services.metrics,
        sms=make_sms(settings),
        email=make_email(settings),
        push=make_push(settings),
        sandbox=settings.sandbox,
        language=settings.notification_language,
        push_secret=settings.push_address_secret,
        retry_tiers=len(settings.retry_delays),
        outbox_signal=services.outbox_signal,
        reminder_poll_seconds=settings.reminder_poll_seconds,
    )


async def start(services: Services, *, workers: bool) -> None:
    await services.store.start(INDEXES)
    await services.bus.start()
    await _start_webhooks(services)
    if isinstance(services.clock, SandboxClock):
        await _load_clock(services)
        services.tasks.append(asyncio.create_task(_follow_clock(services), name="clock-sync"))
    if workers:
        worker = CommandWorker(
            services.store,
            services.bus,
            services.clock,
            services.metrics,
            services.outbox_signal,
            retry_tiers=len(services.settings.retry_delays),
            # Ports the command handlers name besides store and clock (gateway.handlers).
            dependencies={
                "eligibility": make_eligibility(services.settings, services.store),
                "settings": services.settings,
            },
        )
        await worker.start()
        if services.webhooks is not None:
            # Dispatch, deliveries, and the sweeper that follows the app clock (issue 6).
            await services.webhooks.start()
            services.tasks.append(
                asyncio.create_task(services.webhooks.run_sweeper(), name="webhook-sweeper")
            )
        if services.notifier is not None:
            # Patient notifications and the reminder task (issue 7, R-NOT-1, R-NOT-2).
            await services.notifier.start(services.bus)
            services.tasks.append(
                asyncio.create_task(services.notifier.run_reminders(), name="reminders")
            )
        if services.waiting is not None:
            # The waiting room: slot events, the nightly unlock, proposal time-outs (issue 5).
            await services.waiting.start()
            services.tasks.append(asyncio.create_task(services.waiting.run(), name="waiting-room"))
        services.tasks.append(
            asyncio.create_task(
                relay_outbox(
                    services.store,
                    services.bus,
                    services.metrics,
                    services.outbox_signal,
                    services.settings.outbox_poll_seconds,
                ),
                name="outbox-relay",
            )
        )
    log.info(
        "gateway.started",
        pid=os.getpid(),
        workers=workers,
        mode=services.settings.cer_mode,
        bus=type(services.bus).__name__,
        store=type(services.store).__name__,
    )


async def stop(services: Services, grace: float = 10.0) -> None:
    for task in services.tasks:
        task.cancel()
    if services.tasks:
        # Bounded: a task that swallowed its cancellation must not hang shutdown.
        _, stuck = await asyncio.wait(services.tasks, timeout=grace)
        for task in stuck:
            log.error("gateway.task_did_not_stop", task=task.get_name())
    services.tasks.clear()
    await services.bus.close()
    await _stop_webhooks(services)
    if services.notifier is not None:
        await services.notifier.close()
    await services.store.close()


async def save_clock(services: Services) -> None:
    """Share the sandbox clock's offset with other processes (API and workers)."""
    assert isinstance(services.clock, SandboxClock)
    await services.store.update_one(
        c.CLOCK,
        {"_id": "sandbox"},
        {"$set": {"offset_seconds": services.clock.offset.total_seconds()}},
        upsert=True,
    )


async def _load_clock(services: Services) -> None:
    assert isinstance(services.clock, SandboxClock)
    doc = await services.store.get(c.CLOCK, "sandbox")
    if doc is not None:
        services.clock.set_offset(timedelta(seconds=float(doc["offset_seconds"])))


async def _follow_clock(services: Services) -> None:
    while True:
        await asyncio.sleep(1.0)
        with contextlib.suppress(Exception):
            await _load_clock(services)


async def _start_webhooks(services: Services) -> None:
    """The webhook sender (API: handshakes; workers: deliveries) and its service."""
    from adapters.factory import make_webhook_sender

    if services.webhooks is None:
        sender = make_webhook_sender(services.settings, services.store, services.clock)
        services.webhooks = Webhooks(
            services.store,
            services.bus,
            services.clock,
            sender,
            services.settings,
            metrics=services.metrics,
        )
    await services.webhooks.sender.start()


async def _stop_webhooks(services: Services) -> None:
    if services.webhooks is not None:
        await services.webhooks.close()
        await services.webhooks.sender.close()
