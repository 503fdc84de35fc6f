"""``cer-gateway reconcile`` and ``cer-gateway report`` against a running gateway (issue 9).

The commands sign in as ``cer-gateway token`` does (client id + private key),
print a readable summary and exit 0 on a match, 1 on differences (R-SCHED-5).
"""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path
from typing import Any

import pytest

from gateway import cli
from tests.e2e.test_reconciliation import VENDOR_VISIT, export, scenario


async def run(argv: list[str]) -> int:
    # the CLI calls the server with blocking urllib: off the loop the server runs on
    return await asyncio.to_thread(cli.main, argv)


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_reconcile_and_report_from_the_command_line(
    client: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clinic, ikp, pesels = await scenario(client)
    base = str(client.make_url("/")).rstrip("/")
    key = tmp_path / "key.pem"
    key.write_text(clinic.provider["private_key_pem"])
    creds = ["--url", base, "--client-id", clinic.provider["client_id"], "--key", str(key)]
    s = VENDOR_VISIT
    rows = [
        ["V1", s, "cardiology", "2027-01-13 08:00", "control", "booked", pesels["V1"]],
        ["V2", s, "cardiology", "2027-01-13 08:40", "control", "booked", ""],
        ["V4", s, "cardiology", "2027-01-14 08:00", "control", "cancelled", ""],
        ["V5", s, "cardiology", "2027-01-14 08:20", "control", "booked", ""],
        [ikp, "", "cardiology", "2027-01-14 09:00", "first-stable", "booked", ""],
        # two weeks later: the command sends the export a week at a time (three parts)
        ["V9", s, "cardiology", "2027-01-27 10:00", "control", "booked", ""],
        ["V10", s, "cardiology", "tomorrow", "control", "booked", ""],
    ]
    planted = tmp_path / "ap-kolce.csv"
    planted.write_bytes(export(rows))
    out_csv, out_json = tmp_path / "diff.csv", tmp_path / "diff.json"
    code = await run(
        ["reconcile", *creds, str(planted), "--csv", str(out_csv), "--json", str(out_json)]
    )
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 1, printed
    assert "week 3/3: 2027-01-25 .. 2027-01-27, 1 rows" in captured.err
    assert "DIFFERENCES" in printed
    assert "2027-01-13 .. 2027-01-27" in printed
    assert "missing in gateway: V9 at 2027-01-27T10:00:00+01:00 (line 7)" in printed
    assert "rejected row:       line 8: start 'tomorrow' is not a date-time" in printed
    assert "missing in export:  V3 at 2027-01-13T08:40:00+01:00" in printed
    assert (
        "differs:            V2: start 2027-01-13T08:40:00+01:00 vs 2027-01-13T08:20:00+01:00"
        in printed
    )
    assert "differs:            V4: status cancelled vs booked" in printed
    assert pesels["V1"] not in printed
    result = json.loads(out_json.read_text())
    assert result["totals"] == {
        "provider_count": 5,
        "gateway_count": 6,
        "matching": 3,
        "missing_in_gateway": 1,
        "missing_in_export": 1,
        "differing": 2,
    }
    assert [r["line"] for r in result["rejected_rows"]] == [8]
    kinds = [r["kind"] for r in csv.DictReader(out_csv.open(encoding="utf-8"))]
    assert kinds.count("missing-in-gateway") == 1 and kinds.count("differs") == 2

    fixed = [
        ["V1", s, "cardiology", "2027-01-13 08:00", "", "", ""],
        ["V2", s, "cardiology", "2027-01-13 08:20", "", "", ""],
        ["V3", s, "cardiology", "2027-01-13 08:40", "", "", ""],
        ["V4", s, "cardiology", "2027-01-14 08:00", "", "", ""],
        ["V5", s, "cardiology", "2027-01-14 08:20", "", "", ""],
        [ikp, "", "cardiology", "2027-01-14 09:00", "", "", ""],
    ]
    planted.write_bytes(export(fixed))
    code = await run(["reconcile", *creds, str(planted)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "MATCHES" in printed

    # the activity report as a table and as a semicolon CSV
    out_csv = tmp_path / "activity.csv"
    code = await run(
        ["report", "activity", *creds, "--from", "2027-01-04", "--to", "2027-01-14",
         "--csv", str(out_csv), "--sep", "semicolon"]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    line = next(
        ln for ln in printed.splitlines() if ln.startswith(clinic.id) and "2027-01-04" in ln
    )
    assert line.split()[:6] == [clinic.id, "cardiology", "2027-01-04", "0", "0", "6"]
    assert out_csv.read_text(encoding="utf-8").startswith("provider;scope;day;measure")

    # the payer's compliance table; a provider's token cannot name another provider
    resp = await client.post("/sandbox/payers", json={})
    payer = await resp.json()
    code = await run(["report", "compliance", "--url", base, "--token", payer["token"]])
    printed = capsys.readouterr().out
    assert code == 0 and clinic.id in printed and "not-yet-due" not in printed
    code = await run(["report", "compliance", *creds, "--provider", "prov-someone-else"])
    captured = capsys.readouterr()
    assert code == 2 and "404" in captured.err
    code = await run(["reconcile", *creds, str(tmp_path / "missing.csv")])
    assert code == 2 and "cannot read" in capsys.readouterr().err
