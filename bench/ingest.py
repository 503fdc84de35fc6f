"""Ingest benchmark (issue 3, item 10): ``python -m bench.ingest``.

N Slots (``--slots``, default 100,000) are posted over HTTP as FHIR
``transaction`` Bundles of ``--bundle`` entries (default 500) by
``--concurrency`` posters (default 4) and timed until all are searchable
(``GET /fhir/Slot?_count=0`` answers ``total == N``), then until the outbox
relay has published every domain event (the target is judged on this second
time: searchable and drained). Once per backend (``--backend``):

* ``embedded``: the in-process bus and the embedded store (the default run);
* ``rabbitmq``: RabbitMQ and the embedded store. By default the run makes a
  vhost of its own (``cer-bench-ingest-<pid>``, with ``rabbitmqctl``) and
  deletes it at the end: two runs sharing a vhost would share the command
  queues, and a command taken by the other run's server (another embedded
  store) answers 422 "Schedule/... does not exist for this provider". With
  ``--amqp-url`` the given vhost is used (its gateway queues are deleted
  first): run one benchmark at a time on it.

The server is the real gateway: ``create_app(Settings(cer_mode="sandbox",
...))`` served by ``aiohttp.web.AppRunner`` on a free localhost port, in a
child Python process (``python -m bench.ingest --serve ...``), with the
garbage-collector policy ``cer-gateway serve`` uses with the embedded store
(``gateway.gc_policy``), so the posting client (this process) does not share
its event loop or its core. Set-up per
run: a sandbox provider, one Location, and as many cardiology Schedules as the
Slots need (one cardiologist each: 8 weeks, Mon-Fri 08:00-16:00
Europe/Warsaw, 20-minute slots, categories as in
``docs/examples/make_week.py``). Each Slot entry is a conditional create
(``POST Slot``, ``ifNoneExist`` on the vendor's identifier), like a vendor
system's.

The same run measures the validation floor: ``fhir.resources.R4B`` ``Slot.
model_validate`` over the same Slot dicts, in this process on one core, with
no server running. It prints the machine, the workload, resources/s end to end
per backend, the floor and the ratio (target: at least 50 % of the floor on
RabbitMQ).

``--profile`` adds a run of ``--profile-slots`` Slots (default 10,000) on
``--profile-backend`` (default rabbitmq) with the server under cProfile and
prints its top 25 functions by cumulative time and top 20 by own time (the
rate of that run is not a figure: cProfile slows Python code ~2x);
``--profile-save FILE`` keeps its stats for ``pstats`` (callers, callees).

``--slots 20000 --backend rabbitmq`` is a quick look; the default run takes a
few minutes.

Last figures (README, "Ingest benchmark"; 2 vCPUs, Intel Xeon, 2026-11-26 10:52-10:54
UTC, nothing else running, load average 0.5-1.5): floor 9,849-11,138 Slots/s; embedded
6,681/s (68 %); RabbitMQ 6,248 / 6,480 / 6,740/s (63 / 61 / 60 %): the target (50 % on
RabbitMQ) is met. Server CPU 246-260 us per Slot (427 us at that day's start on the
same machine, 45 %): the event loop ~120 us (205), the validation process ~1.2x the
floor (~2x). The two share the two vCPUs (1.6-1.7 cores together).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import platform
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as dtime
from importlib import metadata
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import orjson

from bench.common import broker_pid, cpu_model, purge, write_ready
from gateway.settings import Settings

WARSAW = ZoneInfo("Europe/Warsaw")
FIRST_MONDAY = date(2027, 1, 11)
WEEKS = 8
DAYS = 5
FIRST, LAST = dtime(8, 0), dtime(16, 0)
MINUTES = 20
SLOTS_PER_DAY = (LAST.hour - FIRST.hour) * 60 // MINUTES
SLOTS_PER_SCHEDULE = SLOTS_PER_DAY * DAYS * WEEKS  # 960

VENDOR = "http://example-vendor.pl/fhir/sid"
SLOT_SYSTEM = f"{VENDOR}/slot"
SCOPE = "http://cer-gateway.org/fhir/CodeSystem/scope"
CELL_SPECIALTY = "urn:oid:2.16.840.1.113883.3.4424.11.2.4"
CATEGORY = "http://cer-gateway.org/fhir/CodeSystem/slot-category"
CATEGORY_DISPLAY = {
    "first-urgent": "Pierwszorazowa \u2013 przypadek pilny",
    "first-stable": "Pierwszorazowa \u2013 przypadek stabilny",
    "first-privileged": "Pierwszorazowa \u2013 pacjent uprzywilejowany (poza kolejnością)",
    "control": "Kontrolna / kolejna",
}
CARDIOLOGY = {"system": SCOPE, "code": "cardiology", "display": "Kardiologia"}
LOCATION_ID = "bench-loc"
REPO = str(Path(__file__).resolve().parent.parent)
DEFAULT_AMQP = os.environ.get("BENCH_AMQP_URL")  # None: a private vhost per run
FHIR_JSON = "application/fhir+json"
TARGET = 0.5  # of the floor, end to end on RabbitMQ (issue 3)


# --------------------------------------------------------------------------- workload


def category(day: int, index: int) -> str:
    """Slot category as in make_week.py (its 12 morning slots, repeated in the afternoon)."""
    index %= 12
    if index == 0 or (day == 2 and index == 6):
        return "first-urgent"
    if index == 11 or (index == 10 and day in (1, 3)):
        return "control"
    if index == 5 and day in (0, 3):
        return "first-privileged"
    return "first-stable"


def schedule_id(n: int) -> str:
    return f"bench-sch-{n:04d}"


def location() -> dict[str, Any]:
    return {
        "resourceType": "Location",
        "id": LOCATION_ID,
        "identifier": [{"system": f"{VENDOR}/location", "value": "LOC-BENCH"}],
        "status": "active",
        "name": "Przychodnia Przykładowa \u2013 Poradnia Kardiologiczna",
        "address": {"line": ["ul. Przykładowa 1"], "city": "Kraków", "postalCode": "31-000"},
    }


def schedule(n: int) -> dict[str, Any]:
    last = FIRST_MONDAY + timedelta(weeks=WEEKS) - timedelta(days=3)
    return {
        "resourceType": "Schedule",
        "id": schedule_id(n),
        "identifier": [{"system": f"{VENDOR}/schedule", "value": f"SCH-KARD-BENCH-{n:04d}"}],
        "active": True,
        "serviceType": [
            {
                "coding": [
                    CARDIOLOGY,
                    {
                        "system": CELL_SPECIALTY,
                        "code": "1100",
                        "display": "Poradnia kardiologiczna",
                    },
                ]
            }
        ],
        "actor": [{"reference": f"Location/{LOCATION_ID}"}],
        "planningHorizon": {"start": FIRST_MONDAY.isoformat(), "end": last.isoformat()},
        "comment": f"Kardiolog {n}: konsultacje, {WEEKS} tygodni od {FIRST_MONDAY}",
    }


def slots(n: int) -> Iterator[dict[str, Any]]:
    """``n`` Slots: schedule after schedule, day after day, 20 minutes each."""
    made = 0
    sch = 0
    while made < n:
        for week in range(WEEKS):
            for day in range(DAYS):
                d = FIRST_MONDAY + timedelta(weeks=week, days=day)
                start = datetime.combine(d, FIRST, tzinfo=WARSAW)
                for index in range(SLOTS_PER_DAY):
                    if made == n:
                        return
                    end = start + timedelta(minutes=MINUTES)
                    cat = category(day, index)
                    yield {
                        "resourceType": "Slot",
                        "identifier": [
                            {
                                "system": SLOT_SYSTEM,
                                "value": f"SLOT-KARD-{sch:04d}-{start:%Y%m%d-%H%M}",
                            }
                        ],
                        "serviceType": [{"coding": [CARDIOLOGY]}],
                        "appointmentType": {
                            "coding": [
                                {"system": CATEGORY, "code": cat, "display": CATEGORY_DISPLAY[cat]}
                            ]
                        },
                        "schedule": {"reference": f"Schedule/{schedule_id(sch)}"},
                        "status": "free",
                        "start": start.isoformat(),
                        "end": end.isoformat(),
                    }
                    made += 1
                    start = end
        sch += 1


def slot_entry(slot: dict[str, Any]) -> dict[str, Any]:
    value = slot["identifier"][0]["value"]
    return {
        "fullUrl": "urn:uuid:" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"{SLOT_SYSTEM}|{value}")),
        "resource": slot,
        "request": {
            "method": "POST",
            "url": "Slot",
            "ifNoneExist": f"identifier={SLOT_SYSTEM}|{value}",
        },
    }


def transaction(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def put_entry(resource: dict[str, Any]) -> dict[str, Any]:
    return {
        "resource": resource,
        "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"},
    }


@dataclass
class Workload:
    slots: list[dict[str, Any]]
    bodies: list[bytes]  # the transaction Bundles, serialized once, before the clock starts
    schedules: int
    bundle: int

    @classmethod
    def make(cls, n: int, bundle: int) -> Workload:
        all_slots = list(slots(n))
        bodies = [
            orjson.dumps(transaction([slot_entry(s) for s in all_slots[i : i + bundle]]))
            for i in range(0, n, bundle)
        ]
        return cls(all_slots, bodies, -(-n // SLOTS_PER_SCHEDULE), bundle)


# --------------------------------------------------------------------------- the floor


def measure_floor(resources: list[dict[str, Any]]) -> float:
    """Resources/s of fhir.resources R4B ``Slot.model_validate`` alone, on this one core."""
    from fhir.resources.R4B.slot import Slot

    Slot.model_validate(resources[0])  # import and first-use costs out of the timing
    t0 = time.perf_counter()
    for r in resources:
        Slot.model_validate(r)
    return len(resources) / (time.perf_counter() - t0)


# --------------------------------------------------------------------------- the server


def read_ready(path: Path) -> int | None:
    text = path.read_text() if path.exists() else ""
    return int(text) if text else None


def server_command(backend: str, amqp_url: str, ready: Path, profile_out: Path | None) -> list[str]:
    cmd = [sys.executable, "-m", "bench.ingest", "--serve", backend, "--amqp-url", amqp_url]
    cmd += ["--ready-file", str(ready)]
    if profile_out is not None:
        cmd += ["--profile-out", str(profile_out)]
    return cmd


def serve(backend: str, amqp_url: str, ready_file: str, profile_out: str | None) -> int:
    """The child process: the real app on a free port until SIGTERM."""
    from aiohttp import web

    from gateway import gc_policy
    from gateway.http import bundles
    from gateway.http.app import create_app
    from gateway.logging import configure_logging
    from gateway.settings import Settings

    settings = Settings(
        cer_mode="sandbox",
        amqp_url=amqp_url if backend == "rabbitmq" else None,
        mongodb_url=None,
        log_level="WARNING",
        command_timeout_seconds=600.0,
        max_body_bytes=64 * 1024 * 1024,
        sample_data=False,
    )
    configure_logging(settings.log_level)

    app = create_app(settings)
    if gc_policy.wanted(settings):  # as cer-gateway serve does with the embedded store
        app.cleanup_ctx.append(gc_policy.cleanup_ctx(settings))
    app.on_startup.append(bundles.warm_pool)  # as cer-gateway serve does

    async def run() -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        write_ready(ready_file, port)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    prof = cProfile.Profile() if profile_out else None
    if prof is not None:
        prof.enable()
    try:
        asyncio.run(run())
    finally:
        if prof is not None and profile_out:
            prof.disable()
            prof.dump_stats(profile_out)
    return 0


@dataclass
class Server:
    proc: asyncio.subprocess.Process
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def start_server(
    backend: str, amqp_url: str, workdir: Path, profile_out: Path | None = None
) -> Server:
    ready = workdir / f"ready-{backend}-{time.monotonic_ns()}"
    log = workdir / f"server-{backend}.log"
    env = {**os.environ, "PYTHONPATH": REPO}
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *server_command(backend, amqp_url, ready, profile_out), stdout=out, stderr=out, env=env
        )
    for _ in range(600):
        port = read_ready(ready)
        if port is not None:
            return Server(proc, port, log)
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    raise SystemExit(f"the {backend} server did not start; its log:\n{log.read_text()[-3000:]}")


async def stop_server(server: Server) -> None:
    server.proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(server.proc.wait(), 60)
    except TimeoutError:
        server.proc.kill()
        await server.proc.wait()


def server_cpu(server: Server) -> float:
    """CPU seconds the server has used so far (``/proc/<pid>/stat``), with its own child
    processes (the Bundle validation pool), alive or not."""
    return sum(proc_cpu(pid) or 0.0 for pid in process_tree(server.proc.pid))


def process_tree(pid: int) -> list[int]:
    out = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                out += process_tree(int(child))
    return out


def proc_cpu(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # utime + stime, and cutime + cstime of children it has waited for
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def ctl(*args: str) -> bool:
    try:
        subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


@contextlib.contextmanager
def private_vhost(amqp_url: str | None) -> Iterator[str]:
    """``amqp_url`` if given, else a vhost of this run's own, deleted at the end."""
    if amqp_url:
        yield amqp_url
        return
    vhost = f"cer-bench-ingest-{os.getpid()}"
    if not (ctl("add_vhost", vhost) and ctl("set_permissions", "-p", vhost, "guest", *[".*"] * 3)):
        raise SystemExit(
            "could not make a RabbitMQ vhost with rabbitmqctl; pass --amqp-url (a vhost no "
            "other run uses)"
        )
    try:
        yield f"amqp://guest:guest@127.0.0.1/{vhost}"
    finally:
        ctl("delete_vhost", vhost)


