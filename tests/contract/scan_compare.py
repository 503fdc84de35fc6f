"""One check for the contract suite's randomised index tests: an indexed collection
answers every read as a plain one (a scan) with the same documents does."""

from __future__ import annotations

from typing import Any

from gateway.ports import Filter, Store


async def answers_as_scan(
    store: Store,
    indexed: str,
    plain: str,
    flt: Filter,
    sort: list[tuple[str, int]],
    skip: int,
    limit: int,
) -> None:
    """``find`` (sorted, skipped, limited), ``count`` and ``find_one`` agree."""
    want = await store.find(plain, flt, sort=sort, skip=skip, limit=limit)
    got = await store.find(indexed, flt, sort=sort, skip=skip, limit=limit)
    assert _ids(got) == _ids(want), (flt, sort, skip, limit)
    assert await store.count(indexed, flt) == await store.count(plain, flt), flt
    one = await store.find_one(indexed, flt, sort=sort)
    first = await store.find(plain, flt, sort=sort, limit=1)
    assert (one["_id"] if one else None) == (first[0]["_id"] if first else None), flt


def _ids(docs: list[dict[str, Any]]) -> list[str]:
    return [d["_id"] for d in docs]
