"""Initial-import benchmark (issue 9, R-SCHED-5): ``python -m bench.import``.

Two uses:

- ``python -m bench.import --generate DIR --appointments 1500000 [--seed 2026]``
  writes a synthetic provider export (``bench.import_data``: Locations,
  Schedules per scope, Slots over 26 weeks, Appointments booking most of them)
  as NDJSON files, and stops. Generated data are never committed.
- ``python -m bench.import [--data DIR | --appointments N]`` measures: it
  starts the real gateway (``cer-gateway serve``: API and workers in one
  process) on RabbitMQ (``--amqp-url``, by default the ``cer-bench-import``
  vhost, made with ``rabbitmqctl`` if missing and emptied first) with the
  embedded store, creates a sandbox provider, and imports the data set with
  the real CLI (``cer-gateway import`` in its own process), then imports it a
  second time (nothing changes). It prints per run: resources, time,
  resources/s, the gateway's peak RSS (``VmHWM``) and RSS at the start and end
  of the run, the CLI's peak RSS, CPU seconds of the gateway (per resource,
  and of its event loop's process alone) and of the broker, and the machine's
  load. ``--profile-save FILE`` runs the gateway under cProfile and keeps its
  stats (that run's rate is no figure: cProfile slows Python code ~2x).

Topology: one gateway process. The embedded store lives in its process, so the
API and the worker cannot be split here (``cer-gateway api`` + ``cer-gateway
worker`` share MongoDB in production, which this machine does not have). The
in-memory store holds every document, its history and indexes: its RSS grows
with the data (the gateway's own import path does not: the second run, which
adds nothing, shows it).

Target (issue 9): 1.5 million appointments and their slots in under 10 minutes
on RabbitMQ with the gateway under 500 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import broker_pid, cpu_model, proc_cpu, purge
from bench.import_data import write_dataset
from gateway.settings import Settings

REPO = str(Path(__file__).resolve().parent.parent)
# A vhost of its own, made with rabbitmqctl when missing (bench.common.purge).
BENCH_VHOST = "cer-bench-import"
DEFAULT_AMQP = os.environ.get("BENCH_AMQP_URL", f"amqp://guest:guest@127.0.0.1/{BENCH_VHOST}")
TARGET_SECONDS = 600.0
TARGET_APPOINTMENTS = 1_500_000
TARGET_RSS_MB = 500.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status(pid: int) -> dict[str, int]:
    """``VmRSS`` / ``VmHWM`` of a process in kB (``/proc/<pid>/status``)."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(rest.split()[0])
    return out


def children(pid: int) -> list[int]:
    """The gateway's child processes (its chunk-validation process)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def rss_kb(pid: int) -> int:
    """RSS of a process and its children (the gateway and its validation process)."""
    return sum(proc_status(p).get("VmRSS", 0) for p in [pid, *children(pid)])


def cpu_tree(pid: int) -> float:
    return sum(proc_cpu(p) or 0.0 for p in [pid, *children(pid)])


@dataclass
class Sampler:
    """Peak RSS of a process, sampled every ``every`` seconds (VmHWM is the kernel's peak)."""

    pid: int
    every: float = 0.5
    peak_kb: int = 0
    peak_tree_kb: int = 0  # with its children
    task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while True:
            rss = proc_status(self.pid).get("VmRSS", 0)
            self.peak_kb = max(self.peak_kb, rss)
            tree = rss_kb(self.pid)
            self.peak_tree_kb = max(self.peak_tree_kb, tree)
            await asyncio.sleep(self.every)

    def start(self) -> None:
        self.task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


@dataclass
class Result:
    name: str
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    server_rss_start_mb: float = 0.0
    server_rss_end_mb: float = 0.0
    server_peak_mb: float = 0.0
    server_tree_peak_mb: float = 0.0  # with the validation process
    cli_peak_mb: float = 0.0
    cpu: dict[str, float | None] = field(default_factory=dict)
    load: str = ""
    summary: str = ""

    @property
    def rate(self) -> float:
        return self.counts.get("read", 0) / self.seconds if self.seconds else 0.0


def spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=out, cwd=REPO)