# --------------------------------------------------------------------------- the client


@dataclass
class Run:
    backend: str
    slots: int
    bundles: int
    posted_s: float = 0.0
    searchable_s: float = 0.0
    relayed_s: float | None = None
    failures: list[str] = field(default_factory=list)
    # CPU seconds from the first post until searchable: server, broker, this client
    cpu: dict[str, float] = field(default_factory=dict)
    cpu_relayed: float | None = None  # server CPU seconds until every event was published

    @property
    def rate(self) -> float:
        return self.slots / self.searchable_s

    @property
    def relayed_rate(self) -> float | None:
        return self.slots / self.relayed_s if self.relayed_s else None


EVENTS_RE = re.compile(r'^messages_published_total\{kind="event"\} ([0-9.e+]+)$', re.M)


async def events_published(http: aiohttp.ClientSession, base: str) -> int:
    async with http.get(f"{base}/metrics") as resp:
        m = EVENTS_RE.search(await resp.text())
    return int(float(m.group(1))) if m else 0


async def slot_total(http: aiohttp.ClientSession, base: str, headers: dict[str, str]) -> int:
    async with http.get(f"{base}/fhir/Slot?_count=0", headers=headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"search answered {resp.status}: {await resp.text()}")
        return int((await resp.json())["total"])


