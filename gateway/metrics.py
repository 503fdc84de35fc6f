"""Prometheus metrics (ARCHITECTURE.md, Operations: ``/metrics``).

Each :class:`Metrics` owns its own ``CollectorRegistry``: nothing is
registered globally at import time, so tests and several apps in one
process never collide. Label values are bounded: HTTP routes are labelled by
their canonical pattern (``/fhir/Slot/{id}``), never by the raw path.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "metrics_handler", "metrics_middleware"]

PublishKind = Literal["command", "event", "reply"]
Outcome = Literal["ok", "retried", "dead_lettered", "duplicate"]
PUBLISH_KINDS: tuple[PublishKind, ...] = ("command", "event", "reply")
OUTCOMES: tuple[Outcome, ...] = ("ok", "retried", "dead_lettered", "duplicate")
NotificationOutcome = Literal["sent", "duplicate", "failed"]
NOTIFICATION_OUTCOMES: tuple[NotificationOutcome, ...] = ("sent", "duplicate", "failed")
UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Seconds; FHIR reads are milliseconds, transactions awaiting a command reply seconds.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The gateway's metrics, in a registry of their own.

    Counters are used directly (``m.messages_published_total.labels("event").inc()``)
    or through the small helpers below, which keep label values in their sets and look
    each label set's child up once (``labelled``).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.http_requests_total = Counter(
            "http_requests",
            "HTTP requests answered, by method, route pattern and status code.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_request_seconds = Histogram(
            "http_request_seconds",
            "HTTP request duration in seconds, by method and route pattern.",
            ["method", "route"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.messages_published_total = Counter(
            "messages_published",
            "Messages published and confirmed, by kind (command, event, reply).",
            ["kind"],
            registry=r,
        )
        self.messages_consumed_total = Counter(
            "messages_consumed",
            "Messages consumed, by queue kind and outcome (ok, retried, dead_lettered, duplicate).",
            ["queue_kind", "outcome"],
            registry=r,
        )
        self.messages_retried_total = Counter(
            "messages_retried",
            "Messages sent to a retry tier, by queue kind.",
            ["queue_kind"],
            registry=r,
        )
        self.messages_dead_lettered_total = Counter(
            "messages_dead_lettered",
            "Messages dead-lettered, by queue kind.",
            ["queue_kind"],
            registry=r,
        )
        self.outbox_pending = Gauge(
            "outbox_pending",
            "Events written to outboxes and not yet published (last relay pass).",
            registry=r,
        )
        # Patient notifications (issue 7): per channel sent / duplicate / failed, the
        # events dead-lettered with a channel still failing, and the reminders' life.
        self.notifications_total = Counter(
            "notifications",
            "Patient notifications by channel (sms, email, push) and outcome "
            "(sent, duplicate, failed).",
            ["channel", "outcome"],
            registry=r,
        )
        self.notifications_dead_lettered_total = Counter(
            "notifications_dead_lettered",
            "Notification events dead-lettered, by the channel that kept failing.",
            ["channel"],
            registry=r,
        )
        self.reminders_total = Counter(
            "reminders",
            "Visit reminders (R-NOT-2) by kind and outcome "
            "(scheduled, queued, sent, skipped, cancelled).",
            ["kind", "outcome"],
            registry=r,
        )
        self.webhook_events_total = Counter(
            "webhook_events",
            "Numbered webhook events (one per change and matching subscription, R-SCHED-4).",
            registry=r,
        )
        self.webhook_deliveries_total = Counter(
            "webhook_deliveries",
            "Webhook tries by kind (event, handshake, heartbeat) and outcome "
            "(delivered, retrying, dead-lettered, disabled, failed).",
            ["kind", "outcome"],
            registry=r,
        )
        self.webhook_delivery_seconds = Histogram(
            "webhook_delivery_seconds",
            "Webhook try duration in seconds (until the subscriber's answer).",
            buckets=_BUCKETS,
            registry=r,
        )
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._consumed: dict[tuple[str, str], Any] = {}  # (kind, outcome) -> its child's inc
        for kind in PUBLISH_KINDS:  # zeros from the start, so rates work from the first scrape
            self.labelled(self.messages_published_total, kind)

    # ------------------------------------------------------------------ helpers

    def labelled(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once per label set: ``labels()`` costs
        ~4 us, as much as a small store read, and the hot paths count every message."""
        key = (metric._name, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method.upper()
        if method not in _METHODS:
            method = "OTHER"
        self.http_requests_total.labels(method, route, str(status)).inc()
        self.http_request_seconds.labels(method, route).observe(seconds)

    def published(self, kind: PublishKind, n: int = 1) -> None:
        """Count ``n`` messages of ``kind`` published (a batch of events counts each)."""
        if kind not in PUBLISH_KINDS:
            raise ValueError(f"publish kind must be one of {PUBLISH_KINDS}, got {kind!r}")
        self.labelled(self.messages_published_total, kind).inc(n)

    def consumed(self, queue_kind: str, outcome: Outcome) -> None:
        """Count one consumed message; ``retried`` / ``dead_lettered`` also feed their totals."""
        inc = self._consumed.get((queue_kind, outcome))
        if inc is None:  # once per label set (every event of a batch is counted)
            if outcome not in OUTCOMES:
                raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
            inc = self.labelled(self.messages_consumed_total, queue_kind, outcome).inc
            self._consumed[(queue_kind, outcome)] = inc
        inc()
        if outcome == "retried":
            self.messages_retried_total.labels(queue_kind).inc()
        elif outcome == "dead_lettered":
            self.messages_dead_lettered_total.labels(queue_kind).inc()

    def notified(self, channel: str, outcome: NotificationOutcome) -> None:
        """Count one notification on ``channel`` (sms, email, push)."""
        if outcome not in NOTIFICATION_OUTCOMES:
            raise ValueError(f"outcome must be one of {NOTIFICATION_OUTCOMES}, got {outcome!r}")
        self.labelled(self.notifications_total, channel, outcome).inc()

    def render(self) -> tuple[bytes, str]:
        """``(body, content type)`` for ``/metrics`` (Prometheus text format).

        The content type carries a charset: send it in ``headers=``, not
        ``content_type=`` (LIBRARIES.md).
        """
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def route_label(request: web.Request) -> str:
    """The matched route's canonical pattern, or ``"unmatched"`` (404 / 405)."""
    try:
        resource = request.match_info.route.resource
    except AttributeError:
        return UNMATCHED
    if resource is None:
        return UNMATCHED
    return resource.canonical or UNMATCHED


def metrics_middleware(metrics: Metrics) -> Middleware:
    """Count and time every request, labelled by route pattern and final status.

    Place it outside the error middleware so the status is the one sent (an
    exception escaping it counts as its HTTP status, anything else as 500).
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away (nginx's convention)
            raise
        finally:
            metrics.observe_request(
                request.method, route_label(request), status, time.perf_counter() - start
            )

    return middleware


def metrics_handler(metrics: Metrics) -> Handler:
    """An aiohttp handler serving ``metrics.render()`` (for ``GET /metrics``)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        body, content_type = metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    return handler
