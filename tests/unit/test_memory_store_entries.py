"""The embedded store's generated entries function (``_compile_entries``) gives every
index the entries ``_Idx.entries`` does, one index at a time: nested paths sharing
objects, arrays at every level, scalars in the way, missing fields, sparse and partial
indexes."""

from __future__ import annotations

import random
from typing import Any

from adapters.memory_store import _compile_entries, _Idx
from gateway.ports import Index

SPECS = [
    Index((("t", 1), ("a.b.c", 1))),
    Index((("t", 1), ("a.b.d", 1), ("a.e", 1))),
    Index((("a.b", 1),)),
    Index((("u", 1),), unique=True, sparse=True),
    Index((("t", 1), ("tags", 1)), partial=(("t", "x"),)),
    Index((("a.b.c", 1), ("n", 1)), partial=(("t", "x"),)),
    Index((("n", 1), ("a.e", 1)), partial=(("k", 1), ("t", "y"))),
    Index((("a.b.d", 1),), partial=(("a.e", "z"),)),
]


def _value(rng: random.Random, depth: int) -> Any:
    pick = rng.randrange(10 if depth < 3 else 6)
    if pick == 0:
        return None
    if pick == 1:
        return rng.choice(["x", "y", "z"])
    if pick == 2:
        return rng.choice([0, 1, 2.5, True])
    if pick == 3:
        return []
    if pick == 4:
        return [rng.choice(["x", "y", 1, None]) for _ in range(rng.randrange(1, 4))]
    if pick == 5:
        return "s"
    if pick in (6, 7):
        return {k: _value(rng, depth + 1) for k in rng.sample("bcde", rng.randrange(0, 4))}
    return [_value(rng, depth + 1) for _ in range(rng.randrange(0, 3))]


def test_generated_entries_are_each_index_s_entries() -> None:
    rng = random.Random(7)
    indexes = [_Idx(spec) for spec in SPECS]
    entries = _compile_entries(indexes)
    for n in range(3000):
        doc: dict[str, Any] = {"_id": f"d{n}"}
        for name in ("t", "a", "u", "tags", "n", "k"):
            if rng.random() < 0.7:
                doc[name] = _value(rng, 1) if name == "a" else _value(rng, 2)
        if rng.random() < 0.5:
            doc["t"] = rng.choice(["x", "y"])
        want = [idx.entries(doc) for idx in indexes]
        assert entries(doc) == want, doc
