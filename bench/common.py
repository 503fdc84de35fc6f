"""Helpers shared by the benchmarks: what machine this is, the server's ready file, and
the CPU time of a process and of the local RabbitMQ."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path


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