async def start_gateway(
    amqp_url: str | None, workdir: Path, profile: str | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": REPO,
        "CER_MODE": "sandbox",
        "PORT": str(port),
        "LOG_LEVEL": "WARNING",
        "SAMPLE_DATA": "false",
        "COMMAND_TIMEOUT_SECONDS": "600",
    }
    env.pop("MONGODB_URL", None)
    if amqp_url:
        env["AMQP_URL"] = amqp_url
    else:
        env.pop("AMQP_URL", None)
    # Under cProfile (``--profile-save``) the stats are written when the gateway stops.
    prof = ["-m", "cProfile", "-o", profile] if profile else []
    cmd = [sys.executable, *prof, "-m", "gateway.cli", "serve"]
    proc = spawn(cmd, env, workdir / "gateway.log")
    base = f"http://127.0.0.1:{port}"
    import aiohttp

    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{base}/health/ready") as resp:
                    if resp.status == 200:
                        return proc, base
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the gateway did not start; see {workdir / 'gateway.log'}")


async def new_provider(base: str) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/sandbox/providers", json={"name": "Bench"}) as resp:
            return str((await resp.json())["token"])


async def import_once(
    name: str, base: str, token: str, data: Path, gateway: int, workdir: Path, args: Any
) -> Result:
    res = Result(name)
    res.server_rss_start_mb = proc_status(gateway).get("VmRSS", 0) / 1024
    broker = broker_pid()
    cpu0 = (cpu_tree(gateway), proc_cpu(broker), proc_cpu(gateway))
    cmd = [
        sys.executable,
        "-m",
        "gateway.cli",
        "import",
        "--url",
        base,
        "--token",
        token,
        "--progress",
        "plain",
        "--chunk-size",
        str(args.chunk_size),
        "--in-flight",
        str(args.in_flight),
        "--restart",
        "--state",
        str(workdir / f"state-{name}.json"),
        "--errors",
        str(workdir / f"errors-{name}.ndjson"),
        str(data),
    ]
    env = {**os.environ, "PYTHONPATH": REPO}
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *cmd, env=env, stdout=asyncio.subprocess.PIPE, stderr=None
    )
    gw_sampler, cli_sampler = Sampler(gateway), Sampler(proc.pid)
    gw_sampler.start()
    cli_sampler.start()
    stdout, _ = await proc.communicate()
    res.seconds = time.perf_counter() - t0
    await gw_sampler.stop()
    await cli_sampler.stop()
    res.summary = stdout.decode()
    if proc.returncode not in (0, 2):
        raise SystemExit(f"the import failed ({proc.returncode}):\n{res.summary}")
    for line in res.summary.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("read", "created", "updated", "unchanged", "rejected"):
            res.counts[parts[0]] = int(parts[1].replace(",", ""))
    res.server_rss_end_mb = proc_status(gateway).get("VmRSS", 0) / 1024
    res.server_peak_mb = max(gw_sampler.peak_kb, proc_status(gateway).get("VmHWM", 0)) / 1024
    res.server_tree_peak_mb = gw_sampler.peak_tree_kb / 1024
    res.cli_peak_mb = cli_sampler.peak_kb / 1024
    cpu1 = (cpu_tree(gateway), proc_cpu(broker), proc_cpu(gateway))
    res.cpu = {
        "gateway": (cpu1[0] or 0) - (cpu0[0] or 0),
        # the event loop's process alone (without its validation process)
        "loop": (cpu1[2] or 0) - (cpu0[2] or 0),
        "broker": (cpu1[1] - cpu0[1]) if cpu1[1] is not None and cpu0[1] is not None else None,
    }
    res.load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return res


def report(res: Result) -> None:
    c = res.counts
    mins, secs = divmod(res.seconds, 60)
    broker = res.cpu.get("broker")
    print(f"\n== {res.name}")
    print(
        f"  resources  {c.get('read', 0):,} read: {c.get('created', 0):,} created, "
        f"{c.get('updated', 0):,} updated, {c.get('unchanged', 0):,} unchanged, "
        f"{c.get('rejected', 0):,} rejected"
    )
    print(f"  time       {int(mins)} min {secs:.1f} s")
    print(f"  rate       {res.rate:,.0f} resources/s")
    print(
        f"  gateway    RSS {res.server_rss_start_mb:,.0f} MB at the start, "
        f"{res.server_rss_end_mb:,.0f} MB at the end, peak {res.server_peak_mb:,.0f} MB "
        f"({res.server_tree_peak_mb:,.0f} MB with its validation process)"
    )
    print(f"  CLI        peak RSS {res.cli_peak_mb:,.0f} MB")
    read = max(c.get("read", 0), 1)
    gateway, loop = res.cpu.get("gateway") or 0.0, res.cpu.get("loop") or 0.0
    print(
        f"  CPU        gateway {gateway:,.1f} s (with its validation process) = "
        f"{gateway * 1e6 / read:,.0f} us per resource; its event loop's process "
        f"{loop:,.1f} s = {loop * 1e6 / read:,.0f} us per resource"
        + (f"; broker {broker:,.1f} s" if broker is not None else "")
    )
    print(f"  load       {res.load} (1, 5, 15 min, at the end)")


