"""The sandbox console's pages with many webhook deliveries (issue 10):
``python -m bench.ui_console``.

One provider with ``--bookings`` slots (default 200), a subscription to
``sandbox:inbox`` and one to a local endpoint that answers 500; each slot is
booked by a change from outside the provider's system (the patient portal's
channel), so every booking makes two events per subscription: the inbox keeps
them signed, the other endpoint fails them (and they wait for a retry). Then the
console's front page (the failing deliveries of every provider), the provider's
inbox (50 a page, with headers, bodies, signature checks and tries) and its
failing view are loaded ``--runs`` times each.

Printed: the machine and its load, the deliveries made, and per page p50 / p95 /
max of the HTTP round trip and the page size. The gateway runs in this process on
the embedded default (sandbox mode).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
from aiohttp import web

from bench.common import cpu_model
from gateway import constants as c
from gateway.events import command
from gateway.http.app import create_app
from gateway.http.fhir import prepare
from gateway.http.keys import SERVICES
from gateway.settings import Settings

SCOPE = "http://cer-gateway.org/fhir/CodeSystem/scope"
CATEGORY = "http://cer-gateway.org/fhir/CodeSystem/slot-category"
PESEL_SYSTEM = "urn:oid:2.16.840.1.113883.3.4424.1.1.616"
MONDAY = datetime(2027, 1, 11, 8, 0, tzinfo=ZoneInfo("Europe/Warsaw"))


def slots_bundle(n: int) -> dict[str, Any]:
    scope = [{"coding": [{"system": SCOPE, "code": "cardiology"}]}]
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": "urn:uuid:loc",
            "resource": {
                "resourceType": "Location",
                "name": "Poradnia (bench)",
                "status": "active",
            },
            "request": {"method": "POST", "url": "Location"},
        },
        {
            "fullUrl": "urn:uuid:sch",
            "resource": {
                "resourceType": "Schedule",
                "active": True,
                "serviceType": scope,
                "actor": [{"reference": "urn:uuid:loc"}],
            },
            "request": {"method": "POST", "url": "Schedule"},
        },
    ]
    for i in range(n):
        start = MONDAY + timedelta(minutes=20 * i)
        entries.append(
            {
                "fullUrl": f"urn:uuid:s{i}",
                "resource": {
                    "resourceType": "Slot",
                    "serviceType": scope,
                    "appointmentType": {"coding": [{"system": CATEGORY, "code": "first-stable"}]},
                    "schedule": {"reference": "urn:uuid:sch"},
                    "status": "free",
                    "start": start.isoformat(),
                    "end": (start + timedelta(minutes=20)).isoformat(),
                },
                "request": {"method": "POST", "url": "Slot"},
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def subscription(endpoint: str) -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "bench",
        "criteria": "http://cer-gateway.org/fhir/SubscriptionTopic/appointment-slot-changes",
        "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json"},
    }


async def book_outside(app: web.Application, tenant: str, slot_id: str) -> None:
    """A booking made in the patient portal (not by the provider): it is webhooked."""
    services = app[SERVICES]
    appointment = {
        "resourceType": "Appointment",
        "status": "booked",
        "slot": [{"reference": f"Slot/{slot_id}"}],
        "participant": [
            {
                "actor": {
                    "type": "Patient",
                    "identifier": {"system": PESEL_SYSTEM, "value": "44051401458"},
                },
                "status": "accepted",
            }
        ],
        "basedOn": [
            {
                "identifier": {
                    "system": "http://cer-gateway.org/fhir/sid/e-referral",
                    "value": "Ab12Cd34:1234",
                }
            }
        ],
    }
    op = prepare("POST", "Appointment", uuid.uuid4().hex, appointment)
    msg = command(
        "fhir.write",
        {"mode": "single", "ops": [op], "channel": "portal"},
        tenant=tenant,
        correlation_id=uuid.uuid4().hex,
        now=services.clock.now(),
    )
    reply = await services.bus.request(msg, 30)
    assert "error" not in reply, reply


async def failing_endpoint() -> tuple[web.AppRunner, str]:
    async def refuse(_: web.Request) -> web.Response:
        return web.Response(status=500, text="down for maintenance")

    hook = web.Application()
    hook.router.add_post("/hook", refuse)
    runner = web.AppRunner(hook, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}/hook"


async def run(bookings: int, runs: int) -> None:
    settings = Settings(cer_mode="sandbox", amqp_url=None, webhook_retry_schedule=[0, 3600])
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    base = f"http://{host}:{port}"
    hook_runner, hook_url = await failing_endpoint()
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(base, cookie_jar=jar) as http:
        async with http.post("/sandbox/providers", json={"name": "Bench"}) as resp:
            provider = await resp.json()
        auth = {
            "Authorization": f"Bearer {provider['token']}",
            "Content-Type": "application/fhir+json",
        }
        async with http.post("/fhir", json=slots_bundle(bookings), headers=auth) as resp:
            answer = await resp.json()
            assert resp.status == 200, answer
        slot_ids = [
            e["response"]["location"].split("/")[1]
            for e in answer["entry"]
            if e["response"]["location"].startswith("Slot/")
        ]
        for endpoint in ("sandbox:inbox", hook_url):
            async with http.post("/fhir/Subscription", json=subscription(endpoint), headers=auth):
                pass
        started = time.perf_counter()
        for sid in slot_ids:
            await book_outside(app, provider["provider_id"], sid)
        store = app[SERVICES].store
        want = 4 * bookings
        for _ in range(6000):  # each event tried once (the failing ones wait an hour)
            if await store.count(c.WEBHOOK_ATTEMPTS, {"kind": "event"}) >= want:
                break
            await asyncio.sleep(0.1)
        made = time.perf_counter() - started
        events = await store.count(c.WEBHOOK_EVENTS, {})
        print(f"{bookings} outside bookings -> {events} webhook events tried in {made:.1f} s")
        tenant = provider["provider_id"]
        for path in (
            "/ui/sandbox",
            f"/ui/sandbox/providers/{tenant}/inbox",
            f"/ui/sandbox/providers/{tenant}/inbox?show=failing",
        ):
            times, size = [], 0
            for _ in range(runs):
                t = time.perf_counter()
                async with http.get(path) as resp:
                    body = await resp.read()
                    assert resp.status == 200, body[:500]
                times.append((time.perf_counter() - t) * 1000)
                size = len(body)
            times.sort()
            p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
            print(
                f"GET {path.replace(tenant, '<provider>')}: p50 {statistics.median(times):.0f} ms, "
                f"p95 {p95:.0f} ms, max {times[-1]:.0f} ms, {size // 1024} KiB"
            )
    await hook_runner.cleanup()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bookings", type=int, default=200)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    print(f"cpu: {cpu_model()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    asyncio.run(run(args.bookings, args.runs))


if __name__ == "__main__":
    main()
