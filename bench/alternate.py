"""Compare this checkout with an earlier revision, runs alternated one at a time (not a
test): ``python -m bench.alternate REV [--pairs N] -- [bench module and its arguments]``.

On a 2-vCPU cloud machine the speed moves by 20-30 % and more from one minute to the
next, and two runs side by side disturb each other (both are memory-bound on the same
caches). So a change is judged on pairs run one after the other (the earlier revision,
then this checkout; N times), each pair at nearly the same speed, and on the ratios of
the pairs rather than on two separate series.

The earlier revision runs from a ``git worktree`` of it in a temporary directory, with
this checkout's interpreter (``python -m`` there imports its packages: the working
directory comes first on the path; checked before the first run). The default bench is
the waiting room's unlock (``bench.waiting_room --cancellations 0``) and the figure its
assignments/s; ``--figure`` takes a regular expression whose first group is the figure
(thousands separators allowed) for any other bench. Each run's line shows the machine's
speed probe when the bench prints it (``bench.common.speed_probe``).

    python -m bench.alternate c6a61fc --pairs 14

printed, on 2026-11-26 (2 vCPUs AMD EPYC), ratios 0.97-1.28, median 1.085 (the README's
"That evening" figures were taken with an equivalent script).
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_BENCH = ["bench.waiting_room", "--cancellations", "0"]
DEFAULT_FIGURE = r"= ([\d,.]+) assignments/s"
PROBE = re.compile(r"lower is faster\): (\d+)")
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    side: str  # "base" or "this"
    figure: float
    probe: int | None


def parse(output: str, figure: re.Pattern[str]) -> tuple[float, int | None]:
    """The figure (its first group, separators dropped) and the first speed probe."""
    m = figure.search(output)
    if m is None:
        raise ValueError(f"no figure matching {figure.pattern!r} in the bench's output")
    probe = PROBE.search(output)
    return float(m.group(1).replace(",", "")), int(probe.group(1)) if probe else None


def summary(runs: list[Run]) -> list[str]:
    """Each side's range and median, and the pairs' ratios (this / base)."""
    base = [r.figure for r in runs if r.side == "base"]
    this = [r.figure for r in runs if r.side == "this"]
    ratios = [t / b for b, t in zip(base, this, strict=False) if b]
    lines = [
        f"base: {min(base):,.0f}-{max(base):,.0f}, median {statistics.median(base):,.0f}",
        f"this: {min(this):,.0f}-{max(this):,.0f}, median {statistics.median(this):,.0f}",
    ]
    if ratios:
        lines.append(
            f"ratios this/base over {len(ratios)} pairs: {min(ratios):.2f}-{max(ratios):.2f}, "
            f"median {statistics.median(ratios):.3f} "
            f"({', '.join(f'{x:.2f}' for x in ratios)})"
        )
    probes = [r.probe for r in runs if r.probe is not None]
    if probes:
        lines.append(f"speed probe: {min(probes)}-{max(probes)} ms (lower is faster)")
    return lines


def _imports_from(cwd: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import gateway; print(gateway.__file__)"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(out).resolve().is_relative_to(cwd.resolve()):
        raise SystemExit(f"python -m in {cwd} imports {out}: not that checkout's code")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("rev", help="the earlier revision (anything git rev-parse takes)")
    p.add_argument("--pairs", type=int, default=6)
    p.add_argument("--figure", default=DEFAULT_FIGURE, help="regex, group 1 = the figure")
    cut = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:cut])
    bench = argv[cut + 1 :] or DEFAULT_BENCH  # after --: the bench module and its arguments
    figure = re.compile(args.figure)
    rev = subprocess.run(
        ["git", "rev-parse", "--short", args.rev], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    if not rev:
        raise SystemExit(f"unknown revision {args.rev!r}")
    tmp = Path(tempfile.mkdtemp(prefix="cer-alternate-"))
    tree = tmp / "base"
    subprocess.run(
        ["git", "worktree", "add", "--detach", "--quiet", str(tree), rev], cwd=ROOT, check=True
    )
    try:
        _imports_from(tree)
        _imports_from(ROOT)
        print(f"python -m {' '.join(bench)}: base {rev} against this checkout, {args.pairs} pairs")
        runs: list[Run] = []
        for i in range(1, args.pairs + 1):
            for side, cwd in (("base", tree), ("this", ROOT)):
                done = subprocess.run(
                    [sys.executable, "-m", *bench], cwd=cwd, capture_output=True, text=True
                )
                if done.returncode != 0:
                    print(done.stdout[-2000:], done.stderr[-2000:], sep="\n", file=sys.stderr)
                    raise SystemExit(f"the {side} run {i} failed ({done.returncode})")
                value, probe = parse(done.stdout, figure)
                runs.append(Run(side, value, probe))
                stamp = time.strftime("%H:%M:%S", time.gmtime())
                print(f"{stamp} pair {i} {side}: {value:,.0f} (probe {probe} ms)", flush=True)
        print("\n".join(summary(runs)))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
