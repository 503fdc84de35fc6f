"""Patient booking benchmark (issue 4): ``python -m bench.booking``.

``--patients`` simulated patients (default 200) at once search and book
first-time cardiology visits over HTTP (``/patient/v1``) against ``--slots``
free slots (default 10,000) of ``--providers`` facilities (default 25), until
``--bookings`` visits are booked (default 2,000). Hot spots: ``--hot`` of the
patients (default 80 %) want the earliest slots of three popular facilities
(half of them the first one), so they keep colliding (409 ``slot-taken``,
search again, up to ``--attempts`` tries); the others search with other
criteria (a city, weekdays, hours) and pick one of the first ten. A patient
thinks between actions (exponential, mean ``--think-ms``, default 1 s: people
read a page of dates before they choose one; with 0 the patients loop flat
out and the figures measure the queue of a saturated server, not a wait a
patient would see, so use 0 for the throughput ceiling). Each
simulated patient is a fresh sandbox patient with a stable cardiology
e-referral, created before the clock starts.

Once per backend (``--backend``): ``embedded`` (in-process bus and store, the
default run) and ``rabbitmq`` (RabbitMQ on ``--amqp-url``, by default the
``cer-bench-booking`` vhost, and the embedded store). The server is the real gateway
(``create_app``, with the garbage-collector policy of ``cer-gateway serve``,
``gateway/gc_policy.py``) in a child process (``python -m bench.booking --serve ...``),
so the patients (this process) do not share its event loop.

Printed: the machine; per backend, p50 / p95 / p99 latency of searches and of
booking attempts as the patients see them (HTTP round trip), bookings/s, the
outcome of every attempt, CPU used, and the double bookings found afterwards
through the providers' FHIR API (``GET /fhir/Appointment?status=booked``, every
provider): slots holding more than one booked visit, and referrals used twice.
Both must be 0. Target: p99 < 100 ms on the embedded default.
``GC_FREEZE_SECONDS=0`` in the environment runs the server without the
garbage-collector policy, for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp

from bench.common import broker_pid, cpu_model, proc_cpu, purge, write_ready
from gateway.settings import Settings

WARSAW = ZoneInfo("Europe/Warsaw")
NOW = datetime(2027, 1, 4, 8, 0, tzinfo=WARSAW)  # the sandbox clock: a Monday
FIRST_DAY = date(2027, 1, 5)
SCOPE = "http://cer-gateway.org/fhir/CodeSystem/scope"
CATEGORY = "http://cer-gateway.org/fhir/CodeSystem/slot-category"
CITIES = [("Kraków", "31-147"), ("Warszawa", "00-950"), ("Gdańsk", "80-001"), ("Łódź", "90-001")]
REPO = str(Path(__file__).resolve().parents[1])
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1/cer-bench-booking"


# --------------------------------------------------------------------------- workload


def slot_times(n: int) -> list[datetime]:
    """``n`` 20-minute slots, Mon-Fri 08:00-16:00 Warsaw, from ``FIRST_DAY``."""
    out: list[datetime] = []
    day = FIRST_DAY
    while len(out) < n:
        if day.isoweekday() <= 5:
            for k in range(24):
                if len(out) == n:
                    break
                out.append(
                    datetime(day.year, day.month, day.day, 8, tzinfo=WARSAW)
                    + timedelta(minutes=20 * k)
                )
        day += timedelta(days=1)
    return out


def clinic_bundle(index: int, slots: int) -> dict[str, Any]:
    city, postal = CITIES[index % len(CITIES)]
    entries: list[dict[str, Any]] = [
        {
            "resource": {
                "resourceType": "Location",
                "id": "loc",
                "status": "active",
                "name": f"Poradnia Kardiologiczna nr {index}",
                "address": {"line": [f"ul. Szpitalna {index}"], "city": city, "postalCode": postal},
            },
            "request": {"method": "PUT", "url": "Location/loc"},
        },
        {
            "resource": {
                "resourceType": "Schedule",
                "id": "sch",
                "active": True,
                "serviceType": [{"coding": [{"system": SCOPE, "code": "cardiology"}]}],
                "actor": [{"reference": "Location/loc"}],
            },
            "request": {"method": "PUT", "url": "Schedule/sch"},
        },
    ]
    for k, start in enumerate(slot_times(slots)):
        entries.append(
            {
                "resource": {
                    "resourceType": "Slot",
                    "id": f"s{k}",
                    "serviceType": [{"coding": [{"system": SCOPE, "code": "cardiology"}]}],
                    "appointmentType": {"coding": [{"system": CATEGORY, "code": "first-stable"}]},
                    "schedule": {"reference": "Schedule/sch"},
                    "status": "free",
                    "start": start.isoformat(),
                    "end": (start + timedelta(minutes=20)).isoformat(),
                },
                "request": {"method": "PUT", "url": f"Slot/s{k}"},
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


# --------------------------------------------------------------------------- the server


def serve(backend: str, amqp_url: str, ready_file: str) -> int:
    """The child process: the real app on a free port until SIGTERM."""
    from aiohttp import web

    from gateway import gc_policy
    from gateway.http.app import create_app
    from gateway.logging import configure_logging
    from gateway.settings import Settings

    settings = Settings(
        cer_mode="sandbox",
        amqp_url=amqp_url if backend == "rabbitmq" else None,
        mongodb_url=None,
        log_level="WARNING",
        command_timeout_seconds=120.0,
        max_body_bytes=64 * 1024 * 1024,
        sample_data=False,
    )
    configure_logging(settings.log_level)

    async def run() -> None:
        app = create_app(settings)
        if gc_policy.wanted(settings):  # as ``cer-gateway serve`` does
            app.cleanup_ctx.append(gc_policy.cleanup_ctx(settings))
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        write_ready(ready_file, runner.addresses[0][1])
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(run())
    return 0


@dataclass
class Server:
    proc: asyncio.subprocess.Process
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def start_server(backend: str, amqp_url: str, workdir: Path) -> Server:
    ready = workdir / f"ready-{backend}"
    log = workdir / f"server-{backend}.log"
    cmd = [sys.executable, "-m", "bench.booking", "--serve", backend, "--amqp-url", amqp_url]
    cmd += ["--ready-file", str(ready)]
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=out, stderr=out, env={**os.environ, "PYTHONPATH": REPO}
        )
    for _ in range(600):
        if ready.exists() and ready.read_text():
            return Server(proc, int(ready.read_text()), log)
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    raise SystemExit(f"the {backend} server did not start:\n{log.read_text()[-3000:]}")


async def stop_server(server: Server) -> None:
    server.proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(server.proc.wait(), 60)
    except TimeoutError:
        server.proc.kill()
        await server.proc.wait()


# --------------------------------------------------------------------------- the patients


@dataclass
class Identity:
    token: str
    referral: dict[str, str]


@dataclass
class Run:
    backend: str
    search_ms: list[float] = field(default_factory=list)
    book_ms: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    booked: list[dict[str, Any]] = field(default_factory=list)
    gave_up: int = 0
    elapsed: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    double_slots: int = -1
    double_referrals: int = -1
    fhir_booked: int = -1


async def post_json(
    http: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str] | None = None
) -> Any:
    async with http.post(
        url, data=json.dumps(body), headers={"Content-Type": "application/json", **(headers or {})}
    ) as resp:
        text = await resp.text()
        if resp.status >= 300:
            raise SystemExit(f"POST {url}: {resp.status} {text[:500]}")
        return json.loads(text)


async def setup(
    http: aiohttp.ClientSession, base: str, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], list[Identity]]:
    """Providers with their slots, and one sandbox patient + referral per booking to make."""
    await post_json(http, f"{base}/sandbox/clock", {"set": NOW.isoformat()})
    per = args.slots // args.providers
    providers: list[dict[str, Any]] = []
    for i in range(args.providers):
        prov = await post_json(http, f"{base}/sandbox/providers", {"name": f"Szpital {i}"})
        providers.append(prov)
    sem = asyncio.Semaphore(4)

    async def load(i: int, prov: dict[str, Any]) -> None:
        async with sem:
            headers = {
                "Authorization": f"Bearer {prov['token']}",
                "Content-Type": "application/fhir+json",
            }
            async with http.post(
                f"{base}/fhir", data=json.dumps(clinic_bundle(i, per)), headers=headers
            ) as resp:
                if resp.status != 200:
                    raise SystemExit(f"loading slots: {resp.status} {(await resp.text())[:500]}")

    await asyncio.gather(*[load(i, p) for i, p in enumerate(providers)])
    count = args.bookings + args.patients * 2
    born0 = date(1940, 1, 1)
    sem = asyncio.Semaphore(32)

    async def identity(k: int) -> Identity:
        async with sem:
            born = (born0 + timedelta(days=k % 20000)).isoformat()
            pat = await post_json(
                http,
                f"{base}/sandbox/patients",
                {"birth_date": born, "sex": ("female", "male")[k % 2]},
            )
            ref = await post_json(
                http,
                f"{base}/sandbox/referrals",
                {"pesel": pat["pesel"], "scope": "cardiology", "category": "stable"},
            )
            return Identity(pat["token"], {"key": ref["key"], "code": ref["code"]})

    identities = list(await asyncio.gather(*[identity(k) for k in range(count)]))
    return providers, identities


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


async def patients(
    http: aiohttp.ClientSession,
    base: str,
    args: argparse.Namespace,
    providers: list[dict[str, Any]],
    pool: list[Identity],
    run: Run,
) -> None:
    popular = [f"{p['provider_id']}~loc" for p in providers[:3]]
    rng = random.Random(args.seed)
    think = args.think_ms / 1000.0

    async def pause(scale: float = 1.0) -> None:
        if think > 0:
            await asyncio.sleep(rng.expovariate(1.0 / (think * scale)))

    def criteria() -> tuple[dict[str, str], bool]:
        params = {"scope": "cardiology"}
        if rng.random() < args.hot:
            params["facility"] = rng.choices(popular, weights=[5, 3, 2])[0]
            params["limit"] = "5"
            return params, True
        choice = rng.randrange(3)
        if choice == 0:
            params["city"] = rng.choice(CITIES)[0]
        elif choice == 1:
            params["weekdays"] = ",".join(str(d) for d in sorted(rng.sample(range(1, 6), 2)))
        else:
            params["hours"] = rng.choice(["08:00-12:00", "12:00-16:00"])
        params["limit"] = "10"
        return params, False

    async def timed(method: str, url: str, out: list[float], **kw: Any) -> tuple[int, Any]:
        t0 = time.perf_counter()
        async with http.request(method, url, **kw) as resp:
            body = await resp.json(content_type=None)
            status = resp.status
        out.append((time.perf_counter() - t0) * 1000)
        return status, body

    async def session() -> None:
        while len(run.booked) < args.bookings and pool:
            who = pool.pop()
            headers = {"Authorization": f"Bearer {who.token}"}
            await pause()
            for _attempt in range(args.attempts):
                params, hot = criteria()
                status, page = await timed(
                    "GET", f"{base}/patient/v1/slots", run.search_ms, params=params, headers=headers
                )
                if status != 200:
                    run.outcomes[f"search {status}"] += 1
                    break
                if not page["slots"]:
                    run.outcomes["search found nothing"] += 1
                    continue
                # the earliest, mostly: the hot spot (others take one of those shown)
                first = hot and rng.random() < 0.6
                pick = page["slots"][0] if first else rng.choice(page["slots"])
                await pause()
                body = {
                    "slot_id": pick["id"],
                    "referral": who.referral,
                    "contact": {"phone": "+48600100200"},
                }
                status, reply = await timed(
                    "POST",
                    f"{base}/patient/v1/appointments",
                    run.book_ms,
                    data=json.dumps(body),
                    headers={**headers, "Content-Type": "application/json"},
                )
                code = reply.get("code") if isinstance(reply, dict) else None
                run.outcomes[f"{status} {code}" if code else str(status)] += 1
                if status == 201:
                    run.booked.append(reply)
                    break
                if status != 409:
                    break
                await pause(0.5)
            else:
                run.gave_up += 1

    t0 = time.perf_counter()
    await asyncio.gather(*[session() for _ in range(args.patients)])
    run.elapsed = time.perf_counter() - t0


async def double_bookings(
    http: aiohttp.ClientSession, base: str, providers: list[dict[str, Any]], run: Run
) -> None:
    """Count, through each provider's FHIR API, slots and referrals with two booked visits."""
    per_slot: Counter[str] = Counter()
    per_referral: Counter[str] = Counter()
    for prov in providers:
        headers = {"Authorization": f"Bearer {prov['token']}"}
        url: str | None = f"{base}/fhir/Appointment?status=booked&_count=1000"
        while url:
            async with http.get(url, headers=headers) as resp:
                bundle = await resp.json(content_type=None)
            for entry in bundle.get("entry", []):
                res = entry["resource"]
                for ref in res.get("slot", []):
                    per_slot[f"{prov['provider_id']}/{ref['reference']}"] += 1
                for based in res.get("basedOn", []):
                    per_referral[based["identifier"]["value"]] += 1
            nxt = [lk["url"] for lk in bundle.get("link", []) if lk["relation"] == "next"]
            url = base + nxt[0][nxt[0].index("/fhir") :] if nxt else None
    run.fhir_booked = sum(per_slot.values())
    run.double_slots = sum(1 for n in per_slot.values() if n > 1)
    run.double_referrals = sum(1 for n in per_referral.values() if n > 1)
    # and what the patients were told: no slot and no referral won twice
    won = Counter(b["slot_id"] for b in run.booked)
    refs = Counter(b["referral"]["key"] for b in run.booked if b.get("referral"))
    run.double_slots += sum(1 for n in won.values() if n > 1)
    run.double_referrals += sum(1 for n in refs.values() if n > 1)


