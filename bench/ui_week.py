"""Manual-entry week view with a thousand slots (issue 10): ``python -m bench.ui_week``.

One provider, five schedules, ``--slots`` slots (default 1,000) in one week
(Monday to Sunday, 20-minute slots from 7:00), a quarter of them booked through
the FHIR API and ``--cancelled`` of those bookings cancelled; then the week view
``GET /ui/week`` and the busiest day ``GET /ui/day`` are loaded ``--runs`` times
each by a signed-in browser session.

Printed: the machine and its load, the rows rendered, and per page p50 / p95 / max
of the server time (the ``Server-Timing`` header: handler, store reads and
template) and of the HTTP round trip. The gateway runs in this process on the
embedded default (sandbox mode). Target: the week's p95 server time well under
300 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import time
from datetime import date, datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import web

from bench.common import cpu_model
from gateway.http.app import create_app
from gateway.settings import Settings
from gateway.timeutil import WARSAW

SCOPE = "http://cer-gateway.org/fhir/CodeSystem/scope"
CATEGORY = "http://cer-gateway.org/fhir/CodeSystem/slot-category"
PESEL = "urn:oid:2.16.840.1.113883.3.4424.1.1.616"
CATEGORIES = ("first-urgent", "first-stable", "first-stable", "first-privileged", "control")


def week_bundle(monday: date, slots: int, schedules: int = 5) -> dict[str, Any]:
    """Location + ``schedules`` Schedules + ``slots`` Slots spread over the week."""
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": "urn:uuid:loc",
            "resource": {
                "resourceType": "Location",
                "name": "Poradnia (bench)",
                "status": "active",
            },
            "request": {"method": "POST", "url": "Location"},
        }
    ]
    for s in range(schedules):
        entries.append(
            {
                "fullUrl": f"urn:uuid:sch{s}",
                "resource": {
                    "resourceType": "Schedule",
                    "active": True,
                    "serviceType": [{"coding": [{"system": SCOPE, "code": "cardiology"}]}],
                    "actor": [{"reference": "urn:uuid:loc"}],
                    "comment": f"Gabinet {s + 1}",
                },
                "request": {"method": "POST", "url": "Schedule"},
            }
        )
    per_day_per_schedule = -(-slots // (7 * schedules))
    n = 0
    for day in range(7):
        for s in range(schedules):
            for i in range(per_day_per_schedule):
                if n == slots:
                    break
                begin = datetime.combine(monday + timedelta(days=day), datetime.min.time(), WARSAW)
                begin += timedelta(hours=7, minutes=20 * i)
                entries.append(
                    {
                        "resource": {
                            "resourceType": "Slot",
                            "serviceType": [{"coding": [{"system": SCOPE, "code": "cardiology"}]}],
                            "appointmentType": {
                                "coding": [{"system": CATEGORY, "code": CATEGORIES[n % 5]}]
                            },
                            "schedule": {"reference": f"urn:uuid:sch{s}"},
                            "status": "free",
                            "start": begin.isoformat(),
                            "end": (begin + timedelta(minutes=20)).isoformat(),
                        },
                        "request": {"method": "POST", "url": "Slot"},
                    }
                )
                n += 1
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def appointment(slot_id: str, pesel: str) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "status": "booked",
        "slot": [{"reference": f"Slot/{slot_id}"}],
        "basedOn": [
            {
                "identifier": {
                    "system": "http://cer-gateway.org/fhir/sid/e-referral",
                    "value": f"BENCH{slot_id[:8]}:1234",
                }
            }
        ],
        "extension": [
            {
                "url": "http://cer-gateway.org/fhir/StructureDefinition/privileged",
                "valueBoolean": True,
            },
            {
                "url": "http://cer-gateway.org/fhir/StructureDefinition/patient-contact",
                "valueContactPoint": {"system": "phone", "value": "600100200"},
            },
        ],
        "participant": [
            {"actor": {"identifier": {"system": PESEL, "value": pesel}}, "status": "accepted"}
        ],
    }


async def seed_week(
    http: aiohttp.ClientSession, base: str, token: str, monday: date, slots: int, cancelled: int
) -> tuple[int, int]:
    """A busy week for the provider of ``token``: ``(slots, booked)``."""
    from gateway import pesel

    h = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    async with http.post(f"{base}/fhir", json=week_bundle(monday, slots), headers=h) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
    slot_ids = [
        e["response"]["location"].split("/")[1]
        for e in body["entry"]
        if e["response"]["location"].startswith("Slot/")
    ]
    booked = slot_ids[::4]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": appointment(sid, pesel.generate(date(1970, 1, 1 + i % 28), "female")),
                "request": {"method": "POST", "url": "Appointment"},
            }
            for i, sid in enumerate(booked)
        ],
    }
    async with http.post(f"{base}/fhir", json=bundle, headers=h) as r:
        assert r.status == 200, await r.text()
        done = await r.json()
    appts = [e["response"]["location"].split("/")[1] for e in done["entry"]]
    for aid in appts[:cancelled]:
        async with http.get(f"{base}/fhir/Appointment/{aid}", headers=h) as r:
            res = await r.json()
        res.pop("meta", None)
        res["status"] = "cancelled"
        res["cancelationReason"] = {
            "coding": [
                {
                    "system": "http://cer-gateway.org/fhir/CodeSystem/cancellation-reason",
                    "code": "provider-unavailable",
                }
            ]
        }
        async with http.put(
            f"{base}/fhir/Appointment/{aid}", json=res, headers={**h, "If-Match": 'W/"1"'}
        ) as r:
            assert r.status == 200, await r.text()
    return len(slot_ids), len(booked)


async def ui_session(http: aiohttp.ClientSession, base: str, token: str) -> None:
    async with http.get(f"{base}/ui/signin") as r:
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', await r.text())
    assert csrf
    async with http.post(
        f"{base}/ui/signin",
        data={"csrf_token": csrf.group(1), "credential": token},
        allow_redirects=False,
    ) as r:
        assert r.status == 303, await r.text()


def server_timing(header: str) -> dict[str, float]:
    """``app;dur=12.3, cpu;dur=4.5`` -> ``{"app": 12.3, "cpu": 4.5}``."""
    out = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        out[name] = float(dur)
    return out


async def timed(http: aiohttp.ClientSession, url: str) -> tuple[dict[str, float], float, str]:
    """``(server timings ms, round-trip ms, html)``."""
    t0 = time.perf_counter()
    async with http.get(url) as r:
        html = await r.text()
        assert r.status == 200, html[:500]
        server = server_timing(r.headers["Server-Timing"])
    return server, (time.perf_counter() - t0) * 1000, html


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main(args: argparse.Namespace) -> int:
    settings = Settings(cer_mode="sandbox", amqp_url=None, mongodb_url=None)
    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    base = f"http://{host}:{port}"
    jar = aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=[base])
    try:
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            async with http.post(f"{base}/sandbox/providers", json={"name": "Bench"}) as r:
                provider = await r.json()
            today = date.today()
            monday = today + timedelta(days=7 - today.weekday())
            slots, booked = await seed_week(
                http, base, provider["token"], monday, args.slots, args.cancelled
            )
            await ui_session(http, base, provider["token"])
            print(f"machine: {cpu_model()}, {os.cpu_count()} cpus")
            print(f"load before: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
            print(f"week of {monday}: {slots} slots, {booked} booked, {args.cancelled} cancelled")
            for label, url in (
                ("week", f"{base}/ui/week?start={monday.isoformat()}"),
                ("day", f"{base}/ui/day?date={monday.isoformat()}"),
            ):
                await timed(http, url)  # warm-up (template compiled once)
                server, cpu, rtt = [], [], []
                html = ""
                for _ in range(args.runs):
                    s, t, html = await timed(http, url)
                    server.append(s["app"])
                    cpu.append(s["cpu"])
                    rtt.append(t)
                rows = html.count('<tr class="status-')
                print(
                    f"{label}: {rows} rows, {len(html) // 1024} KiB; server ms p50 "
                    f"{statistics.median(server):.1f} p95 {pct(server, 0.95):.1f} max "
                    f"{max(server):.1f}; its CPU ms p50 {statistics.median(cpu):.1f} p95 "
                    f"{pct(cpu, 0.95):.1f}; round trip ms p50 {statistics.median(rtt):.1f} "
                    f"p95 {pct(rtt, 0.95):.1f}"
                )
            print(f"load after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        await runner.cleanup()
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--slots", type=int, default=1000)
    p.add_argument("--cancelled", type=int, default=50)
    p.add_argument("--runs", type=int, default=20)
    return p.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(parse_args())))
