"""Partial indexes (``Index.partial``, MongoDB's ``partialFilterExpression``): an index
holds only the documents that meet its equalities, and no query answers otherwise than
a scan would, whether or not it names them (then the index cannot serve it)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from gateway.ports import Document, DuplicateKey, Index, Store
from tests.contract.scan_compare import answers_as_scan

APPTS = (("type", "Appointment"),)

STORE_INDEXES = {
    # as gateway/schema.py has them on resources, and one plain index beside them
    "res": [
        Index((("tenant", 1), ("type", 1), ("start", 1))),
        Index((("tenant", 1), ("type", 1), ("slot_ids", 1)), partial=APPTS),
        Index((("tenant", 1), ("type", 1), ("pesel", 1)), partial=APPTS),
        Index((("type", 1), ("pesel", 1), ("start", 1)), partial=APPTS),
        Index((("type", 1), ("status", 1), ("start", 1)), partial=(("kind", "visit"),)),
    ],
    "res_plain": [],
    "guarded": [Index((("code", 1),), unique=True, partial=(("live", True),))],
}

TYPES: list[Any] = ["Appointment", "Slot", "Schedule", None, ["Appointment", "X"], ["Slot"]]


def ids(docs: list[Document]) -> list[str]:
    return [d["_id"] for d in docs]


def _doc(i: int, rng: random.Random) -> Document:
    doc: Document = {"_id": f"d{i:03d}", "tenant": rng.choice(["t1", "t2"])}
    t = rng.choice([*TYPES, "Appointment", "Slot"])  # mostly the two the gateway has
    if t is not None or rng.random() < 0.5:  # null or missing
        doc["type"] = t
    doc["start"] = f"2026-12-{rng.randrange(1, 29):02d}T{rng.randrange(24):02d}:00:00.000Z"
    if rng.random() < 0.7:
        doc["pesel"] = rng.choice(["p1", "p2", "p3", None, ["p1", "p2"]])
    if rng.random() < 0.6:
        doc["slot_ids"] = rng.sample(["s1", "s2", "s3", "s4"], rng.randrange(0, 3))
    doc["status"] = rng.choice(["booked", "free", "cancelled"])
    if rng.random() < 0.5:
        doc["kind"] = rng.choice(["visit", "other"])
    return doc


def _filter(rng: random.Random) -> dict[str, Any]:
    flt: dict[str, Any] = {}
    if rng.random() < 0.7:
        flt["tenant"] = rng.choice(["t1", "t2"])
    flt["type"] = rng.choice(
        [
            "Appointment",
            "Appointment",
            "Slot",
            None,
            {"$in": ["Appointment"]},
            {"$in": ["Appointment", "Slot"]},
            {"$eq": "Appointment"},
            {"$ne": "Slot"},
            {"$exists": True},
        ]
    )
    if rng.random() < 0.25:
        del flt["type"]  # no type: a partial index cannot serve
    if rng.random() < 0.15:
        flt["$and"] = [{"type": "Appointment"}]
    for field, choices in (
        ("pesel", ["p1", "p2", None, {"$in": ["p2", "p3"]}, {"$exists": False}]),
        ("slot_ids", ["s1", "s3", {"$in": ["s2", "s4"]}, {"$exists": True}]),
        ("status", ["booked", "free", {"$in": ["booked", "cancelled"]}]),
        ("kind", ["visit", "other", {"$in": ["visit"]}]),
        ("start", [{"$gte": "2026-12-10"}, {"$lt": "2026-12-20"}]),
    ):
        if rng.random() < 0.4:
            flt[field] = rng.choice(choices)
    return flt


SORTS: list[list[tuple[str, int]]] = [
    [],
    [("start", 1)],
    [("start", -1)],
    [("pesel", 1), ("start", 1)],
    [("slot_ids", -1)],
]


async def _compare(store: Store, rng: random.Random, rounds: int) -> None:
    for _ in range(rounds):
        sort = [*rng.choice(SORTS), ("_id", 1)]
        skip, limit = rng.choice([0, 0, 2]), rng.choice([0, 1, 5, 20])
        await answers_as_scan(store, "res", "res_plain", _filter(rng), sort, skip, limit)


async def test_partial_indexes_never_change_results(store: Store) -> None:
    """Queries with the index's equalities, with other ones and with none answer as a
    scan does: finds with sorts, skips and limits, counts, first matches."""
    rng = random.Random(3)
    docs = [_doc(i, rng) for i in range(160)]
    for doc in docs:
        await store.insert("res", doc)
        await store.insert("res_plain", doc)
    await _compare(store, rng, 200)
    # writes that move documents into and out of the indexes (type and kind change)
    for i in range(80):
        victim = rng.choice(docs)["_id"]
        update: dict[str, Any] = rng.choice(
            [
                {"$set": {"type": rng.choice(TYPES)}},
                {"$unset": {"type": ""}},
                {"$set": {"kind": rng.choice(["visit", "other"])}},
                {"$set": {"pesel": rng.choice(["p1", "p3", None])}},
                {"$set": {"slot_ids": ["s2"], "start": "2026-12-15T08:00:00.000Z"}},
            ]
        )
        a = await store.update_one("res", {"_id": victim}, update)
        b = await store.update_one("res_plain", {"_id": victim}, update)
        assert a == b
        if i % 9 == 0:
            await store.delete_one("res", {"_id": victim})
            await store.delete_one("res_plain", {"_id": victim})
        if i % 20 == 19:
            await _compare(store, rng, 40)
    n = await store.update_many("res", {"type": "Slot"}, {"$set": {"type": "Appointment"}})
    assert n == await store.update_many(
        "res_plain", {"type": "Slot"}, {"$set": {"type": "Appointment"}}
    )
    await _compare(store, rng, 120)


async def test_an_appointment_is_found_by_its_patient_and_a_slot_with_the_same_is_not(
    store: Store,
) -> None:
    """The gateway's use: a Slot carries no patient, yet a query that names none of the
    filter's equalities must still see it (null matches missing)."""
    await store.insert("res", {"_id": "a1", "tenant": "t", "type": "Appointment", "pesel": "p"})
    await store.insert("res", {"_id": "s1", "tenant": "t", "type": "Slot", "start": "x"})
    await store.insert("res", {"_id": "s2", "tenant": "t", "type": "Slot", "pesel": "p"})
    by_patient = {"tenant": "t", "type": "Appointment", "pesel": "p"}
    assert ids(await store.find("res", by_patient)) == ["a1"]
    assert await store.count("res", by_patient) == 1
    assert ids(await store.find("res", {"pesel": "p"}, sort=[("_id", 1)])) == ["a1", "s2"]
    assert ids(await store.find("res", {"type": "Slot", "pesel": "p"})) == ["s2"]
    assert ids(await store.find("res", {"type": "Slot", "pesel": None})) == ["s1"]
    assert await store.count("res", {"tenant": "t", "type": "Slot", "pesel": None}) == 1
    assert await store.count("res", {"tenant": "t", "pesel": None}) == 1


async def test_a_unique_partial_index_guards_only_the_documents_it_holds(store: Store) -> None:
    await store.insert("guarded", {"_id": "a", "code": "x", "live": True})
    await store.insert("guarded", {"_id": "b", "code": "x", "live": False})
    await store.insert("guarded", {"_id": "c", "code": "x"})
    with pytest.raises(DuplicateKey):
        await store.insert("guarded", {"_id": "d", "code": "x", "live": True})
    with pytest.raises(DuplicateKey):
        await store.update_one("guarded", {"_id": "b"}, {"$set": {"live": True}})
    assert (await store.get("guarded", "b") or {}).get("live") is False
    await store.update_one("guarded", {"_id": "a"}, {"$set": {"live": False}})
    await store.update_one("guarded", {"_id": "b"}, {"$set": {"live": True}})
    assert ids(await store.find("guarded", {"code": "x", "live": True})) == ["b"]


def test_an_index_is_not_both_sparse_and_partial() -> None:
    with pytest.raises(ValueError):
        Index((("a", 1),), sparse=True, partial=(("b", 1),))
