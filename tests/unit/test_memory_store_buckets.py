"""The embedded store's index buckets (``_Bucket``): blocks of a sorted list behave as the
flat sorted list they replace, with blocks small enough here to split and empty often."""

from __future__ import annotations

import enum
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


def test_a_bucket_is_a_sorted_list(monkeypatch: pytest.MonkeyPatch) -> None:
    # every removal and insert at once (the dead and pending entries' tests are below): an
    # absent one is a no-op
    monkeypatch.setattr(_Bucket, "LAZY", 10**9)
    monkeypatch.setattr(_Bucket, "PENDING_FROM", 10**9)
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
            assert all(len(b) <= 2 * _Bucket.LOAD for b in bucket.blocks or ())
        x = ((3, f"k{rnd.randrange(62):02d}"),)
        assert bucket.bisect_left(x) == bisect_left(flat, x)
        lo, hi = sorted(rnd.randrange(len(flat) + 1) for _ in range(2))
        assert list(bucket.range(lo, hi)) == flat[lo:hi]
        assert list(bucket.range(lo, hi, descending=True)) == flat[lo:hi][::-1]


def test_a_bucket_of_one_entry_is_the_sorted_list_of_it() -> None:
    """A bucket holds its first entry alone (no blocks) until a second comes: inserts,
    removes, positions, ranges and the unique check answer as on the flat list, through
    empty, one entry, two, and back (blocks of 2 here: they split at the fifth)."""
    rnd = random.Random(11)
    TOP = memory_store._TOP
    for _ in range(300):
        first = (3, f"k{rnd.randrange(4)}", f"id{rnd.randrange(3)}")
        bucket, flat = (_Bucket(first), [first]) if rnd.random() < 0.5 else (_Bucket(), [])
        for step in range(12):
            e = (3, f"k{rnd.randrange(4)}", f"id{rnd.randrange(3)}")
            if rnd.random() < 0.5:
                bucket.insert(e)
                insort(flat, e)
            else:
                bucket.remove(e)
                if e in flat:
                    flat.remove(e)
            assert len(bucket) == len(flat), step
            assert list(bucket.range(0, len(bucket))) == flat
            assert list(bucket.range(0, len(bucket), descending=True)) == flat[::-1]
            for k in range(5):
                key = (3, f"k{k}")
                for x in (key, (*key, TOP), (*key, "id1")):
                    assert bucket.bisect_left(x) == bisect_left(flat, x), (x, flat)
                for i in range(3):
                    want = any(f[:2] == key and f[2] != f"id{i}" for f in flat)
                    assert bucket.held_by_other(key, f"id{i}") is want
            lo, hi = sorted(rnd.randrange(len(flat) + 1) for _ in range(2))
            assert list(bucket.range(lo, hi)) == flat[lo:hi]
    alone = _Bucket()
    alone.insert((3, "k", "id"))
    assert alone.blocks is None and alone.maxes is None  # no lists for one entry


def test_held_by_other_reads_every_entry_of_the_key() -> None:
    """A unique index's check: another document's entry of the key, across blocks."""
    rnd = random.Random(8)
    bucket, flat = _Bucket(), []
    for _ in range(400):
        e = (3, f"k{rnd.randrange(6)}", f"id{rnd.randrange(30):02d}")
        if e not in flat:
            bucket.insert(e)
            insort(flat, e)
    for k in range(7):
        key = (3, f"k{k}")
        for i in range(31):
            doc_id = f"id{i:02d}"
            want = any(e[:2] == key and e[2] != doc_id for e in flat)
            assert bucket.held_by_other(key, doc_id) is want, (key, doc_id)


@pytest.mark.parametrize("lazy", [3, 10**9])  # removals marked dead / removed at once
def test_a_bucket_with_dead_entries_is_the_sorted_list_of_the_live(
    monkeypatch: pytest.MonkeyPatch, lazy: int
) -> None:
    """From ``LAZY`` entries on, a removal marks its entry dead: positions count the dead,
    everything read (ranges between two keys, either way; the unique check; the length)
    is the live entries' sorted list, an entry inserted again comes back, and the dead
    are dropped once they are an eighth of the live."""
    monkeypatch.setattr(_Bucket, "LAZY", lazy)
    rnd = random.Random(6)
    bucket, flat = _Bucket(), []
    most_dead = 0
    for step in range(4000):
        e = (3, f"k{rnd.randrange(60):02d}", f"id{rnd.randrange(50)}")
        if e not in flat and (rnd.random() < 0.55 or not flat):
            bucket.insert(e)  # new, or back from the dead
            insort(flat, e)
        else:
            bucket.remove(flat.pop(rnd.randrange(len(flat))))
        most_dead = max(most_dead, len(bucket.dead or ()))
        assert len(bucket) == len(flat), step
        assert len(bucket.dead or ()) * 8 <= max(len(flat), 0) + 8
        lo_key, hi_key = sorted((3, f"k{rnd.randrange(62):02d}") for _ in range(2))
        lo, hi = bucket.bisect_left(lo_key), bucket.bisect_left(hi_key)
        want = [x for x in flat if lo_key <= x < hi_key]
        assert list(bucket.range(lo, hi)) == want, step
        assert list(bucket.range(lo, hi, descending=True)) == want[::-1], step
        key, doc_id = (3, f"k{rnd.randrange(60):02d}"), f"id{rnd.randrange(50)}"
        held = any(x[:2] == key and x[2] != doc_id for x in flat)
        assert bucket.held_by_other(key, doc_id) is held, step
        if step % 100 == 0:
            assert list(bucket.live()) == flat
        if step % 37 == 0:  # the count of a range, the dead counted out
            assert hi - lo - bucket.dead_between(lo, hi) == len(want), step
    assert (most_dead > 0) is (lazy == 3)
    bucket.compact()
    assert bucket.dead is None and list(bucket.live()) == flat
    assert sum(map(len, bucket.blocks or ())) == len(flat)


