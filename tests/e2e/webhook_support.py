"""Webhook test helpers: a real HTTP receiver, seeding, and changes made outside the provider.

``Receiver`` is an aiohttp server on a fixed local port that can be stopped
(connection refused) and started again on the same port, answer 2xx, 5xx,
410 or 429 + Retry-After, and keeps every delivery with its raw body so the
tests verify signatures with the ``standardwebhooks`` reference library.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from gateway.events import command
from gateway.http.fhir import prepare
from gateway.http.keys import SERVICES
from gateway.subscriptions import EXT_HEARTBEAT, EXT_PAYLOAD_CONTENT, EXT_SECRET, TOPIC_ALL
from mappings import codes

WARSAW = ZoneInfo("Europe/Warsaw")
MONDAY = datetime(2027, 1, 11, 8, 0, tzinfo=WARSAW)


class Receiver:
    """A subscriber's endpoint. ``mode``: ok | fail (500) | gone (410) | throttle (429)."""

    def __init__(self) -> None:
        self.deliveries: list[dict[str, Any]] = []
        self.mode = "ok"
        self.retry_after = "120"
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._arrived = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        if not self.port:
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if self.mode == "fail":
            return web.Response(status=500, text="down for maintenance")
        if self.mode == "gone":
            return web.Response(status=410, text="gone")
        if self.mode == "throttle":
            return web.Response(status=429, headers={"Retry-After": self.retry_after})
        self.deliveries.append(
            {"headers": dict(request.headers), "raw": raw.decode(), "body": orjson.loads(raw)}
        )
        self._arrived.set()
        return web.Response(status=204)

    # ------------------------------------------------------------------ reading

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.deliveries if notification_type(d["body"]) == kind]

    def numbers(self) -> list[int]:
        """Event numbers of the event notifications received, in arrival order."""
        return [n for d in self.of_type("event-notification") for n in event_numbers(d["body"])]

    async def wait(self, predicate: Any, timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"receiver: condition not met in {timeout}s; got {self.summary()}"
                )
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), min(remaining, 0.1))
            except TimeoutError:
                pass

    def summary(self) -> list[tuple[str, list[int]]]:
        return [(notification_type(d["body"]), event_numbers(d["body"])) for d in self.deliveries]

    def verify_all(self, *secrets: str) -> None:
        """Every delivery carries a valid signature for each of ``secrets`` (reference library)."""
        for d in self.deliveries:
            for secret in secrets:
                Webhook(secret).verify(d["raw"], d["headers"])


def params_of(bundle: dict[str, Any]) -> dict[str, Any]:
    status = bundle["entry"][0]["resource"]
    assert status["resourceType"] == "Parameters"
    return {p["name"]: p for p in status["parameter"]}


def notification_type(bundle: dict[str, Any]) -> str:
    return str(params_of(bundle)["type"]["valueCode"])


def event_numbers(bundle: dict[str, Any]) -> list[int]:
    status = bundle["entry"][0]["resource"]
    return [
        int(part["valueString"])
        for p in status["parameter"]
        if p["name"] == "notification-event"
        for part in p["part"]
        if part["name"] == "event-number"
    ]


def subscription(
    endpoint: str,
    *,
    content: str = "full-resource",
    heartbeat: int | None = None,
    criteria: str = TOPIC_ALL,
    headers: list[str] | None = None,
) -> dict[str, Any]:
    channel: dict[str, Any] = {
        "type": "rest-hook",
        "endpoint": endpoint,
        "payload": "application/fhir+json",
        "_payload": {"extension": [{"url": EXT_PAYLOAD_CONTENT, "valueCode": content}]},
    }
    if heartbeat is not None:
        channel["extension"] = [{"url": EXT_HEARTBEAT, "valueUnsignedInt": heartbeat}]
    if headers:
        channel["header"] = headers
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "booking updates for our practice system",
        "criteria": criteria,
        "channel": channel,
    }


