"""docs/first-fifteen-minutes.md cannot rot: its ``sh`` blocks, in order, run as one script
against a real ``cer-gateway serve`` (sandbox, embedded default, sample data) and end in a
passing conformance report."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_cli_process import call, free_port

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "first-fifteen-minutes.md"


def script(base: str) -> str:
    blocks = re.findall(r"^```sh\n(.*?)^```", GUIDE.read_text(), re.S | re.M)
    assert len(blocks) >= 8, "the guide lost its steps"
    return "set -euo pipefail\n" + f"BASE={base}\n" + "\n".join(blocks)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "CER_MODE": "sandbox", "SAMPLE_DATA": "true", "PORT": str(port)}
    env["LOG_LEVEL"] = "WARNING"
    for name in ("MONGODB_URL", "AMQP_URL"):
        env.pop(name, None)
    log = (tmp_path / "gateway.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve"], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if call(f"{base}/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "gateway.log").read_text()
            assert time.monotonic() < deadline, "not ready within 20 s"
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_the_guide_runs_from_nothing_to_a_passing_conformance_report(
    gateway: str, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "docs").symlink_to(ROOT / "docs")  # the guide runs from the repository root
    (work / "guide.sh").write_text(script(gateway))
    done = subprocess.run(
        ["bash", "guide.sh"], cwd=work, capture_output=True, text=True, timeout=180
    )
    out = done.stdout
    assert done.returncode == 0, f"{out}\n{done.stderr}"
    assert "created 62 resources" in out
    assert out.count("result: fail") == 1  # the first check: one week is too short
    assert out.rstrip().endswith("result: pass")
    assert re.search(r"subscription \w+ active", out)
    assert "waiting room entry" in out and " waiting" in out
    assert "Bolek booked via waiting-room" in out
    assert "['cancelled']" in out and "['proposed']" in out
    assert re.search(r"inbox: [4-9] deliveries", out)
    final = out[out.rindex("result: fail") :]
    for check in ("schedules-cover-scopes", "slot-category", "no-overlap", "horizon"):
        assert re.search(rf"^pass +{check}", final, re.M), final