@pytest.mark.parametrize("merge_from", [1, 10**9])  # pending settle merged / one by one
@pytest.mark.parametrize("load", [2, 5])
@pytest.mark.parametrize("lazy", [3, 10**9])  # removals marked dead / removed at once
def test_pending_inserts_are_read_as_the_sorted_list(
    monkeypatch: pytest.MonkeyPatch, merge_from: int, load: int, lazy: int
) -> None:
    """From ``PENDING_FROM`` entries on, an insert below the last entry waits
    (``pending``) until the next read or ``LOAD`` of them: bursts of inserts and removals
    (of waiting entries too, and entries back from the dead) between reads, then every
    reader answers as the flat sorted list does."""
    monkeypatch.setattr(_Bucket, "LAZY", lazy)
    monkeypatch.setattr(_Bucket, "PENDING_FROM", 3)
    monkeypatch.setattr(_Bucket, "LOAD", load)
    monkeypatch.setattr(_Bucket, "MERGE_FROM", merge_from)
    rnd = random.Random(7)
    bucket, flat = _Bucket(), []
    most_pending = 0
    last = None
    for step in range(3000):
        for _ in range(rnd.randrange(12)):  # a burst of writes, nothing read
            e = (3, f"k{rnd.randrange(60):02d}", f"id{rnd.randrange(50)}")
            if e not in flat and (rnd.random() < 0.6 or not flat):
                bucket.insert(e)
                insort(flat, e)
                last = e
            else:
                bucket.remove(flat.pop(rnd.randrange(len(flat))))
            most_pending = max(most_pending, len(bucket.pending or ()))
            assert len(bucket) == len(flat), step
        read = rnd.randrange(4)
        if read == 0:
            key, doc_id = (3, f"k{rnd.randrange(60):02d}"), f"id{rnd.randrange(50)}"
            if last is not None and rnd.random() < 0.5:
                key, doc_id = last[:2], "id-other"  # the last insert's key (maybe waiting)
            held = any(x[:2] == key and x[2] != doc_id for x in flat)
            assert bucket.held_by_other(key, doc_id) is held, step
        elif read == 1:
            lo_key, hi_key = sorted((3, f"k{rnd.randrange(62):02d}") for _ in range(2))
            lo, hi = bucket.bisect_left(lo_key), bucket.bisect_left(hi_key)
            want = [x for x in flat if lo_key <= x < hi_key]
            assert list(bucket.range(lo, hi, descending=rnd.random() < 0.5)) in (
                want,
                want[::-1],
            ), step
            assert hi - lo - bucket.dead_between(lo, hi) == len(want), step
        elif read == 2:
            assert list(bucket.live()) == flat, step
        if bucket.blocks is not None and bucket.pending is None:
            assert all(0 < len(b) <= 2 * load for b in bucket.blocks), step
            assert bucket.maxes == [b[-1] for b in bucket.blocks], step
    assert most_pending == load - 1  # they wait up to LOAD
    bucket.compact()
    assert bucket.pending is None and bucket.dead is None
    assert [e for b in bucket.blocks or () for e in b] == flat


@pytest.mark.parametrize(
    ("lazy", "counted"),
    [(3, 64), (3, 1), (10**9, 64)],  # counts that count the dead out / drop them first
)
async def test_the_store_answers_alike_with_and_without_indexes(
    monkeypatch: pytest.MonkeyPatch, lazy: int, counted: int
) -> None:
    monkeypatch.setattr(_Bucket, "LAZY", lazy)
    monkeypatch.setattr(_Bucket, "PENDING_FROM", lazy)
    monkeypatch.setattr(memory_store, "DEAD_COUNTED", counted)
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


class Kind(enum.StrEnum):
    A = "y"


