"""One place that picks each adapter from the settings: no URL means the embedded twin."""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapters.clock import SandboxClock, SystemClock

if TYPE_CHECKING:
    from gateway.ports import Clock, MessageBus, Store
    from gateway.settings import Settings


def make_clock(settings: Settings) -> Clock:
    return SandboxClock() if settings.sandbox else SystemClock()


def make_store(settings: Settings) -> Store:
    if settings.mongodb_url:
        from adapters.mongo_store import MongoStore

        return MongoStore(settings.mongodb_url, settings.mongodb_db)
    from adapters.memory_store import MemoryStore

    return MemoryStore()


def make_bus(settings: Settings, clock: Clock) -> MessageBus:
    if settings.amqp_url:
        from adapters.rabbit_bus import RabbitBus

        return RabbitBus(
            settings.amqp_url,
            partitions=settings.command_partitions,
            prefetch=settings.prefetch,
            retry_delays=settings.retry_delays,
        )
    from adapters.memory_bus import MemoryBus

    return MemoryBus(
        clock,
        partitions=settings.command_partitions,
        retry_delays=settings.retry_delays,
        prefetch=settings.prefetch,
    )
