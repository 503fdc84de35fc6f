"""``mappings.validation.nesting`` gives what its first, plainer walk gave (kept here
as the oracle), on generated JSON-like trees: depth limit and references alike."""

from __future__ import annotations

from collections import OrderedDict, UserList
from collections.abc import Container
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mappings.validation import MAX_DEPTH, nesting


def oracle(data: Any, names: Container[str], limit: int = MAX_DEPTH) -> tuple[bool, bool]:
    level = [data]
    depth = 1
    named = False
    while level:
        inner: list[Any] = []
        nested = False
        for value in level:
            if isinstance(value, dict):
                nested = True
                if names and not named:
                    ref = value.get("reference")
                    named = isinstance(ref, str) and ref in names
                inner.extend(value.values())
            elif isinstance(value, list):
                nested = True
                inner.extend(value)
        if nested and depth > limit:
            return True, named
        depth += 1
        level = inner
    return False, named


NAMES = {"urn:uuid:1", "urn:uuid:2"}
leaves = st.sampled_from([None, True, 0, 1.5, "", "x", "urn:uuid:1", (1, [2]), b"b"])
references = st.sampled_from(["urn:uuid:1", "urn:uuid:2", "urn:uuid:3", "Slot/1", 5, None])
trees = st.recursive(
    leaves,
    lambda kids: (
        st.lists(kids, max_size=4)
        | st.lists(kids, max_size=3).map(UserList)  # not a list: not walked
        | st.dictionaries(st.sampled_from(["a", "b", "extension"]), kids, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "b"]), kids, max_size=3).map(OrderedDict)
        | st.tuples(st.dictionaries(st.just("a"), kids, max_size=1), references).map(
            lambda p: {**p[0], "reference": p[1]}
        )
    ),
    max_leaves=40,
)


@settings(max_examples=1500, derandomize=True, database=None, deadline=None)
@given(trees, st.integers(min_value=0, max_value=8), st.sampled_from([NAMES, (), set()]))
def test_nesting_answers_as_the_plain_walk(data: Any, limit: int, names: Any) -> None:
    assert nesting(data, names, limit) == oracle(data, names, limit)


def test_nesting_at_the_limit() -> None:
    def deep(n: int) -> Any:
        out: Any = "x"
        for i in range(n):
            out = {"a": out} if i % 2 else [out]
        return out

    for n in (MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, MAX_DEPTH + 2, 500):
        assert nesting(deep(n), ()) == oracle(deep(n), ()) == (n > MAX_DEPTH, False)