async def setup(
    http: aiohttp.ClientSession, base: str, schedules: int
) -> tuple[dict[str, str], int]:
    """A sandbox provider, one Location, the Schedules; the headers and events written."""
    async with http.post(f"{base}/sandbox/providers", json={"name": "Bench clinic"}) as resp:
        if resp.status != 201:
            raise RuntimeError(f"sandbox provider: {resp.status} {await resp.text()}")
        token = (await resp.json())["token"]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": FHIR_JSON}
    entries = [put_entry(location()), *(put_entry(schedule(n)) for n in range(schedules))]
    async with http.post(
        f"{base}/fhir", data=orjson.dumps(transaction(entries)), headers=headers
    ) as resp:
        if resp.status != 200:
            raise RuntimeError(f"set-up transaction: {resp.status} {await resp.text()}")
    return headers, len(entries)


async def ingest(
    backend: str, server: Server, work: Workload, concurrency: int, wait_relay: float
) -> Run:
    base = server.url
    run = Run(backend, len(work.slots), len(work.bodies))
    broker = broker_pid() if backend == "rabbitmq" else None
    timeout = aiohttp.ClientTimeout(total=900)
    connector = aiohttp.TCPConnector(limit=concurrency + 2)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        headers, setup_events = await setup(http, base, work.schedules)
        pending = iter(enumerate(work.bodies))
        done = 0
        sizes = [len(b) for b in work.bodies]

        async def poster() -> None:
            nonlocal done
            for i, body in pending:  # a shared iterator: each bundle is posted once
                async with http.post(f"{base}/fhir", data=body, headers=headers) as resp:
                    text = await resp.read()
                    if resp.status != 200:
                        run.failures.append(f"bundle {i}: {resp.status} {text[:300]!r}")
                        continue
                    statuses = [e["response"]["status"] for e in orjson.loads(text)["entry"]]
                    bad = [s for s in statuses if not s.startswith(("200", "201"))]
                    if bad:
                        run.failures.append(f"bundle {i}: {len(bad)} entries answered {bad[0]}")
                done += 1

        async def progress(t0: float) -> None:
            while True:
                await asyncio.sleep(5)
                dt = time.perf_counter() - t0
                n = min(done * work.bundle, run.slots)
                print(
                    f"  [{backend}] {dt:6.1f} s  {done}/{run.bundles} bundles  "
                    f"{n:,} slots  {n / dt:,.0f}/s",
                    flush=True,
                )

        print(
            f"  [{backend}] set-up done ({setup_events} resources); posting "
            f"{run.bundles} bundles ({sum(sizes) / 1e6:.1f} MB) with {concurrency} posters",
            flush=True,
        )
        cpu0 = (server_cpu(server), proc_cpu(broker) if broker else None, time.process_time())
        loop0 = proc_cpu(server.proc.pid) or 0.0
        t0 = time.perf_counter()
        ticker = asyncio.create_task(progress(t0))
        try:
            await asyncio.gather(*(poster() for _ in range(concurrency)))
            run.posted_s = time.perf_counter() - t0
            ticker.cancel()
            while await slot_total(http, base, headers) < run.slots:
                if time.perf_counter() - t0 > run.posted_s + 300:
                    run.failures.append("not all slots searchable 300 s after the last post")
                    break
                await asyncio.sleep(0.1)
            run.searchable_s = time.perf_counter() - t0
            run.cpu["server"] = server_cpu(server) - cpu0[0]
            # the event loop's process alone (without the validation process beside it)
            run.cpu["server loop"] = (proc_cpu(server.proc.pid) or 0.0) - loop0
            broker_now = proc_cpu(broker) if broker else None
            if broker_now is not None and cpu0[1] is not None:
                run.cpu["broker"] = broker_now - cpu0[1]
            run.cpu["client"] = time.process_time() - cpu0[2]
            expected = setup_events + run.slots
            while time.perf_counter() - t0 < run.searchable_s + wait_relay:
                if await events_published(http, base) >= expected:
                    run.relayed_s = time.perf_counter() - t0
                    run.cpu_relayed = server_cpu(server) - cpu0[0]
                    break
                await asyncio.sleep(0.2)
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
    return run


