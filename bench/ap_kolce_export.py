"""An AP-KOLCE-style export of a generated data set, with planted differences (issue 9).

``python -m bench.ap_kolce_export DATASET OUT.csv [--plant 3] [--seed 9]`` reads
the appointments of a data set written by ``bench.import_data`` and writes the
provider's export of booked visits (``docs/reconciliation.md``: ``;``, UTF-8,
Warsaw times, ``pesel_sha256``), except for ``--plant`` visits of each kind:

- left out of the export (the gateway reports them *missing in the export*);
- added to the export only (*missing in the gateway*);
- 10 minutes later in the export (*differs: start*);
- cancelled in the export (*differs: status*).

It prints them and writes them to ``OUT.planted.json``, so that
``cer-gateway reconcile`` can be seen to report exactly those (R-SCHED-5).
Streams the data set (constant memory but the planted ids).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import random
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from gateway.timeutil import WARSAW

KINDS = ("missing_in_export", "missing_in_gateway", "differing_start", "differing_status")
COLUMNS = ["visit_id", "id_system", "scope", "start", "category", "status", "pesel_sha256"]


def appointments(dataset: Path) -> Iterator[dict[str, Any]]:
    for path in sorted(dataset.glob("04-appointments*.ndjson")):
        with path.open("rb") as f:
            for line in f:
                if line.strip():
                    yield orjson.loads(line)


def _code(cc: Any) -> str:
    if isinstance(cc, list):
        cc = cc[0] if cc else {}
    return str(((cc or {}).get("coding") or [{}])[0].get("code") or "")


def _local(instant: str) -> str:
    return datetime.fromisoformat(instant).astimezone(WARSAW).strftime("%Y-%m-%d %H:%M")


def row_of(appt: dict[str, Any]) -> list[str]:
    ident = appt["identifier"][0]
    pesel = appt["participant"][0]["actor"]["identifier"]["value"]
    return [
        ident["value"],
        ident["system"],
        _code(appt.get("serviceType")),
        _local(appt["start"]),
        _code(appt.get("appointmentType")),
        "umówiona",
        hashlib.sha256(pesel.encode()).hexdigest(),
    ]


def write_export(dataset: Path, out: Path, plant: int = 3, seed: int = 9) -> dict[str, list[Any]]:
    """Write the export; returns what was planted, by kind."""
    total = sum(1 for _ in appointments(dataset))
    if total < 4 * plant:
        raise ValueError(
            f"the data set has {total} appointments: too few to plant {plant} of each kind"
        )
    rng = random.Random(seed)
    picks = rng.sample(range(total), 4 * plant)
    kind_of = {
        i: KINDS[n // plant]
        for n, i in enumerate(picks)
        if KINDS[n // plant] != "missing_in_gateway"
    }
    extra_at = {i for n, i in enumerate(picks) if KINDS[n // plant] == "missing_in_gateway"}
    planted: dict[str, list[Any]] = {k: [] for k in KINDS}
    with out.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter=";", lineterminator="\r\n")
        w.writerow(COLUMNS)
        for i, appt in enumerate(appointments(dataset)):
            row = row_of(appt)
            kind = kind_of.get(i)
            if kind == "missing_in_export":
                planted[kind].append(row[0])
                continue
            if kind == "differing_start":
                later = datetime.strptime(row[3], "%Y-%m-%d %H:%M") + timedelta(minutes=10)
                row[3] = later.strftime("%Y-%m-%d %H:%M")
                planted[kind].append(row[0])
            elif kind == "differing_status":
                row[5] = "odwołana"
                planted[kind].append(row[0])
            w.writerow(row)
            if i in extra_at:
                # a visit the facility booked but never sent: same day, its own id
                extra = [f"{row[0]}-NOT-SENT", *row[1:]]
                extra[6] = hashlib.sha256(f"nobody-{i}".encode()).hexdigest()
                w.writerow(extra)
                planted["missing_in_gateway"].append(extra[0])
    Path(f"{out}.planted.json").write_text(json.dumps(planted, indent=2) + "\n")
    return planted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ap_kolce_export", description=__doc__)
    parser.add_argument("dataset", type=Path, help="a directory written by bench.import_data")
    parser.add_argument("out", type=Path, help="the CSV to write")
    parser.add_argument("--plant", type=int, default=3, help="differences of each kind")
    parser.add_argument("--seed", type=int, default=9)
    args = parser.parse_args(argv)
    planted = write_export(args.dataset, args.out, args.plant, args.seed)
    print(f"wrote {args.out}; planted ({args.out}.planted.json):")
    for kind, ids in planted.items():
        print(f"  {kind.replace('_', ' ')}: {', '.join(ids)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
