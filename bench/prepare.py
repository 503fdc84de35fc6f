"""The validation process's share of the ingest benchmark (issue 3): ``python -m bench.prepare``.

A large transaction Bundle is validated and mapped in another process
(``gateway.http.bundles.prepare_raw``: JSON, depth and reference walk,
fhir.resources R4B, the Slot mapping, the ops as JSON). This times it on the
``bench.ingest`` workload (``--slots`` Slots in Bundles of ``--bundle``), with
only the Bundles' bytes in memory as in that process, against the floor:
R4B ``Slot.model_validate`` of the same Slots, each Bundle parsed beforehand
and out of the timing. CPU time (``time.process_time``) per Slot, rounds
interleaved (``--rounds``), the least and the median of the rounds: on a shared
machine the least is the figure, and the load average is printed beside it.

2026-11-26 (Intel Xeon, 2 vCPUs, load average 1.5): prepare_raw 100 us per Slot
against a floor of 85 us, 1.18x (1.98x at that day's start on the same machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import orjson

from bench.common import cpu_model
from bench.ingest import Workload


def per_slot(seconds: float, slots: int) -> float:
    return seconds / slots * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--slots", type=int, default=5_000, help="Slots per round (5,000)")
    p.add_argument("--bundle", type=int, default=500, help="entries per transaction (500)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    args = p.parse_args(argv)

    from fhir.resources.R4B.slot import Slot

    from gateway.http.bundles import prepare_raw

    bodies = Workload.make(args.slots, args.bundle).bodies
    slots = sum(len(orjson.loads(b)["entry"]) for b in bodies)
    prepare_raw(bodies[0])  # imports and first-use costs out of the timing
    Slot.model_validate(orjson.loads(bodies[0])["entry"][0]["resource"])
    prepared: list[float] = []
    floor: list[float] = []
    for _ in range(args.rounds):
        t0 = time.process_time()
        for body in bodies:
            prepare_raw(body)
        prepared.append(per_slot(time.process_time() - t0, slots))
        spent = 0.0
        for body in bodies:
            resources = [e["resource"] for e in orjson.loads(body)["entry"]]
            t0 = time.process_time()
            for r in resources:
                Slot.model_validate(r)
            spent += time.process_time() - t0
        floor.append(per_slot(spent, slots))
    print(f"{cpu_model()}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{slots} Slots in Bundles of {args.bundle}, {args.rounds} rounds, CPU us per Slot:")
    print(f"  prepare_raw  least {min(prepared):6.1f}  median {statistics.median(prepared):6.1f}")
    print(f"  floor        least {min(floor):6.1f}  median {statistics.median(floor):6.1f}")
    print(f"  ratio (least) {min(prepared) / min(floor):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
