"""``bench.alternate``: the figure and the probe read off a bench's output, the summary
of alternated pairs."""

from __future__ import annotations

import re

import pytest

from bench import alternate

OUTPUT = """machine: nproc=2
[1] unlock at 23:50:01 Warsaw: 10,000 assignments in 3.14 s = 3,183 assignments/s (target)
    the machine's speed meanwhile (bench.common.speed_probe, CPU ms, lower is faster): 189 \
before the unlock, 184 after
"""


def test_the_figure_and_the_probe_are_read_off_the_output() -> None:
    assert alternate.parse(OUTPUT, re.compile(alternate.DEFAULT_FIGURE)) == (3183.0, 189)
    assert alternate.parse("x = 12.5 ms", re.compile(r"= ([\d.]+) ms")) == (12.5, None)
    with pytest.raises(ValueError, match="no figure"):
        alternate.parse("nothing here", re.compile(alternate.DEFAULT_FIGURE))


def test_the_summary_gives_each_side_and_the_pairs_ratios() -> None:
    runs = [
        alternate.Run("base", 2000, 200),
        alternate.Run("this", 2200, 210),
        alternate.Run("base", 3000, 150),
        alternate.Run("this", 2700, None),
        alternate.Run("base", 2500, 180),
        alternate.Run("this", 3000, 170),
    ]
    assert alternate.summary(runs) == [
        "base: 2,000-3,000, median 2,500",
        "this: 2,200-3,000, median 2,700",
        "ratios this/base over 3 pairs: 0.90-1.20, median 1.100 (1.10, 0.90, 1.20)",
        "speed probe: 150-210 ms (lower is faster)",
    ]
