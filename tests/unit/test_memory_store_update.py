"""The embedded store's update fast path (``_flat_update``) against the general writer."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.memory_store import _flat_update, _Writer

NAMES = st.sampled_from(["a", "b", "c", "status", "rev", "_id"])
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.lists(st.integers(), max_size=2),
)
DOCS = st.dictionaries(NAMES, VALUES, max_size=6)
OPS = st.dictionaries(
    st.sampled_from(["$set", "$unset", "$inc", "$setOnInsert"]),
    st.dictionaries(NAMES, VALUES, min_size=1, max_size=3),
    min_size=1,
    max_size=4,
)


def _outcome(fn: Any) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except ValueError as err:
        return "error", str(err)


def _written(doc: dict[str, Any], ops: dict[str, dict[str, Any]]) -> dict[str, Any]:
    w = _Writer(doc)
    w.apply(ops, inserting=False)
    return w.doc


@settings(max_examples=400, deadline=None)
@given(doc=DOCS, ops=OPS)
def test_flat_update_is_the_writer(doc: dict[str, Any], ops: dict[str, dict[str, Any]]) -> None:
    before = dict(doc)
    fast = _outcome(lambda: _flat_update(doc, ops))
    slow = _outcome(lambda: _written(doc, ops))
    assert fast == slow
    if fast[0] == "ok":
        assert list(fast[1].items()) == list(slow[1].items())  # the same key order too
        assert fast[1] is not doc
    assert doc == before  # the stored version is never changed


@pytest.mark.parametrize(
    "ops",
    [
        {"$set": {"a.b": 1}},
        {"$unset": {"a.b": ""}},
        {"$push": {"a": 1}},
        {"$set": {"a": 1}, "$push": {"b": 1}},
    ],
)
def test_flat_update_leaves_paths_and_other_operators_to_the_writer(ops: Any) -> None:
    assert _flat_update({"_id": "x", "a": {"b": 0}}, ops) is None


def test_check_update_copies_containers_and_packs_whole_frozen_fields() -> None:
    from adapters.memory_store import _check_update, _Coll, _Frozen

    claim = {"by": "m", "at": [1, 2]}
    update = {"$set": {"status": "x", "claim": claim, "pair": (1, 2)}, "$inc": {"rev": 1}}
    ops = _check_update(update)
    assert ops == {"$set": {"status": "x", "claim": claim, "pair": [1, 2]}, "$inc": {"rev": 1}}
    assert ops["$set"]["claim"] is not claim and ops["$set"]["claim"]["at"] is not claim["at"]
    coll = _Coll(frozen=frozenset({"resource"}))
    body = {"resourceType": "Slot", "status": "busy"}
    ops = _check_update({"$set": {"resource": body, "resource2": body, "v": 2}}, coll)
    assert type(ops["$set"]["resource"]) is _Frozen
    assert ops["$set"]["resource"].value() == body
    assert ops["$set"]["resource2"] == body and ops["$set"]["resource2"] is not body
    assert ops["$set"]["v"] == 2
    with pytest.raises(ValueError, match="reserved for the outbox"):
        _check_update({"$set": {"_outbox.x": 1}})
    with pytest.raises(ValueError, match="unsupported update operator"):
        _check_update({"$rename": {"a": "b"}})
