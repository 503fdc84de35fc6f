"""Large Bundles are validated in another process: the same ops and the same errors as
inline (issue 3 items 2, 4 and 10)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from bench.ingest import slot_entry, slots, transaction
from gateway.errors import FhirError
from gateway.http.bundles import POOL_MIN_BYTES, BundlePool


@pytest.fixture(scope="module")
def pool() -> Iterator[BundlePool]:
    p = BundlePool(1)
    yield p
    p.close()


def big(kind: str = "transaction", n: int = 400) -> dict[str, Any]:
    bundle = transaction([slot_entry(s) for s in slots(n)])
    bundle["type"] = kind
    assert len(orjson.dumps(bundle)) >= POOL_MIN_BYTES
    return bundle


def normal(ops: list[Any]) -> list[Any]:
    """Ops with their server-made ids left out (new on each call), errors as replies."""
    out = []
    for op in ops:
        if isinstance(op, FhirError):
            out.append(op.to_reply())
        else:
            op = copy.deepcopy(op)
            op.pop("id")
            op["resource"].pop("id")
            out.append(op)
    return out


async def both(pool: BundlePool, bundle: dict[str, Any] | bytes) -> tuple[Any, Any]:
    raw = bundle if isinstance(bundle, bytes) else orjson.dumps(bundle)
    got = []
    for p in (pool, BundlePool(0)):
        try:
            prepared = await p.prepare(raw)
            got.append((prepared.btype, normal(prepared.ops())))
        except FhirError as err:
            got.append((err.status, err.to_reply(), err.code))
    return got[0], got[1]


async def test_a_valid_transaction_gives_the_same_ops(pool: BundlePool) -> None:
    in_pool, inline = await both(pool, big())
    assert in_pool == inline
    assert in_pool[0] == "transaction" and len(in_pool[1]) == 400
    assert pool.pool is not None  # it really went to the other process


async def test_a_bad_entry_refuses_the_transaction_alike(pool: BundlePool) -> None:
    bundle = big()
    bundle["entry"][7]["resource"]["start"] = "not a date"
    bundle["entry"][9]["resource"]["status"] = "maybe"
    in_pool, inline = await both(pool, bundle)
    assert in_pool == inline
    status, reply, _ = in_pool
    assert status in (400, 422)
    where = [e for i in reply["error"]["issues"] for e in i.get("expression", [])]
    assert "Bundle.entry[7].resource.start" in where
    assert "Bundle.entry[9].resource.status" in where


async def test_a_batch_keeps_its_bad_entries_in_place(pool: BundlePool) -> None:
    bundle = big("batch")
    bundle["entry"][3]["resource"]["status"] = "maybe"
    bundle["entry"][5]["request"]["method"] = "PATCH"
    in_pool, inline = await both(pool, bundle)
    assert in_pool == inline
    ops = in_pool[1]
    assert [i for i, op in enumerate(ops) if "error" in op] == [3, 5]


async def test_malformed_json_is_a_400_alike(pool: BundlePool) -> None:
    raw = orjson.dumps(big())[:-10]
    in_pool, inline = await both(pool, raw)
    assert in_pool == inline
    assert in_pool[0] == 400


async def test_warm_starts_the_processes_before_any_bundle() -> None:
    """``cer-gateway serve`` warms the pool at start-up: the processes exist and have
    loaded the models before the first large Bundle; closing stops them."""
    p = BundlePool(1)
    try:
        p.warm()
        assert p.pool is not None and p.warming is not None
        assert await p.warming == [True]
        procs = list(p.pool._processes.values())
        assert len(procs) == 1 and procs[0].is_alive()
        p.warm()  # once is enough
        assert len(p.pool._processes) == 1
        done = await p.prepare(orjson.dumps(big()))
        assert done.total == 400 and not done.errors
    finally:
        p.close()
    assert p.pool is None
    assert BundlePool(0).warm() is None  # no processes configured: nothing to start