async def one_backend(backend: str, args: argparse.Namespace, workdir: Path) -> Run:
    if backend == "rabbitmq":
        await purge(Settings(amqp_url=args.amqp_url))
    server = await start_server(backend, args.amqp_url, workdir)
    run = Run(backend)
    try:
        connector = aiohttp.TCPConnector(limit=args.patients + 10)
        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            providers, pool = await setup(http, server.url, args)
            broker = broker_pid() if backend == "rabbitmq" else None
            before = {
                "server": proc_cpu(server.proc.pid) or 0.0,
                "broker": proc_cpu(broker) or 0.0,
                "patients": time.process_time(),
            }
            await patients(http, server.url, args, providers, pool, run)
            after = {
                "server": proc_cpu(server.proc.pid) or 0.0,
                "broker": proc_cpu(broker) or 0.0,
                "patients": time.process_time(),
            }
            run.cpu = {
                k: after[k] - before[k] for k in before if backend == "rabbitmq" or k != "broker"
            }
            await double_bookings(http, server.url, providers, run)
    finally:
        await stop_server(server)
    return run


# --------------------------------------------------------------------------- report


def machine() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"machine: nproc={os.cpu_count()} (usable {len(os.sched_getaffinity(0))}), "
        f"CPU {cpu_model()!r}, Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.system()} {platform.machine()}; "
        f"load average {load}"
    )


