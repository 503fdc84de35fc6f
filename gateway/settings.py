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

    @property
    def sandbox(self) -> bool:
        return self.cer_mode == "sandbox"
