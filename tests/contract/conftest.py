"""Contract-suite fixtures: the bus's live in bus_fixtures.py, the store's below."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Container, Mapping, Sequence
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from adapters.memory_store import MemoryStore, _Bucket
from adapters.mongo_emulator import emulator_client
from adapters.mongo_store import MongoStore
from gateway.ports import Index, Store
from tests.contract.bus_fixtures import *  # noqa: F403

# --------------------------------------------------------------------------- store
#
# ``store`` runs a test against every Store adapter: the embedded MemoryStore (as
# is, with every collection packed as orjson bytes, with every object or array
# field frozen as orjson bytes, and with every removal from a bucket of two entries or
# more marked dead instead of done at once and every insert into one below its last
# entry waiting until the bucket is read: ``_Bucket.LAZY``, ``PENDING_FROM``),
# MongoStore on the in-process emulator (pymongo-async-mock, mongomock
# underneath), and MongoStore on a real MongoDB when MONGODB_URL is set (a
# throwaway database, dropped afterwards). A test module declares the indexes
# its collections need as ``STORE_INDEXES = {collection: [Index, ...]}``.

STORE_BACKENDS = [
    "memory",
    "memory-packed",
    "memory-frozen",
    "memory-lazy",
    "mongo-emulator",
    pytest.param("mongo-real", marks=pytest.mark.mongodb),
]


class _EveryName:
    """Every collection packed (as orjson bytes; the default packs a few, see PACKED)."""

    def __contains__(self, name: object) -> bool:
        return True


class _EveryField(dict[str, Container[str]]):
    """Every object or array field of every collection frozen (kept as orjson bytes)."""

    def get(self, name: str, default: Any = None) -> Container[str]:  # type: ignore[override]
        return _EveryName()


@pytest.fixture(params=STORE_BACKENDS)
async def store(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Store]:
    indexes: Mapping[str, Sequence[Index]] = getattr(request.module, "STORE_INDEXES", {})
    kind: str = request.param
    db_name = f"cer_contract_{uuid.uuid4().hex[:12]}"
    url = os.environ.get("MONGODB_URL", "")
    s: MemoryStore | MongoStore
    if kind == "memory":
        s = MemoryStore()
    elif kind == "memory-packed":
        s = MemoryStore(packed=_EveryName())
    elif kind == "memory-frozen":
        s = MemoryStore(packed=(), frozen=_EveryField())
    elif kind == "memory-lazy":
        monkeypatch.setattr(_Bucket, "LAZY", 2)
        monkeypatch.setattr(_Bucket, "PENDING_FROM", 2)
        s = MemoryStore()
    elif kind == "mongo-emulator":
        s = MongoStore(None, db_name, client_factory=emulator_client)
    else:
        if not url:
            pytest.skip("MONGODB_URL not set: real MongoDB contract run skipped")
        s = MongoStore(url, db_name)
    await s.start(indexes)
    try:
        yield s
    finally:
        await s.close()
        if kind == "mongo-real":
            client: AsyncMongoClient[Any] = AsyncMongoClient(url, serverSelectionTimeoutMS=2000)
            try:
                await client.drop_database(db_name)
            finally:
                await client.close()
