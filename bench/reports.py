"""Reports benchmark (issue 9): ``python -m bench.reports [--appointments 100000]``.

A real ``cer-gateway serve`` (sandbox mode, embedded store and bus by default;
``--amqp-url`` for RabbitMQ) in a child process. A data set from
``bench.import_data`` (``--appointments`` booked visits and their slots over
``--weeks`` weeks) is imported with ``cer-gateway import``; then, timed one
after the other:

- ``cer-gateway reconcile`` of the data set's AP-KOLCE export with planted
  differences (``bench.ap_kolce_export``), checked to report exactly those;
- ``GET /reports/activity`` over the whole span (the provider's token);
- ``GET /reports/compliance`` (the payer's token, every provider);
- ``GET /bulk-publish/Slot.ndjson`` (no token), streamed and counted.

Prints each time, rows per second where it means something, and the
server's resident memory now and at its peak (``VmRSS`` / ``VmHWM``) after
each step, with the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.ap_kolce_export import write_export
from bench.common import cpu_model
from bench.import_data import write_dataset


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def memory(pid: int) -> str:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) // 1024
    return f"server RSS {fields.get('VmRSS')} MB (peak {fields.get('VmHWM')} MB)"


def call(url: str, token: str | None = None, data: bytes | None = None) -> bytes:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(req, timeout=3600) as resp:
        body: bytes = resp.read()
        return body


def cli(*args: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, check=False
    )
    return done.returncode, done.stdout + done.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reports", description=__doc__)
    parser.add_argument("--appointments", type=int, default=100_000)
    parser.add_argument("--weeks", type=int, default=13)
    parser.add_argument("--amqp-url", default="", help="RabbitMQ (default: the embedded bus)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="cer-bench-reports-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "CER_MODE": "sandbox", "PORT": str(port), "LOG_LEVEL": "warning"}
    if args.amqp_url:
        env["AMQP_URL"] = args.amqp_url
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; load {os.getloadavg()[0]:.2f}")
    t = time.perf_counter()
    counts = write_dataset(work / "data", appointments=args.appointments, weeks=args.weeks)
    print(
        f"data set: {counts.appointments} appointments, {counts.slots} slots, "
        f"{counts.schedules} schedules ({time.perf_counter() - t:.1f} s to write)"
    )
    log = (work / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve"], env=env, stdout=log, stderr=log
    )
    try:
        for _ in range(300):
            try:
                call(f"{base}/health/live")
                break
            except OSError:
                time.sleep(0.2)
        provider = json.loads(call(f"{base}/sandbox/providers", data=b"{}"))
        payer = json.loads(call(f"{base}/sandbox/payers", data=b"{}"))
        token = provider["token"]
        call(f"{base}/sandbox/clock", data=b'{"set": "2027-01-01T09:00:00+01:00"}')
        t = time.perf_counter()
        code, out = cli(
            "import", str(work / "data"), "--url", base, "--token", token,
            "--state", str(work / "state.json"), "--errors", str(work / "errors.ndjson"),
            "--progress", "none",
        )  # fmt: skip
        took = time.perf_counter() - t
        if code != 0:
            print(out)
            return 1
        print(f"import: {counts.resources} resources in {took:.1f} s; {memory(server.pid)}")

        export = work / "ap-kolce.csv"
        planted = write_export(work / "data", export, plant=3)
        t = time.perf_counter()
        code, out = cli("reconcile", "--url", base, "--token", token, str(export),
                        "--json", str(work / "diff.json"))  # fmt: skip
        took = time.perf_counter() - t
        result = json.loads((work / "diff.json").read_text())
        found = sum(result["totals"][k] for k in ("missing_in_gateway", "missing_in_export"))
        found += result["totals"]["differing"]
        ok = code == 1 and found == sum(len(v) for v in planted.values())
        print(
            f"reconcile: {counts.appointments} visits in {took:.1f} s "
            f"({counts.appointments / took:,.0f} rows/s), {found} differences found, "
            f"{'exactly the planted ones' if ok else 'NOT the planted ones'}; {memory(server.pid)}"
        )
        first, last = result["from"], result["to"]
        t = time.perf_counter()
        body = call(f"{base}/reports/activity?from={first}&to={last}", token)
        rows = len(json.loads(body)["rows"])
        print(
            f"activity report: {rows} rows in {time.perf_counter() - t:.1f} s; {memory(server.pid)}"
        )
        t = time.perf_counter()
        body = call(f"{base}/reports/compliance", payer["token"])
        rows = len(json.loads(body)["rows"])
        print(
            f"compliance report: {rows} rows in {time.perf_counter() - t:.1f} s; "
            f"{memory(server.pid)}"
        )
        t = time.perf_counter()
        lines = 0
        with urllib.request.urlopen(f"{base}/bulk-publish/Slot.ndjson", timeout=3600) as resp:
            for _line in resp:
                lines += 1
        took = time.perf_counter() - t
        print(
            f"$bulk-publish Slot.ndjson: {lines} slots in {took:.1f} s "
            f"({lines / took:,.0f}/s); {memory(server.pid)}"
        )
        print(f"load after: {os.getloadavg()[0]:.2f}")
        return 0 if ok else 1
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            # a server with a large embedded store can take long to tear down: stop it
            server.kill()
            server.wait()
        log.close()


if __name__ == "__main__":
    sys.exit(main())
