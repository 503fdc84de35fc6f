"""Import a generated data set, then reconcile it against an export with planted
differences and see exactly those (issue 9's "done when", R-SCHED-5), over the CLI."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from bench.ap_kolce_export import write_export
from bench.import_data import write_dataset
from gateway import cli
from tests.e2e.conftest import new_provider
from tests.e2e.notify_support import set_clock, warsaw


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_reconcile_an_imported_data_set_against_planted_differences(
    client: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await set_clock(client, warsaw(2027, 1, 2, 9))
    data = tmp_path / "data"
    counts = write_dataset(data, appointments=240, weeks=3, first_day=warsaw(2027, 1, 4).date())
    provider = await new_provider(client)
    base = str(client.make_url("/")).rstrip("/")
    token = ["--url", base, "--token", provider["token"]]
    code = await asyncio.to_thread(
        cli.main,
        ["import", str(data), *token, "--state", str(tmp_path / "state.json"),
         "--errors", str(tmp_path / "errors.ndjson"), "--progress", "none"],
    )  # fmt: skip
    assert code == 0, capsys.readouterr()

    export = tmp_path / "ap-kolce.csv"
    planted = write_export(data, export, plant=2, seed=5)
    assert json.loads((tmp_path / "ap-kolce.csv.planted.json").read_text()) == planted
    out = tmp_path / "diff.json"
    code = await asyncio.to_thread(cli.main, ["reconcile", *token, str(export), "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 1, printed
    result = json.loads(out.read_text())
    days = result["days"]
    found = {
        "missing_in_export": sorted(m["identifier"] for d in days for m in d["missing_in_export"]),
        "missing_in_gateway": sorted(m["visit_id"] for d in days for m in d["missing_in_gateway"]),
        "differing_start": sorted(
            x["visit_id"]
            for d in days
            for x in d["differing"]
            if x["fields"][0]["field"] == "start"
        ),
        "differing_status": sorted(
            x["visit_id"]
            for d in days
            for x in d["differing"]
            if x["fields"][0]["field"] == "status"
        ),
    }
    assert found == {k: sorted(v) for k, v in planted.items()}
    assert all(len(x["fields"]) == 1 for d in days for x in d["differing"])
    t = result["totals"]
    assert t["gateway_count"] == counts.appointments
    assert t["matching"] == counts.appointments - 6
    assert result["rejected_rows"] == []
    for kind_ids in planted.values():
        for visit in kind_ids:
            assert visit in printed