def appointments_in(data: Path) -> int:
    n = 0
    for f in data.glob("*.ndjson"):
        with f.open("rb") as lines:
            if b'"resourceType":"Appointment"' in lines.readline():
                n += 1 + sum(1 for _ in lines)
    return n


def projection(first: Result, data: Path) -> str:
    """The issue's target against this run: what 1.5 M appointments would take."""
    read = first.counts.get("read", 0)
    appointments = appointments_in(data) or 1
    full = read / appointments * TARGET_APPOINTMENTS
    needed = full / TARGET_SECONDS
    store_kb = (first.server_rss_end_mb - first.server_rss_start_mb) * 1024 / max(read, 1)
    return (
        f"\ntarget (issue 9): {TARGET_APPOINTMENTS:,} appointments and their slots "
        f"({full:,.0f} resources at this data set's mix) in {TARGET_SECONDS / 60:.0f} min = "
        f"{needed:,.0f} resources/s, gateway under {TARGET_RSS_MB:.0f} MB.\n"
        f"this run: {read:,} resources at {first.rate:,.0f}/s -> {full / first.rate / 60:,.0f} min "
        f"for the full set at this rate (missed by {needed / first.rate:,.1f}x); the embedded "
        f"store grew {store_kb:,.1f} kB per resource -> about {store_kb * full / 1024**2:,.0f} GB "
        f"for the full set (missed: with MongoDB the documents live in the database)."
    )


async def measure(args: Any) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="cer-bench-import-"))
    data = Path(args.data) if args.data else workdir / "data"
    try:
        if not args.data:
            t = time.perf_counter()
            counts = write_dataset(data, appointments=args.appointments, seed=args.seed)
            print(
                f"generated {counts.resources:,} resources ({counts.appointments:,} appointments, "
                f"{counts.slots:,} slots) in {time.perf_counter() - t:.0f} s"
            )
        size = sum(f.stat().st_size for f in data.glob("*.ndjson"))
        amqp = None if args.backend == "embedded" else args.amqp_url
        if amqp:
            await purge(Settings(amqp_url=amqp), BENCH_VHOST)
        print(
            f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
            f"load before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
        )
        print(
            f"backend: {args.backend} (cer-gateway serve: API and worker in one process, "
            f"embedded store); data: {size / 1e6:,.0f} MB of NDJSON; chunks of "
            f"{args.chunk_size}, {args.in_flight} in flight"
        )
        proc, base = await start_gateway(amqp, workdir, args.profile_save)
        try:
            token = await new_provider(base)
            first = await import_once("first import", base, token, data, proc.pid, workdir, args)
            report(first)
            if not args.once:
                second = await import_once(
                    "second import (no change)", base, token, data, proc.pid, workdir, args
                )
                report(second)
            print(projection(first, data))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept: {workdir}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.import", description=__doc__.split("\n")[0])
    p.add_argument("--generate", metavar="DIR", help="only write the data set into DIR")
    p.add_argument("--appointments", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--data", metavar="DIR", help="import this data set (else one is generated)")
    p.add_argument("--backend", choices=("rabbitmq", "embedded"), default="rabbitmq")
    p.add_argument("--amqp-url", default=DEFAULT_AMQP)
    p.add_argument("--chunk-size", type=int, default=1000)
    p.add_argument("--in-flight", type=int, default=2)
    p.add_argument("--once", action="store_true", help="skip the second (no change) import")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, data)")
    p.add_argument(
        "--profile-save",
        metavar="FILE",
        help="run the gateway under cProfile and keep its stats in FILE (its rate is no figure)",
    )
    args = p.parse_args()
    if args.profile_save:
        args.profile_save = os.path.abspath(args.profile_save)  # the gateway runs elsewhere
    if args.generate:
        t = time.perf_counter()
        counts = write_dataset(Path(args.generate), appointments=args.appointments, seed=args.seed)
        print(
            json.dumps(
                {
                    "directory": args.generate,
                    "locations": counts.locations,
                    "schedules": counts.schedules,
                    "slots": counts.slots,
                    "appointments": counts.appointments,
                    "files": counts.files,
                    "seconds": round(time.perf_counter() - t, 1),
                },
                indent=1,
            )
        )
        return 0
    return asyncio.run(measure(args))


if __name__ == "__main__":
    sys.exit(main())