def latency(name: str, ms: list[float]) -> str:
    return (
        f"  {name + ' latency ms:':20} p50 {pct(ms, 50):6.1f}  p95 {pct(ms, 95):6.1f}  "
        f"p99 {pct(ms, 99):6.1f}  max {max(ms, default=0):6.1f}"
    )


def report(run: Run) -> str:
    n = len(run.booked)
    lines = [
        f"[{run.backend}] {n} bookings in {run.elapsed:.1f} s = {n / run.elapsed:.0f} bookings/s; "
        f"{len(run.search_ms)} searches, {len(run.book_ms)} booking attempts",
        latency("search", run.search_ms),
        latency("booking", run.book_ms),
        "  outcomes: "
        + ", ".join(f"{k}: {v}" for k, v in sorted(run.outcomes.items()))
        + f"; gave up after retries: {run.gave_up}",
        f"  double bookings: {run.double_slots} slots, {run.double_referrals} referrals "
        f"(booked visits seen by the providers: {run.fhir_booked})",
        "  CPU: "
        + ", ".join(f"{k} {v:.1f} s ({v / run.elapsed:.2f} cores)" for k, v in run.cpu.items()),
    ]
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    print(machine())
    print(
        f"workload: {args.patients} concurrent patients, {args.slots} free first-stable cardiology "
        f"slots of {args.providers} facilities, until {args.bookings} bookings; hot spots: "
        f"{args.hot:.0%} of the patients want the earliest slots of 3 popular facilities (weights "
        f"5:3:2; limit 5, the first taken 60 % of the time), the rest search by city, weekdays "
        f"or hours and take one of 10; think "
        f"time exp. mean {args.think_ms} ms; up to {args.attempts} tries per patient",
        flush=True,
    )
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backend:
            run = await one_backend(backend, args, Path(tmp))
            runs.append(run)
            print(report(run), flush=True)
    failed = [r for r in runs if r.double_slots or r.double_referrals]
    if failed:
        print("DOUBLE BOOKINGS FOUND", file=sys.stderr)
        return 1
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--backend", nargs="+", default=["embedded", "rabbitmq"], choices=["embedded", "rabbitmq"]
    )
    p.add_argument("--amqp-url", default=DEFAULT_AMQP)
    p.add_argument("--patients", type=int, default=200)
    p.add_argument("--slots", type=int, default=10_000)
    p.add_argument("--providers", type=int, default=25)
    p.add_argument("--bookings", type=int, default=2_000)
    p.add_argument("--hot", type=float, default=0.8)
    p.add_argument("--think-ms", type=float, default=1000.0)
    p.add_argument("--attempts", type=int, default=5)
    p.add_argument("--seed", type=int, default=4)
    p.add_argument("--serve", choices=["embedded", "rabbitmq"], help=argparse.SUPPRESS)
    p.add_argument("--ready-file", help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    ns = parse_args()
    if ns.serve:
        sys.exit(serve(ns.serve, ns.amqp_url, ns.ready_file))
    sys.exit(asyncio.run(main(ns)))
