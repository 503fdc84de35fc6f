"""The embedded store's index buckets (``_Bucket``): blocks of a sorted list behave as the
flat sorted list they replace, with blocks small enough here to split and empty often."""

from __future__ import annotations

import random
from bisect import bisect_left, insort
from typing import Any

import pytest

from adapters import memory_store
from adapters.memory_store import MemoryStore, _Bucket
from gateway.ports import Index


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_Bucket, "LOAD", 2)


def test_a_bucket_is_a_sorted_list() -> None:
    rnd = random.Random(5)
    bucket, flat = _Bucket(), []
    for step in range(3000):
        e = ((3, f"k{rnd.randrange(60):02d}"), f"id{rnd.randrange(50)}")
        if rnd.random() < 0.6 and e not in flat:
            bucket.insert(e)
            insort(flat, e)
        elif flat and rnd.random() < 0.7:
            gone = flat.pop(rnd.randrange(len(flat)))
            bucket.remove(gone)
        else:
            bucket.remove(e)  # absent or present: removed if there
            if e in flat:
                flat.remove(e)
        assert len(bucket) == len(flat), step
        if step % 50 == 0:
            assert list(bucket.range(0, len(bucket))) == flat
            assert all(len(b) <= 2 * _Bucket.LOAD for b in bucket.blocks)
        x = ((3, f"k{rnd.randrange(62):02d}"),)
        assert bucket.bisect_left(x) == bisect_left(flat, x)
        lo, hi = sorted(rnd.randrange(len(flat) + 1) for _ in range(2))
        assert list(bucket.range(lo, hi)) == flat[lo:hi]
        assert list(bucket.range(lo, hi, descending=True)) == flat[lo:hi][::-1]


async def test_the_store_answers_alike_with_and_without_indexes() -> None:
    rnd = random.Random(9)
    store = MemoryStore()
    await store.start(
        {
            "idx": [
                Index((("t", 1), ("start", 1))),
                Index((("status", 1), ("start", 1))),
                Index((("u", 1),), unique=True, sparse=True),
            ],
            "plain": [],
        }
    )
    for i in range(400):
        doc: dict[str, Any] = {
            "_id": f"d{rnd.randrange(10**6):06d}-{i}",
            "t": f"t{rnd.randrange(3)}",
            "status": rnd.choice(["free", "busy"]),
            "start": f"2027-01-{1 + rnd.randrange(28):02d}",
        }
        if i % 3 == 0:
            doc["u"] = f"u{i}"
        for coll in ("idx", "plain"):
            await store.insert(coll, doc)
    for i in range(150):
        doc_id = rnd.choice([d["_id"] for d in await store.find("plain", {})])
        for coll in ("idx", "plain"):
            if i % 2:
                await store.update_one(
                    coll, {"_id": doc_id}, {"$set": {"start": "2027-02-0" + str(i % 9 + 1)}}
                )
            else:
                await store.delete_one(coll, {"_id": doc_id})
    queries: list[tuple[dict[str, Any], list[tuple[str, int]]]] = [
        ({"t": "t1"}, [("start", 1), ("_id", 1)]),
        (
            {"t": "t2", "start": {"$gte": "2027-01-10", "$lt": "2027-02-03"}},
            [("start", -1), ("_id", -1)],
        ),
        ({"status": "free"}, [("start", 1), ("_id", 1)]),
        (
            {"status": {"$in": ["free", "busy"]}, "start": {"$lte": "2027-01-20"}},
            [("start", 1), ("_id", 1)],
        ),
    ]
    for flt, sort in queries:
        for skip, limit in ((0, 0), (3, 10), (50, 7)):
            a = await store.find("idx", flt, sort=sort, skip=skip, limit=limit)
            b = await store.find("plain", flt, sort=sort, skip=skip, limit=limit)
            assert [d["_id"] for d in a] == [d["_id"] for d in b], (flt, skip, limit)
        assert await store.count("idx", flt) == await store.count("plain", flt)
    assert memory_store._Bucket.LOAD == 2