def secret_of(created: dict[str, Any]) -> str:
    for ext in created.get("extension") or []:
        if ext["url"] == EXT_SECRET:
            return str(ext["valueString"])
    raise AssertionError("no secret in the creation's answer")


def fhir_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}


async def call(
    client: Any, method: str, path: str, token: str, body: Any = None
) -> tuple[int, Any]:
    kwargs: dict[str, Any] = {"headers": fhir_headers(token)}
    if body is not None:
        kwargs["data"] = json.dumps(body)
    resp = await client.request(method, path, **kwargs)
    text = await resp.text()
    return resp.status, (json.loads(text) if text else None)


async def seed_slots(client: Any, token: str, n: int) -> list[str]:
    """A Location, a Schedule and ``n`` free slots: one transaction (channel provider)."""
    scope = {"coding": [{"system": codes.SCOPE_SYSTEM, "code": "cardiology"}]}
    category = {"coding": [{"system": codes.SLOT_CATEGORY_SYSTEM, "code": "first-stable"}]}
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": "urn:uuid:loc",
            "resource": {
                "resourceType": "Location",
                "status": "active",
                "name": "Poradnia Kardiologiczna",
                "address": {"line": ["ul. Długa 5"], "city": "Kraków", "postalCode": "31-147"},
            },
            "request": {"method": "POST", "url": "Location"},
        },
        {
            "fullUrl": "urn:uuid:sch",
            "resource": {
                "resourceType": "Schedule",
                "active": True,
                "serviceType": [scope],
                "actor": [{"reference": "urn:uuid:loc"}],
            },
            "request": {"method": "POST", "url": "Schedule"},
        },
    ]
    for i in range(n):
        start = MONDAY + timedelta(minutes=20 * i)
        entries.append(
            {
                "fullUrl": f"urn:uuid:slot{i}",
                "resource": {
                    "resourceType": "Slot",
                    "serviceType": [scope],
                    "appointmentType": category,
                    "schedule": {"reference": "urn:uuid:sch"},
                    "status": "free",
                    "start": start.isoformat(),
                    "end": (start + timedelta(minutes=20)).isoformat(),
                },
                "request": {"method": "POST", "url": "Slot"},
            }
        )
    status, body = await call(
        client,
        "POST",
        "/fhir",
        token,
        {"resourceType": "Bundle", "type": "transaction", "entry": entries},
    )
    assert status == 200, body
    return [
        e["response"]["location"].split("/")[1]
        for e in body["entry"]
        if e["response"]["location"].startswith("Slot/")
    ]


def appointment(slot_id: str, pesel: str = "44051401458") -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "status": "booked",
        "slot": [{"reference": f"Slot/{slot_id}"}],
        "participant": [
            {
                "actor": {
                    "type": "Patient",
                    "identifier": {"system": codes.PESEL_SYSTEM, "value": pesel},
                },
                "status": "accepted",
            }
        ],
        "basedOn": [{"identifier": {"system": codes.E_REFERRAL_SYSTEM, "value": "Ab12Cd34:1234"}}],
    }


async def outside_write(
    client: Any,
    tenant: str,
    method: str,
    rtype: str,
    resource: dict[str, Any] | None,
    *,
    rid: str | None = None,
    channel: str = "portal",
) -> dict[str, Any]:
    """A change of the provider's data made outside its system: a ``fhir.write`` command
    with the channel of the patient portal (as the patient channel sends it)."""
    services = client.server.app[SERVICES]
    op = prepare(method, rtype, rid or uuid.uuid4().hex, resource)
    msg = command(
        "fhir.write",
        {"mode": "single", "ops": [op], "channel": channel},
        tenant=tenant,
        correlation_id=uuid.uuid4().hex,
        now=services.clock.now(),
    )
    reply: dict[str, Any] = await services.bus.request(msg, 20)
    assert "error" not in reply, reply
    result: dict[str, Any] = reply["results"][0]
    return result


async def advance(client: Any, duration: str) -> None:
    resp = await client.post("/sandbox/clock", json={"advance": duration})
    assert resp.status == 200, await resp.text()
