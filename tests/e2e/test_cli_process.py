"""The README's run command as a newcomer sees it: a real ``cer-gateway serve`` process.

Ready within 15 s, Prometheus text on /metrics, every log line JSON, no PESEL in logs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call(url: str, data: bytes | None = None) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


@pytest.fixture(params=["embedded", "rabbitmq"])
def gateway_process(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    port = free_port()
    env = {
        **os.environ,
        "CER_MODE": "sandbox",
        "SAMPLE_DATA": "true",
        "PORT": str(port),
        "LOG_LEVEL": "INFO",
    }
    env.pop("MONGODB_URL", None)
    if request.param == "rabbitmq":
        env["AMQP_URL"] = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1/")
    else:
        env.pop("AMQP_URL", None)
    out = (tmp_path / "stdout.log").open("wb")
    err = (tmp_path / "stderr.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve"], cwd=ROOT, env=env, stdout=out, stderr=err
    )
    try:
        yield f"http://127.0.0.1:{port}", tmp_path, proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        out.close()
        err.close()


def test_serve_is_ready_fast_with_metrics_and_clean_json_logs(gateway_process: Any) -> None:
    base, logs, proc = gateway_process
    started = time.monotonic()
    status = 0
    while time.monotonic() - started < 15:
        try:
            status, _, _ = call(f"{base}/health/ready")
        except OSError:
            status = 0
        if status == 200:
            break
        assert proc.poll() is None, (logs / "stderr.log").read_text()
        time.sleep(0.2)
    assert status == 200, "not ready within 15 s"

    status, body, headers = call(f"{base}/sandbox/patients", b'{"sex": "female"}')
    assert status == 201
    patient_pesel = json.loads(body)["pesel"]
    status, body, headers = call(f"{base}/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    text = body.decode()
    assert "http_requests_total" in text
    assert 'messages_published_total{kind="command"}' in text
    # the sample data went through the command path
    assert 'messages_consumed_total{outcome="ok",queue_kind="command"}' in text

    time.sleep(0.3)
    stdout = (logs / "stdout.log").read_text()
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines, "the gateway logged nothing"
    for line in lines:
        record = json.loads(line)  # every line is JSON
        assert "timestamp" in record and "level" in record
    assert patient_pesel not in stdout
    assert any(json.loads(line).get("correlation_id") for line in lines)
    hint = (logs / "stderr.log").read_text()
    assert "export TOKEN=" in hint

    # `cer-gateway token` signs a client assertion and gets a provider token
    status, body, _ = call(f"{base}/sandbox/providers", b"{}")
    prov = json.loads(body)
    key = logs / "key.pem"
    key.write_text(prov["private_key_pem"])
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "token",
            "--url",
            base,
            "--client-id",
            prov["client_id"],
            "--key",
            str(key),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    token = out.stdout.strip()
    req = urllib.request.Request(
        f"{base}/fhir/Location?_count=1", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200
