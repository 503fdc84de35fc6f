"""Settings from the environment (pydantic-settings). Documented in the README table."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the gateway. No URL means the embedded twin of that adapter."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    cer_mode: Literal["production", "sandbox"] = "production"
    host: str = "127.0.0.1"
    port: int = 8080
    amqp_url: str | None = None
    mongodb_url: str | None = None
    mongodb_db: str = "cer_gateway"
    log_level: str = "INFO"

    # Public base URL used in Location headers and Bundle links; derived from the
    # request when empty.
    public_base_url: str = ""
    # Signing key for access tokens (HS256). Generated at start-up when empty,
    # which is fine for one process; set it when API processes are scaled out.
    token_secret: str = ""
    token_ttl_seconds: int = 3600
    # Seconds the API waits for a command's outcome before answering 504-like.
    command_timeout_seconds: float = 30.0
    # Number of command partitions (queues); one provider always maps to one.
    command_partitions: int = 4
    prefetch: int = 64
    # Delays (seconds) of the retry tiers for a failing message; then dead-lettered.
    retry_delays: list[float] = Field(default_factory=lambda: [1.0, 5.0, 30.0, 300.0])
    max_body_bytes: int = 10 * 1024 * 1024
    # Outbox relay poll period when nothing signalled a new event (seconds).
    outbox_poll_seconds: float = 0.5
    # Seed sample data (a sandbox provider with a week of slots) at start-up.
    sample_data: bool = False
    # Garbage-collector policy with the embedded store (gateway/gc_policy.py): every this
    # many seconds collect what is new and freeze what survived, so collections skip the
    # documents (0 = off); thaw and collect everything every GC_THAW_SECONDS.
    gc_freeze_seconds: float = 0.05
    gc_thaw_seconds: float = 900.0

    # Patient notifications (issue 7, R-NOT-1..4). An unset URL / host means the
    # embedded twin of that channel, which only records (and, in sandbox mode,
    # everything sent is also captured for GET /sandbox/outbox).
    # E-mail over SMTP: host, port, login, security (auto = STARTTLS when offered,
    # none, starttls, tls = implicit TLS) and the From header.
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_security: Literal["auto", "none", "starttls", "tls"] = "auto"
    email_from: str = "Centralna e-Rejestracja <no-reply@cer-gateway.org>"
    # SMS through an HTTP SMS gateway: POST {to, text, from, id} with a bearer token.
    sms_gateway_url: str = ""
    sms_gateway_token: str = ""
    sms_sender_name: str = "CeR"
    # Push through an HTTP push service: POST {to, title, body, data, id} with a bearer token.
    push_url: str = ""
    push_token: str = ""
    # Key of the HMAC pseudonym that addresses a patient's app account in push
    # messages (never the PESEL); shared with the push service.
    push_address_secret: str = "cer-push-sandbox"
    # Seconds one channel call (SMTP or HTTP) may take before it counts as failed.
    channel_timeout_seconds: float = 10.0
    # Language of patient messages: pl (default) or en.
    notification_language: Literal["pl", "en"] = "pl"
    # Longest sleep of the reminder task between looks at the store (seconds);
    # it also wakes when a reminder is scheduled here or the sandbox clock moves.
    reminder_poll_seconds: float = 30.0
    # Bearer token the SMS gateway must send to POST /channels/sms/inbound (open when empty).
    sms_inbound_token: str = ""

    # The waiting room (issue 5, R-WAIT-1..7, R-CAN-2, R-SCHED-6). Each night the
    # next day's slots become bookable (R-SCHED-6): the waiting room takes them
    # this many seconds before midnight (Europe/Warsaw), everyone else at midnight.
    waiting_room_unlock_lead_seconds: float = 600.0
    # How long a patient has to accept or decline a 48-72 h proposal (R-CAN-2),
    # on the app clock; then the next candidate is asked.
    waiting_room_proposal_answer_seconds: float = 7200.0
    # Queue credit (days) by which an urgent case and an out-of-turn entitlement
    # rank ahead of first come first served (R-WAIT-5). Bounded, so no entry
    # waits forever behind later ones with the same or looser criteria.
    waiting_room_urgent_credit_days: float = 60.0
    waiting_room_privileged_credit_days: float = 30.0
    # Longest sleep of the waiting room's clock task (seconds); it also wakes when
    # the sandbox clock moves.
    waiting_room_poll_seconds: float = 30.0
    # Seconds an estimate's snapshot of slots and queue is reused (0 = never).
    waiting_room_estimate_cache_seconds: float = 10.0

    # Webhooks to providers (issue 6). Delay in seconds before each try of one
    # event: the first at once, then a Svix-like backoff (5 s, 5 min, 30 min, 2 h,
    # 5 h, 10 h, 10 h); after the last try the event is dead-lettered. Every
    # delay gets a broker retry tier (see ``bus_retry_delays``).
    webhook_retry_schedule: list[float] = Field(
        default_factory=lambda: [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
    )
    # Seconds one delivery (or handshake, heartbeat) may take.
    webhook_timeout_seconds: float = 15.0
    # A 429/503 Retry-After is honoured up to this many seconds.
    webhook_retry_after_max_seconds: float = 36000.0
    # Days a subscription's events are kept for $events and $replay.
    webhook_event_retention_days: float = 30.0
    # Seconds the previous secret still signs (a second signature) after a rotation.
    webhook_secret_overlap_seconds: float = 86400.0
    # Loopback / private / link-local endpoints (SSRF): None = refused in
    # production, allowed in sandbox; true or false forces it.
    webhook_allow_private_addresses: bool | None = None
    # Shortest heartbeatPeriod accepted (seconds).
    webhook_min_heartbeat_seconds: int = 60
    # The sweeper (due retries, heartbeats, retention) looks at the store this
    # often, and at once when the sandbox clock moves. It sends a due try itself
    # when the broker's copy is not due back yet in real time (the sandbox clock
    # is ahead) or is this many seconds late (lost with a crashed worker).
    webhook_sweep_seconds: float = 1.0
    webhook_sweep_grace_seconds: float = 60.0
    # An endpoint whose every try (events, heartbeats) failed for this many days is
    # disabled (Svix-like): status error, new events kept but not sent until the
    # provider PUTs the subscription again or calls $replay (0 = never). A 410 Gone
    # turns it off at once.
    webhook_disable_after_days: float = 5.0
    # Initial import (R-SCHED-5): a running import whose client sent no chunk for this
    # many seconds is failed, so a crashed client cannot freeze a provider for ever
    # (its run can still be resumed: the job re-opens when chunks come again).
    import_stale_seconds: float = 900.0
    # Processes that validate import chunks beside the API's event loop (another core
    # does fhir.resources' work while the loop applies the previous chunk); 0: inline.
    import_validation_processes: int = 1
    # The same for large Bundles at POST /fhir (a vendor's transaction of hundreds of
    # slots): validated and mapped in another process while the loop applies the
    # previous one; Bundles under 128 KiB stay inline. 0: always inline.
    bundle_validation_processes: int = 1

    # Manual-entry web pages at /ui/ (issue 10). Their session lives in an encrypted
    # (Fernet), http-only, SameSite=Lax cookie. Key: UI_SESSION_SECRET, else derived from
    # TOKEN_SECRET, else random at start-up (fine for one process; set one of them when
    # API processes are scaled out). Secure flag: on by default (browsers keep Secure
    # cookies from http://127.0.0.1 and http://localhost); turn it off only to try the
    # pages over plain http on another host name.
    ui_session_secret: str = ""
    ui_session_seconds: int = 8 * 3600
    ui_cookie_secure: bool = True

    @property
    def sandbox(self) -> bool:
        return self.cer_mode == "sandbox"

    @property
    def private_webhooks_allowed(self) -> bool:
        if self.webhook_allow_private_addresses is not None:
            return self.webhook_allow_private_addresses
        return self.sandbox

    @property
    def bus_retry_delays(self) -> list[float]:
        """The bus's retry delays: ``retry_delays`` (the commands' schedule, first),
        then a tier for every webhook delay not already one, and at least as many
        entries as webhook tries, so a delivery is never dead-lettered by the bus
        before its own schedule ends. Commands still stop after ``retry_delays``
        (the command worker dead-letters them itself)."""
        delays = [float(d) for d in self.retry_delays]
        for d in sorted({float(x) for x in self.webhook_retry_schedule[1:] if x > 0}):
            if d not in delays:
                delays.append(d)
        while len(delays) < len(self.webhook_retry_schedule):
            delays.append(max(delays))
        return delays
