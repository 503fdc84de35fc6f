"""Prometheus metrics: own registry, bounded labels, aiohttp middleware."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import (
    CONTENT_TYPE_LATEST,
    Metrics,
    metrics_handler,
    metrics_middleware,
)

ClientFactory = Callable[..., Any]


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = metrics.render()
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


def make_app(metrics: Metrics) -> web.Application:
    async def item(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"]})

    async def create(request: web.Request) -> web.Response:
        return web.json_response({}, status=201)

    async def missing(request: web.Request) -> web.Response:
        raise web.HTTPNotFound()

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("boom")

    app = web.Application(middlewares=[metrics_middleware(metrics)])
    app.router.add_get("/fhir/Slot/{id}", item)
    app.router.add_post("/fhir/Slot", create)
    app.router.add_get("/fhir/Gone/{id}", missing)
    app.router.add_get("/boom", boom)
    app.router.add_get("/metrics", metrics_handler(metrics))
    return app


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def client(aiohttp_client: ClientFactory, metrics: Metrics) -> TestClient[Any, Any]:
    return await aiohttp_client(make_app(metrics))


async def test_requests_are_counted_by_route_pattern(
    client: TestClient[Any, Any], metrics: Metrics
) -> None:
    for slot in ("a", "b", "c"):
        assert (await client.get(f"/fhir/Slot/{slot}")).status == 200
    assert (await client.post("/fhir/Slot", json={})).status == 201
    assert (await client.get("/fhir/Gone/x")).status == 404
    assert (await client.get("/no/such/path/123")).status == 404
    assert (await client.post("/fhir/Slot/a")).status == 405
    assert (await client.get("/boom")).status == 500

    v = value
    assert (
        v(metrics, "http_requests_total", method="GET", route="/fhir/Slot/{id}", status="200") == 3
    )
    assert v(metrics, "http_requests_total", method="POST", route="/fhir/Slot", status="201") == 1
    assert (
        v(metrics, "http_requests_total", method="GET", route="/fhir/Gone/{id}", status="404") == 1
    )
    assert v(metrics, "http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert v(metrics, "http_requests_total", method="POST", route="unmatched", status="405") == 1
    assert v(metrics, "http_requests_total", method="GET", route="/boom", status="500") == 1
    assert v(metrics, "http_request_seconds_count", method="GET", route="/fhir/Slot/{id}") == 3
    seconds = v(metrics, "http_request_seconds_sum", method="GET", route="/fhir/Slot/{id}")
    assert seconds is not None and 0 < seconds < 5
    # The raw paths never become label values.
    body = metrics.render()[0].decode()
    assert "/fhir/Slot/a" not in body and "/no/such/path" not in body


async def test_render_and_metrics_endpoint(client: TestClient[Any, Any], metrics: Metrics) -> None:
    await client.get("/fhir/Slot/x")
    body, content_type = metrics.render()
    assert content_type == CONTENT_TYPE_LATEST
    assert content_type.startswith("text/plain") and "charset=utf-8" in content_type
    text = body.decode()
    assert 'http_requests_total{method="GET",route="/fhir/Slot/{id}",status="200"} 1.0' in text
    assert "# TYPE http_request_seconds histogram" in text
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
    scraped = await resp.text()
    assert 'route="/fhir/Slot/{id}"' in scraped
    assert "# TYPE outbox_pending gauge" in scraped


async def test_unusual_methods_are_folded(client: TestClient[Any, Any], metrics: Metrics) -> None:
    await client.request("PROPFIND", "/fhir/Slot/x")
    assert value(metrics, "http_requests_total", method="OTHER", route="unmatched", status="405")


def test_message_counters(metrics: Metrics) -> None:
    metrics.published("command")
    metrics.published("event")
    metrics.published("event", 3)  # a batch of events counts each
    metrics.messages_published_total.labels("reply").inc()
    metrics.consumed("command", "ok")
    metrics.consumed("command", "duplicate")
    metrics.consumed("event", "retried")
    metrics.consumed("event", "retried")
    metrics.consumed("webhook", "dead_lettered")
    metrics.outbox_pending.set(7)

    assert value(metrics, "messages_published_total", kind="command") == 1
    assert value(metrics, "messages_published_total", kind="event") == 4
    assert value(metrics, "messages_published_total", kind="reply") == 1
    with pytest.raises(ValueError):
        metrics.published("bogus")  # type: ignore[arg-type]
    assert value(metrics, "messages_consumed_total", queue_kind="command", outcome="ok") == 1
    assert value(metrics, "messages_consumed_total", queue_kind="command", outcome="duplicate") == 1
    assert value(metrics, "messages_consumed_total", queue_kind="event", outcome="retried") == 2
    assert value(metrics, "messages_retried_total", queue_kind="event") == 2
    assert value(metrics, "messages_dead_lettered_total", queue_kind="webhook") == 1
    assert value(metrics, "messages_dead_lettered_total", queue_kind="event") is None
    assert value(metrics, "outbox_pending") == 7


def test_published_kinds_start_at_zero(metrics: Metrics) -> None:
    for kind in ("command", "event", "reply"):
        assert value(metrics, "messages_published_total", kind=kind) == 0


def test_label_values_are_checked(metrics: Metrics) -> None:
    with pytest.raises(ValueError, match="publish kind"):
        metrics.published("gossip")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outcome"):
        metrics.consumed("command", "lost")  # type: ignore[arg-type]


def test_registries_are_independent() -> None:
    a, b = Metrics(), Metrics()  # no "Duplicated timeseries" error: nothing global
    a.published("event")
    assert value(a, "messages_published_total", kind="event") == 1
    assert value(b, "messages_published_total", kind="event") == 0
    assert re.search(rb"^outbox_pending 0\.0$", b.render()[0], re.M)


def test_labelled_children_are_looked_up_once(metrics: Metrics) -> None:
    a = metrics.labelled(metrics.reminders_total, "day-before", "scheduled")
    assert metrics.labelled(metrics.reminders_total, "day-before", "scheduled") is a
    a.inc()
    metrics.labelled(metrics.reminders_total, "day-before", "skipped").inc(2)
    assert value(metrics, "reminders_total", kind="day-before", outcome="scheduled") == 1
    assert value(metrics, "reminders_total", kind="day-before", outcome="skipped") == 2