async def one_backend(
    backend: str,
    args: argparse.Namespace,
    work: Workload,
    workdir: Path,
    profile_out: Path | None = None,
) -> Run:
    if backend == "rabbitmq":
        await purge(Settings(amqp_url=args.amqp_url))
    server = await start_server(backend, args.amqp_url, workdir, profile_out)
    try:
        return await ingest(backend, server, work, args.concurrency, args.wait_relay)
    finally:
        await stop_server(server)


# --------------------------------------------------------------------------- report


def versions() -> str:
    names = ("fhir.resources", "pydantic", "aiohttp", "aio-pika", "orjson")
    out = []
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out.append(f"{name} {metadata.version(name)}")
    return ", ".join(out)


def machine() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"machine: nproc={os.cpu_count()} (usable {len(os.sched_getaffinity(0))}), "
        f"CPU {cpu_model()!r}, Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.system()} {platform.machine()}; "
        f"load average {load}\n"
        f"libraries: {versions()}"
    )


def cpu_line(run: Run) -> str:
    parts = [f"{k} {v:.1f} s ({v / run.searchable_s:.2f} cores)" for k, v in run.cpu.items()]
    if "server" in run.cpu:
        parts[0] += f" = {run.cpu['server'] * 1e6 / run.slots:.0f} us per Slot"
    line = "CPU until searchable: " + ", ".join(parts)
    if run.cpu_relayed is not None and run.relayed_s:
        line += (
            f"; server CPU until every event was published: {run.cpu_relayed:.1f} s "
            f"({run.cpu_relayed * 1e6 / run.slots:.0f} us per Slot)"
        )
    return line


