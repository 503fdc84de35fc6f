"""The embedded store's update fast paths (``_flat_update``, ``_checked``'s remembered
shapes) against the general writer and checks."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters import memory_store
from adapters.memory_store import _flat_update, _Frozen, _Writer

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
# paths into a field (``a.b``) and what they may meet there: an object (with the names
# the paths use), an array, a scalar, nothing
SUBNAMES = st.sampled_from(["b", "c", "0", ""])
FIELD_OF = st.builds(lambda h, k: f"{h}.{k}", NAMES, SUBNAMES)
PATHS = st.one_of(NAMES, FIELD_OF, FIELD_OF)
OBJECTS = st.dictionaries(SUBNAMES, VALUES, max_size=3)
NESTED = st.one_of(
    VALUES,
    OBJECTS,
    OBJECTS,
    OBJECTS,
    st.lists(st.dictionaries(SUBNAMES, VALUES, max_size=2), max_size=2),
)
NESTED_DOCS = st.dictionaries(NAMES, NESTED, max_size=6)
NESTED_OPS = st.dictionaries(
    st.sampled_from(["$set", "$unset", "$inc", "$setOnInsert"]),
    st.dictionaries(PATHS, VALUES, min_size=1, max_size=3),
    min_size=1,
    max_size=3,
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


@settings(max_examples=2500, deadline=None)
@given(doc=NESTED_DOCS, ops=NESTED_OPS)
def test_flat_update_of_fields_of_fields_is_the_writer(
    doc: dict[str, Any], ops: dict[str, dict[str, Any]]
) -> None:
    """Paths ``a.b`` (a resource's ``central.status``): the fast path makes what the writer
    makes, key order included, or leaves the update to it."""
    before = repr(doc)
    fast = _outcome(lambda: _flat_update(doc, ops))
    if fast == ("ok", None):
        return
    slow = _outcome(lambda: _written(doc, ops))
    assert fast == slow
    if fast[0] == "ok":
        assert repr(fast[1]) == repr(slow[1])  # the same key order, at both levels
    assert repr(doc) == before  # the stored version is never changed


@pytest.mark.parametrize(
    ("doc", "ops", "want"),
    [
        ({"_id": "x", "a": {"b": 0}}, {"$set": {"a.b": 1}}, {"_id": "x", "a": {"b": 1}}),
        ({"_id": "x", "a": {"b": 0}}, {"$unset": {"a.b": ""}}, {"_id": "x", "a": {}}),
        ({"_id": "x"}, {"$inc": {"a.b": 2}}, {"_id": "x", "a": {"b": 2}}),
        ({"_id": "x", "a": 3}, {"$unset": {"a.b": ""}}, {"_id": "x", "a": 3}),
    ],
)
def test_flat_update_takes_fields_of_fields(doc: Any, ops: Any, want: Any) -> None:
    assert _flat_update(doc, ops) == want


@pytest.mark.parametrize(
    "ops",
    [
        {"$set": {"a.b.c": 1}},
        {"$set": {"l.b": 1}},
        {"$set": {"f.b": 1}},
        {"$unset": {"f.b": ""}},
        {"$set": {"s.b": 1}},
        {"$set": {"a": {}, "a.b": 1}},
        {"$push": {"a": 1}},
        {"$set": {"a": 1}, "$push": {"b": 1}},
    ],
)
def test_flat_update_leaves_deeper_paths_and_other_operators_to_the_writer(ops: Any) -> None:
    doc = {"_id": "x", "a": {"b": 0}, "l": [{"b": 0}], "f": _Frozen(b'{"b":0}'), "s": "t"}
    assert _flat_update(doc, ops) is None


def test_check_update_copies_containers_and_packs_whole_frozen_fields() -> None:
    from adapters.memory_store import _checked, _Coll, _Frozen

    claim = {"by": "m", "at": [1, 2]}
    update = {"$set": {"status": "x", "claim": claim, "pair": (1, 2)}, "$inc": {"rev": 1}}
    ops = _checked(update)[0]
    assert ops == {"$set": {"status": "x", "claim": claim, "pair": [1, 2]}, "$inc": {"rev": 1}}
    assert ops["$set"]["claim"] is not claim and ops["$set"]["claim"]["at"] is not claim["at"]
    coll = _Coll(frozen=frozenset({"resource"}))
    body = {"resourceType": "Slot", "status": "busy"}
    ops = _checked({"$set": {"resource": body, "resource2": body, "v": 2}}, coll)[0]
    assert type(ops["$set"]["resource"]) is _Frozen
    assert ops["$set"]["resource"].value() == body
    assert ops["$set"]["resource2"] == body and ops["$set"]["resource2"] is not body
    assert ops["$set"]["v"] == 2
    with pytest.raises(ValueError, match="reserved for the outbox"):
        _checked({"$set": {"_outbox.x": 1}})[0]
    with pytest.raises(ValueError, match="unsupported update operator"):
        _checked({"$rename": {"a": "b"}})[0]


UPDATES = st.dictionaries(
    st.sampled_from(["$set", "$unset", "$inc", "$setOnInsert", "$push", "$rename", "status"]),
    st.one_of(
        st.dictionaries(
            st.sampled_from(["a", "b.c", "resource", "_outbox", "_outbox.x", "_outbox_at"]),
            NESTED,
            max_size=3,
        ),
        st.just([("a", 1)]),
    ),
    max_size=3,
)


@settings(max_examples=600, deadline=None)
@given(update=UPDATES)
def test_a_remembered_update_shape_is_checked_and_copied_as_the_first_time(
    update: dict[str, Any],
) -> None:
    """``_checked`` remembers the shapes that passed its checks: the second time an
    update of that shape comes, it gives what the checks and copies gave the first time
    (an error as well), with its own copies of containers, and the same ``_touched``."""
    coll = memory_store._Coll(frozen=frozenset({"resource"}))

    def check() -> tuple[str, Any]:
        return _outcome(lambda: memory_store._checked(update, coll))

    def plain(got: tuple[str, Any]) -> Any:  # frozen values compared by their bytes
        if got[0] == "error":
            return got
        ops, touched = got[1]
        return {
            op: {p: v.raw if type(v) is _Frozen else v for p, v in f.items()}
            for op, f in ops.items()
        }, touched

    memory_store._CHECKED.clear()
    memory_store._TOUCHED.clear()
    first = check()
    again = check()
    assert plain(again) == plain(first)
    if first[0] == "ok":
        ops, touched = again[1]
        assert touched == memory_store._touched(ops)
        for op, fields in ops.items():
            for path, v in fields.items():
                if type(v) in (dict, list):
                    assert v is not update[op][path]


FILTERS = st.dictionaries(
    st.sampled_from(["_id", "a", "b.c", "status"]),
    st.one_of(VALUES, st.just({"$eq": 1}), st.just({"$gt": 1})),
    min_size=1,
    max_size=3,
)
UPSERT_OPS = st.dictionaries(
    st.sampled_from(["$set", "$setOnInsert", "$inc"]),
    st.dictionaries(st.sampled_from(["_id", "a", "c", "b.c", "d.e"]), VALUES, min_size=1),
    min_size=1,
    max_size=2,
)


@settings(max_examples=800, deadline=None)
@given(
    filter=st.one_of(FILTERS, st.builds(lambda s: {"_id": s}, st.text(max_size=3))), ops=UPSERT_OPS
)
def test_an_upserted_document_is_what_the_writer_makes(
    filter: dict[str, Any], ops: dict[str, dict[str, Any]]
) -> None:
    """``_upserted`` builds top-level upserts straight (by ``_id`` alone: no seed walk):
    the writer's document, key order included, or its error."""
    fast = _outcome(lambda: memory_store._upserted(filter, ops))
    slow = _outcome(lambda: memory_store._written_upsert(memory_store._upsert_seed(filter), ops))
    if fast[0] == "ok":
        assert repr(fast[1]) == repr(slow[1])
    else:
        assert fast == slow
