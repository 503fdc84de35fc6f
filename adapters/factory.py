"""One place that picks each adapter from the settings: no URL means the embedded twin."""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapters.clock import SandboxClock, SystemClock

if TYPE_CHECKING:
    from gateway.ports import (
        Clock,
        Eligibility,
        EmailSender,
        MessageBus,
        PushSender,
        SmsSender,
        Store,
        WebhookSender,
    )
    from gateway.settings import Settings


def make_clock(settings: Settings) -> Clock:
    return SandboxClock() if settings.sandbox else SystemClock()


def make_store(settings: Settings) -> Store:
    if settings.mongodb_url:
        from adapters.mongo_store import MongoStore

        if settings.mongodb_url.startswith("mongomock://"):
            # the in-process emulator the test suite runs the Mongo adapter on
            from adapters.mongo_emulator import emulator_client

            return MongoStore(None, settings.mongodb_db, client_factory=emulator_client)
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
            retry_delays=settings.bus_retry_delays,
        )
    from adapters.memory_bus import MemoryBus

    return MemoryBus(
        clock,
        partitions=settings.command_partitions,
        retry_delays=settings.bus_retry_delays,
        prefetch=settings.prefetch,
    )


def make_sms(settings: Settings) -> SmsSender:
    if settings.sms_gateway_url:
        from adapters.http_channels import HttpSmsSender

        return HttpSmsSender(
            settings.sms_gateway_url,
            token=settings.sms_gateway_token,
            sender_name=settings.sms_sender_name,
            timeout=settings.channel_timeout_seconds,
        )
    from adapters.memory_channels import RecordingSms

    return RecordingSms()


def make_email(settings: Settings) -> EmailSender:
    if settings.smtp_host:
        from adapters.smtp_email import SmtpEmailSender

        return SmtpEmailSender(
            settings.smtp_host,
            settings.smtp_port,
            sender=settings.email_from,
            username=settings.smtp_username,
            password=settings.smtp_password,
            security=settings.smtp_security,
            timeout=settings.channel_timeout_seconds,
        )
    from adapters.memory_channels import RecordingEmail

    return RecordingEmail()


def make_push(settings: Settings) -> PushSender:
    if settings.push_url:
        from adapters.http_channels import HttpPushSender

        return HttpPushSender(
            settings.push_url, token=settings.push_token, timeout=settings.channel_timeout_seconds
        )
    from adapters.memory_channels import RecordingPush

    return RecordingPush()


def make_webhook_sender(settings: Settings, store: Store, clock: Clock) -> WebhookSender:
    """HTTP(S) delivery, plus the ``sandbox:inbox`` twin in sandbox mode."""
    from adapters.webhook_http import HttpWebhookSender
    from adapters.webhook_inbox import InboxWebhookSender
    from adapters.webhook_router import WebhookRouter

    http = HttpWebhookSender(allow_private=settings.private_webhooks_allowed)
    inbox = InboxWebhookSender(store, clock) if settings.sandbox else None
    return WebhookRouter(http, inbox)


def make_eligibility(settings: Settings, store: Store) -> Eligibility:
    """Screening eligibility (SIMP, R-PAT-4): the embedded one decides from the store's history.

    No SIMP web-service adapter exists yet; it would be chosen here from its URL.
    """
    from adapters.eligibility import StoreEligibility

    return StoreEligibility(store)
