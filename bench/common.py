"""Helpers shared by the benchmarks: what machine this is, the server's ready file, and
the CPU time of a process and of the local RabbitMQ."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
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
