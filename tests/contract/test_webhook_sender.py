"""The webhook senders against a real local HTTP receiver (aiohttp server).

Signatures are checked with the ``standardwebhooks`` reference library (both
signatures during a secret rotation); the receiver's answers come back as
results, never exceptions (2xx, 429 + Retry-After, 3xx not followed, time-out,
connection refused); the SSRF guard refuses loopback and private addresses,
also when a host name resolves to one; the sandbox inbox twin stores a
delivery that verifies the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from adapters.clock import SandboxClock
from adapters.memory_store import MemoryStore
from adapters.webhook_http import HttpWebhookSender, parse_retry_after, sign_headers
from adapters.webhook_inbox import InboxWebhookSender
from adapters.webhook_router import WebhookRouter
from gateway import constants as c
from gateway.ports import WebhookRequest

OLD = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NEW = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"
BODY = b'{"resourceType":"Bundle","type":"history","entry":[]}'


@pytest.fixture
async def endpoint(aiohttp_server: Callable[..., Any]) -> AsyncIterator[tuple[str, list[Any]]]:
    seen: list[Any] = []

    async def hook(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        seen.append((dict(request.headers), raw.decode()))
        return web.Response(status=200, text="ok")

    async def throttle(request: web.Request) -> web.StreamResponse:
        return web.Response(status=429, headers={"Retry-After": "42"})

    async def moved(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/hook")

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(2)
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_post("/throttle", throttle)
    app.router.add_post("/moved", moved)
    app.router.add_post("/slow", slow)
    server = await aiohttp_server(app)
    yield f"http://127.0.0.1:{server.port}", seen


@pytest.fixture
async def sender() -> AsyncIterator[HttpWebhookSender]:
    s = HttpWebhookSender(allow_private=True)
    await s.start()
    yield s
    await s.close()


def request(url: str, *secrets: str, timeout: float = 5.0) -> WebhookRequest:
    return WebhookRequest(
        url=url,
        msg_id="sub1-7",
        body=BODY,
        secrets=secrets or (OLD,),
        headers={"Authorization": "Bearer vendor-token"},
        timeout=timeout,
    )


async def test_delivery_is_signed_for_every_secret(endpoint: Any, sender: Any) -> None:
    base, seen = endpoint
    result = await sender.send(request(f"{base}/hook", NEW, OLD))
    assert result.ok and result.status == 200 and result.response_excerpt == "ok"
    headers, raw = seen[0]
    assert raw == BODY.decode()
    assert headers["webhook-id"] == "sub1-7"
    assert headers["Authorization"] == "Bearer vendor-token"
    assert headers["Content-Type"] == "application/fhir+json"
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (NEW, OLD):
        assert Webhook(secret).verify(raw, headers) == {
            "resourceType": "Bundle",
            "type": "history",
            "entry": [],
        }
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + "d3Jvbmcgc2VjcmV0IGtleQ==").verify(raw, headers)


async def test_answers_come_back_as_results(endpoint: Any, sender: Any) -> None:
    base, _ = endpoint
    throttled = await sender.send(request(f"{base}/throttle"))
    assert (throttled.status, throttled.retry_after, throttled.ok) == (429, 42.0, False)
    moved = await sender.send(request(f"{base}/moved"))
    assert moved.status == 302 and not moved.ok  # redirects are not followed
    slow = await sender.send(request(f"{base}/slow", timeout=0.2))
    assert slow.status is None and "timeout" in (slow.error or "")
    refused = await sender.send(request("http://127.0.0.1:9/hook"))
    assert refused.status is None and "connection failed" in (refused.error or "")


async def test_private_addresses_are_refused_unless_allowed(endpoint: Any) -> None:
    base, seen = endpoint
    guarded = HttpWebhookSender(allow_private=False)
    await guarded.start()
    try:
        for url in (
            f"{base}/hook",
            "http://localhost/hook",
            "http://10.0.0.1/hook",
            "http://192.168.1.1/hook",
            "http://169.254.169.254/latest",
            "http://100.64.0.1/hook",
            "http://[::1]/hook",
            "http://[::ffff:127.0.0.1]/hook",
        ):
            assert await guarded.refusal(url), url
        assert await guarded.refusal("http://93.184.216.34/hook") is None
        assert await guarded.refusal("ftp://example.org/hook")
        assert await guarded.refusal("http://u:p@93.184.216.34/hook")
        # At send time too: an IP literal, and a name that resolves to loopback.
        literal = await guarded.send(request(f"{base}/hook"))
        assert literal.status is None and "refused" in (literal.error or "")
        port = base.rsplit(":", 1)[1]
        named = await guarded.send(request(f"http://localhost:{port}/hook"))
        assert named.status is None and "non-public" in (named.error or "")
        assert seen == []
    finally:
        await guarded.close()


def test_retry_after_forms() -> None:
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(format_datetime(now + timedelta(minutes=2), usegmt=True), now) == 120.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_signature_is_the_standard_one() -> None:
    at = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    headers = sign_headers("msg_1", BODY, (OLD,), at)
    assert headers["webhook-timestamp"] == str(int(at.timestamp()))
    expected = Webhook(OLD).sign("msg_1", at, BODY.decode())
    assert headers["webhook-signature"] == expected


async def test_inbox_twin_stores_a_verifiable_delivery() -> None:
    store = MemoryStore()
    await store.start({c.SANDBOX_INBOX: []})
    router = WebhookRouter(HttpWebhookSender(), InboxWebhookSender(store, SandboxClock()))
    await router.start()
    try:
        assert await router.refusal("sandbox:inbox") is None
        req = WebhookRequest(
            url="sandbox:inbox",
            msg_id="s-1",
            body=BODY,
            secrets=(OLD,),
            tenant="prov-1",
            subscription="s",
        )
        result = await router.send(req)
        assert result.ok
        (doc,) = await store.find(c.SANDBOX_INBOX, {"tenant": "prov-1"})
        Webhook(OLD).verify(doc["raw_body"], doc["headers"])
    finally:
        await router.close()
    production = WebhookRouter(HttpWebhookSender())
    assert await production.refusal("sandbox:inbox")
