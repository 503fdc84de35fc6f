"""Helpers shared by the benchmarks: what machine this is and how fast it runs now, the
server's ready file, and the CPU time of a process and of the local RabbitMQ."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from gateway import constants as c
from gateway.settings import Settings


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


_PROBE = """
import time
best = float("inf")
for _ in range(ROUNDS):
    t = time.process_time()
    docs = {}
    for i in range(60_000):
        key = f"doc-{i * 7919 % 60_000:06d}"
        docs[key] = {"_id": key, "n": i, "tags": (i % 7, key[-3:])}
    entries = sorted((d["tags"], d["_id"]) for d in docs.values())
    total = sum(len(k) for _, k in entries[::3])
    best = min(best, time.process_time() - t)
print(best * 1000)
"""


def speed_probe(rounds: int = 3) -> float:
    """The CPU milliseconds of a fixed piece of pure Python (dicts, tuples, sorting,
    strings: what the gateway's event loop does), the best of ``rounds``, in a fresh
    interpreter (the bench's own process, with its millions of objects, would time
    itself too).

    This machine's speed varies by 20-30 % and more from one minute to the next (other
    tenants of the host: a plain loop does, with nothing else running here); printed
    beside a figure, it tells a slow minute from a slow change.
    """
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.replace("ROUNDS", str(rounds))],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return float(out.strip())


def write_ready(path: str, port: int) -> None:
    """The benchmark's server child writes its port here once it listens."""
    Path(path).write_text(str(port))


def proc_cpu(pid: int | None) -> float | None:
    """CPU seconds a process has used (``/proc/<pid>/stat``: utime + stime); None if unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def broker_pid() -> int | None:
    """The local RabbitMQ's Erlang VM (to report its CPU), if it runs here."""
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                if (d / "comm").read_text().strip() in ("beam.smp", "beam") and b"rabbit" in (
                    d / "cmdline"
                ).read_bytes():
                    return int(d.name)
    return None


def ensure_vhost(url: str, vhost: str) -> None:
    """Make the bench's own RabbitMQ vhost when ``url`` points at it (needs rabbitmqctl)."""
    if not url.endswith("/" + vhost):
        return
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["rabbitmqctl", "add_vhost", vhost], capture_output=True, timeout=30)
        subprocess.run(
            ["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
            capture_output=True,
            timeout=30,
        )


async def purge(
    settings: Settings, vhost: str | None = None, extra_groups: Iterable[str] = ()
) -> None:
    """Delete the gateway's queues in the bench vhost so a run starts from an empty broker.

    ``vhost`` (default: the last part of ``settings.amqp_url``) is made first when the
    URL points at it (a fresh machine has none); an unreachable broker stops the bench
    with the commands that make the vhost.
    """
    url = settings.amqp_url
    if not url:
        return
    from adapters.rabbit_bus import delete_queues, queue_names

    vhost = vhost or url.rsplit("/", 1)[-1] or "/"
    ensure_vhost(url, vhost)
    groups = (c.WEBHOOK_GROUP, c.WEBHOOK_DELIVERY_GROUP, "notifications", "waiting-room")
    names = queue_names(
        settings.command_partitions, settings.bus_retry_delays, (*groups, *extra_groups)
    )
    try:
        await delete_queues(url, names)
    except Exception as exc:
        raise SystemExit(
            f"RabbitMQ is not reachable at {url} ({exc!r}). The bench uses its own vhost:\n"
            f"  rabbitmqctl add_vhost {vhost} && "
            f"rabbitmqctl set_permissions -p {vhost} guest '.*' '.*' '.*'\n"
            "or pass --amqp-url."
        ) from exc
