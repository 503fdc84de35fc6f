"""Helpers shared by the benchmarks: what machine this is, and the server's ready file."""

from __future__ import annotations

import contextlib
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
