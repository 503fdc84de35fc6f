"""Webhook delivery over HTTP (aiohttp client), signed per Standard Webhooks.

Every POST carries ``webhook-id``, ``webhook-timestamp`` (wall-clock seconds:
receivers check it against their own clock, so it never follows the sandbox
clock) and ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of id.timestamp.body>``
made by the ``standardwebhooks`` reference library, one per secret in force
(two during a secret rotation's overlap, space-separated as the standard says).

Safety (SSRF): only ``http`` and ``https``; unless private addresses are
allowed, a host that resolves to a loopback, private, link-local, multicast or
otherwise non-global address is refused, both when a subscription is created
(``refusal``) and at every connection (a resolver that filters what DNS
answers, so a name cannot be re-pointed at an internal address later). IP
literals skip aiohttp's resolver, so they are checked here before sending.
Redirects are not followed (a 3xx is a failed try). Secrets and the
subscriber's headers are never logged.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from standardwebhooks.webhooks import Webhook

from gateway.ports import WebhookRequest, WebhookResult

USER_AGENT = "CeR-Gateway-Webhooks/0.1"
CONTENT_TYPE = "application/fhir+json"
EXCERPT_BYTES = 512
SMALL_BODY = 64 * 1024

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=4096)
def _signer(secret: str) -> Webhook:
    return Webhook(secret)


def sign_headers(
    msg_id: str, body: bytes, secrets: tuple[str, ...], at: datetime | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body``, one signature per secret."""
    at = at or datetime.now(UTC)
    at = at.replace(microsecond=0)
    text = body.decode("utf-8")
    signatures = " ".join(_signer(s).sign(msg_id, at, text) for s in secrets)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signatures,
    }


def non_public(ip: IPAddress) -> bool:
    """Loopback, private, link-local (cloud metadata), CGNAT, multicast, reserved..."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


@functools.lru_cache(maxsize=4096)
def _url(url: str) -> yarl.URL:
    return yarl.URL(url)


@functools.lru_cache(maxsize=64)
def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=seconds)


@functools.lru_cache(maxsize=4096)
def ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class PublicOnlyResolver(AbstractResolver):
    """aiohttp resolver that drops non-public addresses (and fails if none are left)."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        kept = [r for r in results if not non_public(ipaddress.ip_address(r["host"]))]
        if not kept:
            raise OSError(f"{host} resolves only to non-public addresses (refused)")
        return kept

    async def close(self) -> None:
        await self._inner.close()


class HttpWebhookSender:
    """``WebhookSender`` over HTTP(S). See the module docstring."""

    def __init__(
        self,
        *,
        allow_private: bool = False,
        connections: int = 512,
        user_agent: str = USER_AGENT,
    ) -> None:
        self._allow_private = allow_private
        self._connections = connections
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is not None:
            return
        resolver: AbstractResolver = (
            DefaultResolver() if self._allow_private else PublicOnlyResolver()
        )
        connector = aiohttp.TCPConnector(
            limit=self._connections, resolver=resolver, ttl_dns_cache=60
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": self._user_agent},
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def refusal(self, url: str) -> str | None:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return "the endpoint is not a valid URL"
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return "the endpoint must be an http(s) URL with a host"
        if parts.username or parts.password:
            return "the endpoint must not carry credentials (use channel.header)"
        if self._allow_private:
            return None
        host = parts.hostname
        literal = ip_literal(host)
        if literal is not None:
            return f"{host} is not a public address" if non_public(literal) else None
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM
            )
        except OSError:
            return f"{host} does not resolve"
        addresses = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}
        if any(non_public(a) for a in addresses):
            return f"{host} resolves to a non-public address"
        return None

    async def send(self, request: WebhookRequest) -> WebhookResult:
        if self._session is None:
            raise RuntimeError("webhook sender not started")
        started = time.perf_counter()

        def result(status: int | None, error: str | None = None, **kw: Any) -> WebhookResult:
            ms = round((time.perf_counter() - started) * 1000, 2)
            return WebhookResult(status, ms, error, **kw)

        url = _url(request.url)
        host = url.host or ""
        literal = ip_literal(host)
        if not self._allow_private and literal is not None and non_public(literal):
            return result(None, f"refused: {host} is not a public address")
        headers = {
            **request.headers,
            "Content-Type": CONTENT_TYPE,
            **sign_headers(request.msg_id, request.body, request.secrets),
        }
        try:
            async with self._session.post(
                url,
                data=request.body,
                headers=headers,
                timeout=_timeout(request.timeout),
                allow_redirects=False,
            ) as resp:
                if resp.content_length is not None and resp.content_length <= SMALL_BODY:
                    raw = await resp.read()  # read it all: the connection is reused
                else:
                    raw = await resp.content.read(EXCERPT_BYTES)
                excerpt = raw[:EXCERPT_BYTES].decode("utf-8", "replace")
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                error = None if 200 <= resp.status < 300 else f"HTTP {resp.status}"
                return result(resp.status, error, retry_after=retry_after, response_excerpt=excerpt)
        except TimeoutError:
            return result(None, f"timeout after {request.timeout:g} s")
        except aiohttp.ClientConnectorError as exc:
            return result(None, f"connection failed: {exc.os_error or exc}")
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return result(None, f"{type(exc).__name__}: {exc}"[:300])