def per_cpu(run: Run, floor: float, key: str = "server") -> str:
    """Slots per second of server CPU until searchable: the rate a whole core would give."""
    cpu = run.cpu.get(key)
    return f"{run.slots / cpu:,.0f} ({run.slots / cpu / floor:.0%})" if cpu else "-"


def table(runs: list[Run], floor: float, n: int) -> str:
    head = (
        f"{'':34} {'slots':>8} {'bundles':>7} {'posted s':>9} {'searchable s':>12} "
        f"{'resources/s':>11} {'vs floor':>8} {'per server CPU-s':>16} "
        f"{'per loop CPU-s':>16}   {'events relayed s (res/s)':>24}"
    )
    lines = [head, "-" * len(head)]
    lines.append(
        f"{'floor: R4B Slot.model_validate':34} {n:>8,} {'':>7} {'':>9} "
        f"{n / floor:>12.2f} {floor:>11,.0f} {'100 %':>8}"
    )
    for r in runs:
        relayed = (
            f"{r.relayed_s:.2f} ({r.relayed_rate:,.0f})"
            if r.relayed_s and r.relayed_rate
            else "not within --wait-relay"
        )
        if r.failures:
            lines.append(
                f"{'end to end, ' + r.backend:34} {r.slots:>8,} {r.bundles:>7}  FAILED: "
                f"{len(r.failures)} problem(s), first: {r.failures[0][:60]}"
            )
            continue
        lines.append(
            f"{'end to end, ' + r.backend:34} {r.slots:>8,} {r.bundles:>7} {r.posted_s:>9.2f} "
            f"{r.searchable_s:>12.2f} {r.rate:>11,.0f} {r.rate / floor:>7.0%} "
            f"{per_cpu(r, floor):>16} {per_cpu(r, floor, 'server loop'):>16}   {relayed:>24}"
        )
    return "\n".join(lines)