def test_the_compiled_entries_are_each_index_s_own() -> None:
    """``_compile_entries`` (one generated function for every index of a collection)
    gives what each index computes alone: missing, null, scalars crossed on a path,
    arrays (multikey), objects, sparse and partial indexes, paths sharing objects."""
    rnd = random.Random(3)
    specs = [
        Index((("a", 1), ("b.c", 1))),
        Index((("b.c", 1), ("b.d.e", 1), ("f", 1))),
        Index((("f", 1),), unique=True, sparse=True),
        Index((("a", 1), ("f", 1)), sparse=True),
        Index((("b.d.e", 1),)),
        Index((("a", 1), ("b.d.f", 1)), partial=(("f", "x"),)),
        Index((("b.d.f", 1), ("b.c", 1)), partial=(("f", "x"),)),
        Index((("b.d.e", 1),), partial=(("a", 1), ("f", "y"))),
        Index((("f", 1), ("b.d.e", 1)), partial=(("b.c", "x"),)),
    ]
    idxs = [memory_store._Idx(spec) for spec in specs]
    compiled = memory_store._compile_entries(idxs)
    values: list[Any] = [None, 1, 2.5, "x", "y", Kind.A, True, [], [1, "x"], {"k": 1}, "skip"]

    def value(depth: int) -> Any:
        if depth < 2 and rnd.random() < 0.4:
            inner = {k: value(depth + 1) for k in "cdef"}
            made = {k: v for k, v in inner.items() if v != "skip"}
            return [made, {"c": 1}] if rnd.random() < 0.2 else made
        return rnd.choice(values)

    for _ in range(2000):
        doc = {k: value(0) for k in "abf"}
        doc = {k: v for k, v in doc.items() if v != "skip"}
        assert compiled(doc) == [idx.entries(doc) for idx in idxs], doc


@pytest.mark.parametrize("lazy", [3, 10**9])
async def test_an_update_moves_entries_and_leaves_no_empty_bucket(
    monkeypatch: pytest.MonkeyPatch, lazy: int
) -> None:
    """A status change moves an entry within its bucket (the index's last field) or to
    another bucket (a leading field): every index holds exactly the documents' entries,
    and no bucket stays empty (with removals marked dead or not: ``_Bucket.LAZY``; inserts
    waiting or not: ``PENDING_FROM``)."""
    monkeypatch.setattr(_Bucket, "LAZY", lazy)
    monkeypatch.setattr(_Bucket, "PENDING_FROM", lazy)
    store = MemoryStore()
    await store.start(
        {
            "w": [
                Index((("phone", 1), ("status", 1))),
                Index((("status", 1), ("rank", 1))),
                Index((("status", 1), ("phone", 1), ("rank", 1))),
                Index((("key", 1),), unique=True, sparse=True),
            ]
        }
    )
    rnd = random.Random(3)
    for i in range(40):
        await store.insert(
            "w", {"_id": f"e{i}", "phone": f"p{i % 20}", "status": "w", "rank": i, "key": f"k{i}"}
        )
    for _ in range(300):
        i = rnd.randrange(40)
        status = rnd.choice(["w", "a", "x"])
        update: dict[str, Any] = {"$set": {"status": status}}
        if status == "x":
            update["$unset"] = {"key": ""}
        else:
            update["$set"]["key"] = f"k{i}"
        await store.update_one("w", {"_id": f"e{i}", "rank": i}, update)
    coll = store._colls["w"]
    for idx in coll.indexes:
        assert all(len(b) for b in idx.buckets.values()), idx.spec.name
        held = sorted((prefix, e) for prefix, b in idx.buckets.items() for e in b.live())
        want = sorted(
            (prefix, (*key, doc_id))
            for doc_id, doc in coll.docs.items()
            for prefix, key in idx.entries(doc)
        )
        assert held == want, idx.spec.name
    for status in ("w", "a", "x"):
        n = sum(1 for d in coll.docs.values() if d["status"] == status)
        assert await store.count("w", {"status": status}) == n
        assert len(await store.find("w", {"status": status}, sort=[("rank", 1)])) == n


def test_a_flat_prefix_is_equal_exactly_when_its_keys_are() -> None:
    """A bucket's prefix is its fields' keys in one flat tuple (``_flat``): equal, with
    the same hash, exactly when the keys are (a key's length follows from its rank)."""
    rnd = random.Random(4)
    values: list[Any] = [None, 0, 1, 1.0, 2.5, True, False, "", "a", "1", [], [1], {}, {"a": 1}]
    values += [Kind.A, (1,), [None], {"a": [1.0]}]
    keys = [memory_store._key(v) for v in values] + [memory_store._EMPTY_KEY]
    pairs = 0
    for _ in range(20000):
        n = rnd.randrange(4)
        a = [rnd.choice(keys) for _ in range(n)]
        b = [rnd.choice(keys) for _ in range(rnd.choice([n, n, rnd.randrange(4)]))]
        fa, fb = memory_store._flat(a), memory_store._flat(b)
        assert (fa == fb) is (tuple(a) == tuple(b)), (a, b)
        if fa == fb:
            pairs += 1
            assert hash(fa) == hash(fb)
    assert pairs > 100