SKIP_PROFILE = ("/asyncio/", "runners.py", "<frozen", "'run' of '_contextvars", "selectors.py")
IDLE = "<method 'poll' of 'select.epoll' objects>"


def where(func: tuple[str, int, str]) -> str:
    path, line, name = func
    if path == "~":
        return name
    for marker in ("/site-packages/", REPO + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = Path(path).name
    return f"{path}:{line}({name})"


def profile_report(path: Path, top: int = 25) -> str:
    """The server's top functions, leaving out the event loop's own frames."""
    stats = pstats.Stats(str(path))
    total = max(stats.total_tt, 1e-9)  # type: ignore[attr-defined]
    rows = [
        (func, nc, tt, ct)
        for func, (_cc, nc, tt, ct, _callers) in stats.stats.items()  # type: ignore[attr-defined]
        if not any(s in where(func) or s in func[0] for s in SKIP_PROFILE)
    ]
    idle = sum(tt for func, _nc, tt, _ct in rows if where(func) == IDLE)
    rows = [r for r in rows if where(r[0]) != IDLE]
    out = [
        f"server process under cProfile: {total:.2f} s profiled, of which {idle:.2f} s "
        f"({idle / total:.0%}) idle in epoll (start-up, set-up and waits included)"
    ]
    for title, key in ((f"top {top} by cumulative time", 3), ("top 20 by own time", 2)):
        out.append(f"--- {title} (event-loop frames left out) ---")
        out.append(f"{'calls':>9} {'own s':>8} {'cum s':>8} {'cum %':>6}  function")
        n = top if key == 3 else 20
        for func, nc, tt, ct in sorted(rows, key=lambda r: r[key], reverse=True)[:n]:
            out.append(f"{nc:>9} {tt:>8.3f} {ct:>8.3f} {ct / total:>6.1%}  {where(func)}")
    return "\n".join(out)


async def main(args: argparse.Namespace) -> int:
    backends = ["embedded", "rabbitmq"] if args.backend == "both" else [args.backend]
    uses_rabbit = "rabbitmq" in backends or (args.profile and args.profile_backend == "rabbitmq")
    if not uses_rabbit:
        args.amqp_url = args.amqp_url or "amqp://unused"
        return await measure(args, backends)
    with private_vhost(args.amqp_url) as url:
        args.amqp_url = url
        return await measure(args, backends)


async def measure(args: argparse.Namespace, backends: list[str]) -> int:
    print(machine())
    print(
        f"workload: {args.slots:,} Slots in transaction Bundles of {args.bundle} "
        f"(conditional POST with ifNoneExist), {args.concurrency} concurrent posters; "
        f"{-(-args.slots // SLOTS_PER_SCHEDULE)} cardiology Schedules of "
        f"{SLOTS_PER_SCHEDULE} slots ({WEEKS} weeks Mon-Fri 08:00-16:00 Europe/Warsaw, "
        f"{MINUTES} min), 1 Location, 1 sandbox provider\n"
        f"server: create_app(Settings(cer_mode='sandbox', log_level='WARNING')) on "
        f"aiohttp web.AppRunner in a child process, with cer-gateway serve's GC policy; "
        f"store: embedded; "
        f"RabbitMQ: {args.amqp_url.rsplit('@', 1)[-1]}",
        flush=True,
    )
    work = Workload.make(args.slots, args.bundle)
    floor = measure_floor(work.slots)
    print(f"floor: fhir.resources R4B Slot.model_validate, one core: {floor:,.0f} Slots/s")
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="cer-bench-") as tmp:
        workdir = Path(tmp)
        for backend in backends:
            print(f"run: {backend}", flush=True)
            run = await one_backend(backend, args, work, workdir)
            runs.append(run)
            for f in run.failures[:10]:
                print(f"  FAILURE: {f}")
            print(
                f"  [{backend}] {'FAILED, ' if run.failures else ''}"
                f"{run.slots:,} searchable after {run.searchable_s:.2f} s: "
                f"{run.rate:,.0f}/s; {cpu_line(run)}",
                flush=True,
            )
        profile = None
        if args.profile:
            pwork = Workload.make(args.profile_slots, args.bundle)
            out = workdir / "server.prof"
            print(f"run: {args.profile_backend} under cProfile, {args.profile_slots:,} Slots")
            prun = await one_backend(args.profile_backend, args, pwork, workdir, out)
            print(
                f"  [{args.profile_backend}, cProfile] {prun.rate:,.0f}/s (not a figure)",
                flush=True,
            )
            profile = profile_report(out)
            if args.profile_save:
                shutil.copyfile(out, args.profile_save)
    print()
    print(table(runs, floor, args.slots))
    print(
        "per server CPU-s: Slots per CPU second of the server process (with its Bundle "
        "validation process) until searchable, i.e. the rate with one whole core (less "
        "sensitive to other load on the machine); per loop CPU-s: the same for the event "
        "loop's process alone, i.e. the rate when it has a core to itself and the "
        "validation process another"
    )
    for r in runs:
        print(f"{r.backend}: {cpu_line(r)}")
    rabbit = [r for r in runs if r.backend == "rabbitmq"]
    if rabbit and not rabbit[0].failures:
        r = rabbit[0]
        drained = r.relayed_rate
        ratio = (drained or 0.0) / floor
        verdict = "met" if ratio >= TARGET else "NOT met"
        print(
            f"target: >= {TARGET:.0%} of the floor end to end on RabbitMQ, until searchable "
            f"and every event published: {ratio:.0%}, {verdict} "
            f"(until searchable only: {r.rate / floor:.0%})"
        )
    if profile:
        print()
        print(profile)
    return 1 if any(r.failures for r in runs) else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.ingest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--slots", type=int, default=100_000, help="Slots to ingest (100,000)")
    p.add_argument("--bundle", type=int, default=500, help="entries per transaction (500)")
    p.add_argument("--concurrency", type=int, default=4, help="concurrent posters (4)")
    p.add_argument("--backend", choices=["embedded", "rabbitmq", "both"], default="both")
    p.add_argument(
        "--amqp-url",
        default=DEFAULT_AMQP,
        help="RabbitMQ (default: $BENCH_AMQP_URL, else a vhost of this run's own)",
    )
    p.add_argument(
        "--wait-relay",
        type=float,
        default=120.0,
        help="seconds to wait, once searchable, for the outbox relay to publish every event",
    )
    p.add_argument("--profile", action="store_true", help="add a server run under cProfile")
    p.add_argument("--profile-slots", type=int, default=10_000)
    p.add_argument("--profile-backend", choices=["embedded", "rabbitmq"], default="rabbitmq")
    p.add_argument(
        "--profile-save", help="also keep the server's cProfile stats in this file (for pstats)"
    )
    p.add_argument("--serve", choices=["embedded", "rabbitmq"], help=argparse.SUPPRESS)
    p.add_argument("--ready-file", help=argparse.SUPPRESS)
    p.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.slots < 1 or args.bundle < 1 or args.concurrency < 1:
        p.error("--slots, --bundle and --concurrency must be positive")
    return args


if __name__ == "__main__":
    ns = parse_args()
    if ns.serve:
        sys.exit(serve(ns.serve, ns.amqp_url, ns.ready_file, ns.profile_out))
    sys.exit(asyncio.run(main(ns)))
