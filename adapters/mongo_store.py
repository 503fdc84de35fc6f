"""The MongoDB ``Store``, on PyMongo's native async API (``AsyncMongoClient``).

Everything the gateway relies on is a single-document atomic operation that
MongoDB documents as such: ``insert_one`` and a conditional
``find_one_and_update`` (the concurrency guard), plus unique indexes. No
transactions, no change streams.

The outbox lives inside each document:

* ``_outbox``: a list of ``{"seq": int, "event": {...}}``, appended with
  ``$push`` in the same write as the change it belongs to;
* ``_outbox_at``: the smallest pending ``seq`` of the document (``$min`` on
  write), present only while events are pending, with a sparse index so the
  relay finds those documents without a scan.

``seq`` is the writer's ``time.time_ns()``, made strictly increasing within a
process: across processes the order is as good as the hosts' clocks, within
a document it is the order of the writes. ``clear_events`` pulls events by
their ``id`` and then removes both fields only while the list is still empty
(a conditional update): a concurrent write that adds events in between keeps
them pending, so no event is ever left without its ``_outbox_at``.

Reads project both fields away. ``_id`` is always a string: an insert or
upsert without one gets a random hex id, as in the embedded store.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from pymongo import AsyncMongoClient, ReturnDocument
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError

from gateway.ports import Document, DuplicateKey, Filter, Index, OutboxItem, Sort

__all__ = ["MongoStore"]

OUTBOX = "_outbox"
OUTBOX_AT = "_outbox_at"
OUTBOX_INDEX = "outbox_relay"
_HIDDEN = {OUTBOX: 0, OUTBOX_AT: 0}
_RESERVED = (OUTBOX, OUTBOX_AT)


def _projection(fields: Sequence[str] | None) -> dict[str, int]:
    """A read's projection: everything but the outbox, or only ``fields`` and ``_id``."""
    if fields is None:
        return _HIDDEN
    return {f: 1 for f in fields if f not in _HIDDEN} or {"_id": 1}


_COLLECTIONS_TTL = 5.0  # seconds between re-reading the collection names for the relay


# IndexOptionsConflict, IndexKeySpecsConflict: an index of that name exists, made otherwise
_INDEX_CONFLICTS = (85, 86)
_INDEX_NOT_FOUND = 27


def _is_duplicate(exc: PyMongoError) -> bool:
    if isinstance(exc, DuplicateKeyError):
        return True
    return isinstance(exc, OperationFailure) and exc.code in (11000, 11001, 12582)


def _check_doc(doc: Mapping[str, Any]) -> None:
    for name in _RESERVED:
        if name in doc:
            raise ValueError(f"{name} is reserved for the outbox")


# the Store's query and update language (gateway.ports.Store), the same on every
# adapter: refusing the rest here keeps code that passes on MongoDB working on
# the embedded store
_QUERY_OPS = frozenset({"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"})
_UPDATE_OPS = frozenset({"$set", "$unset", "$inc", "$setOnInsert", "$push"})


def _check_filter(filter: Filter) -> dict[str, Any]:
    for key, cond in filter.items():
        if key in ("$and", "$or", "$nor"):
            if not isinstance(cond, list | tuple) or not cond:
                raise ValueError(f"{key} needs a non-empty list of filters")
            for sub in cond:
                _check_filter(sub)
        elif key.startswith("$"):
            raise ValueError(f"unsupported top-level operator {key}")
        elif isinstance(cond, Mapping) and any(str(k).startswith("$") for k in cond):
            for op in cond:
                if op not in _QUERY_OPS:
                    raise ValueError(f"unsupported query operator {op}")
    return dict(filter)


def _check_update(update: Mapping[str, Any]) -> None:
    if not update:
        raise ValueError("empty update")
    for op, fields in update.items():
        if not op.startswith("$"):
            raise ValueError("replacement documents are not supported: use $set")
        if op not in _UPDATE_OPS:
            raise ValueError(f"unsupported update operator {op}")
        if op == "$push":
            for value in fields.values():
                if isinstance(value, Mapping) and any(str(k).startswith("$") for k in value):
                    if set(value) != {"$each"}:
                        raise ValueError("$push supports only {$each: [...]} as a modifier")
        for path in fields:
            if path.split(".", 1)[0] in _RESERVED:
                raise ValueError(f"{path} is reserved for the outbox")


def _check_events(events: Sequence[Document]) -> None:
    for ev in events:
        if not isinstance(ev, Mapping) or "id" not in ev:
            raise ValueError("an outbox event needs an 'id' (clear_events removes by id)")


def _filter_sets_id(filter: Filter) -> bool:
    """Whether an upsert with this filter takes its ``_id`` from the filter."""
    for key, cond in filter.items():
        if key == "_id":
            if not (isinstance(cond, Mapping) and any(k.startswith("$") for k in cond)):
                return True
            return "$eq" in cond
        if key == "$and" and any(_filter_sets_id(sub) for sub in cond):
            return True
    return False


def _sort_spec(sort: Sort | None) -> list[tuple[str, int]] | None:
    return [(p, int(d)) for p, d in sort] if sort else None


class MongoStore:
    """``Store`` on MongoDB. ``client_factory`` (tests) builds the client instead of the URL."""

    suspends = True  # ``Store.suspends``

    def __init__(
        self,
        url: str | None,
        db_name: str,
        client_factory: Callable[[], Any] | None = None,
    ) -> None:
        if url is None and client_factory is None:
            raise ValueError("MongoStore needs a URL or a client factory")
        self._url = url
        self._db_name = db_name
        self._client_factory = client_factory
        self._client: Any = None
        self._db: Any = None
        self._indexed: set[str] = set()  # collections whose outbox index this process made
        self._relay: set[str] = set()  # collections the relay looks into
        self._listed_at = 0.0
        self._last_seq = 0

    # --- lifecycle

    async def start(self, indexes: Mapping[str, Sequence[Index]]) -> None:
        # created here, inside the running loop: an async client belongs to one loop
        if self._client_factory is not None:
            self._client = self._client_factory()
        else:
            self._client = AsyncMongoClient(self._url, serverSelectionTimeoutMS=2000, tz_aware=True)
        self._db = self._client[self._db_name]
        for name, specs in indexes.items():
            coll = self._db[name]
            for spec in specs:
                await self._create_index(coll, spec)
            await self._ensure_outbox_index(name)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client, self._db = self._client, None, None
            await client.close()

    async def ping(self) -> bool:
        if self._client is None:
            return False
        try:
            async with asyncio.timeout(3.0):
                await self._client.admin.command("ping")
        except (PyMongoError, TimeoutError, OSError):
            return False
        return True

    @staticmethod
    async def _create_index(coll: Any, spec: Index) -> None:
        """Create a declared index; one of the same name declared with other options
        before (say, made partial since) is dropped and built again."""
        keys = [(p, int(d)) for p, d in spec.fields]
        opts: dict[str, Any] = {"name": spec.name, "unique": spec.unique, "sparse": spec.sparse}
        if spec.partial:
            # The in-process emulator (mongomock) keeps the expression and applies it to
            # unique indexes only; a non-unique partial index there is a plain one, which
            # changes no answer (its queries scan).
            opts["partialFilterExpression"] = dict(spec.partial)
        try:
            await coll.create_index(keys, **opts)
        except OperationFailure as exc:
            if exc.code not in _INDEX_CONFLICTS:
                raise
            try:
                await coll.drop_index(spec.name)
            except OperationFailure as again:
                if again.code != _INDEX_NOT_FOUND:  # another process starting dropped it
                    raise
            await coll.create_index(keys, **opts)

    # --- helpers

    def _coll(self, name: str) -> Any:
        if self._db is None:
            raise RuntimeError("MongoStore is not started")
        return self._db[name]

    async def _ensure_outbox_index(self, name: str) -> None:
        self._relay.add(name)
        if name in self._indexed:
            return
        await self._db[name].create_index([(OUTBOX_AT, 1)], name=OUTBOX_INDEX, sparse=True)
        self._indexed.add(name)

    def _outbox_entries(self, events: Sequence[Document]) -> list[Document]:
        out = []
        for ev in events:
            seq = max(time.time_ns(), self._last_seq + 1)
            self._last_seq = seq
            out.append({"seq": seq, "event": dict(ev)})
        return out

    # --- reads

    async def get(
        self,
        coll: str,
        doc_id: str,
        fields: Sequence[str] | None = None,
        *,
        shared: bool = False,  # decoded afresh from the server's reply either way
    ) -> Document | None:
        doc: Document | None = await self._coll(coll).find_one({"_id": doc_id}, _projection(fields))
        return doc

    async def find_one(
        self, coll: str, filter: Filter, sort: Sort | None = None
    ) -> Document | None:
        doc: Document | None = await self._coll(coll).find_one(
            _check_filter(filter), _HIDDEN, sort=_sort_spec(sort)
        )
        return doc

    async def find(
        self,
        coll: str,
        filter: Filter,
        *,
        sort: Sort | None = None,
        skip: int = 0,
        limit: int = 0,
        fields: Sequence[str] | None = None,
        shared: bool = False,  # every document is decoded afresh from the server's reply
    ) -> list[Document]:
        if skip < 0 or limit < 0:
            raise ValueError("skip and limit must not be negative")
        cursor = self._coll(coll).find(_check_filter(filter), _projection(fields))
        spec = _sort_spec(sort)
        if spec:
            cursor = cursor.sort(spec)
        if skip:
            cursor = cursor.skip(skip)
        if limit:
            cursor = cursor.limit(limit)
        docs: list[Document] = await cursor.to_list(None)
        return docs

    async def iterate(
        self,
        coll: str,
        filter: Filter,
        *,
        sort: Sort | None = None,
        batch_size: int = 500,
        fields: Sequence[str] | None = None,
    ) -> AsyncIterator[Document]:
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        cursor = self._coll(coll).find(
            _check_filter(filter), _projection(fields), batch_size=batch_size
        )
        spec = _sort_spec(sort)
        if spec:
            cursor = cursor.sort(spec)
        try:
            async for doc in cursor:
                yield doc
        finally:
            await cursor.close()

    async def count(self, coll: str, filter: Filter) -> int:
        n: int = await self._coll(coll).count_documents(_check_filter(filter))
        return n

    # --- writes

    async def insert(
        self,
        coll: str,
        doc: Document,
        events: Sequence[Document] = (),
        *,
        handover: bool = False,  # nothing to save: the driver encodes doc as BSON
    ) -> None:
        _check_doc(doc)
        _check_events(events)
        new = dict(doc)  # insert_one would add an _id to the caller's dict
        if "_id" not in new:
            new["_id"] = uuid.uuid4().hex
        elif not isinstance(new["_id"], str):
            raise TypeError("_id must be a string")
        if events:
            await self._ensure_outbox_index(coll)
            entries = self._outbox_entries(events)
            new[OUTBOX] = entries
            new[OUTBOX_AT] = entries[0]["seq"]
        try:
            await self._coll(coll).insert_one(new)
        except PyMongoError as exc:
            if _is_duplicate(exc):
                raise DuplicateKey(str(exc)) from exc
            raise

    async def update_one(
        self,
        coll: str,
        filter: Filter,
        update: Mapping[str, Any],
        *,
        events: Sequence[Document] = (),
        upsert: bool = False,
        fields: Sequence[str] | None = None,
        shared: bool = False,  # decoded afresh from the server's reply either way
    ) -> Document | None:
        _check_update(update)
        _check_events(events)
        upd: dict[str, dict[str, Any]] = {op: dict(fields) for op, fields in update.items()}
        if upsert and not _filter_sets_id(filter):
            if not any("_id" in fields for fields in upd.values()):
                upd.setdefault("$setOnInsert", {})["_id"] = uuid.uuid4().hex
        if events:
            await self._ensure_outbox_index(coll)
            entries = self._outbox_entries(events)
            upd.setdefault("$push", {})[OUTBOX] = {"$each": entries}
            upd.setdefault("$min", {})[OUTBOX_AT] = entries[0]["seq"]
        try:
            doc: Document | None = await self._coll(coll).find_one_and_update(
                _check_filter(filter),
                upd,
                projection=_projection(fields),
                upsert=upsert,
                return_document=ReturnDocument.AFTER,
            )
        except PyMongoError as exc:
            if _is_duplicate(exc):
                raise DuplicateKey(str(exc)) from exc
            raise
        return doc

    async def update_many(self, coll: str, filter: Filter, update: Mapping[str, Any]) -> int:
        """Update every match; returns how many matched (``matched_count``)."""
        _check_update(update)
        try:
            res = await self._coll(coll).update_many(_check_filter(filter), dict(update))
        except PyMongoError as exc:
            if _is_duplicate(exc):
                raise DuplicateKey(str(exc)) from exc
            raise
        return int(res.matched_count)

    async def delete_one(self, coll: str, filter: Filter) -> bool:
        res = await self._coll(coll).delete_one(_check_filter(filter))
        return bool(res.deleted_count)

    async def delete_many(self, coll: str, filter: Filter) -> int:
        res = await self._coll(coll).delete_many(_check_filter(filter))
        return int(res.deleted_count)

    # --- the outbox

    async def _relay_collections(self) -> list[str]:
        """Collections declared or written here, and every other one (re-listed now and then)."""
        now = time.monotonic()
        if now - self._listed_at > _COLLECTIONS_TTL:
            names = await self._db.list_collection_names()
            self._relay.update(n for n in names if not n.startswith("system."))
            self._listed_at = now
        return sorted(self._relay)

    async def pending_events(self, limit: int = 500) -> list[OutboxItem]:
        if self._db is None:
            raise RuntimeError("MongoStore is not started")
        found: list[tuple[int, str, str, int, Document]] = []
        for name in await self._relay_collections():
            cursor = (
                self._db[name]
                .find({OUTBOX_AT: {"$exists": True}}, {OUTBOX: 1, OUTBOX_AT: 1})
                .sort([(OUTBOX_AT, 1)])
            )
            if limit:
                cursor = cursor.limit(limit)
            for doc in await cursor.to_list(None):
                entries = doc.get(OUTBOX) or []
                if not entries:  # left over from a clear interrupted half-way
                    await self._unset_if_empty(self._db[name], doc["_id"])
                for pos, entry in enumerate(entries):
                    found.append((int(entry["seq"]), name, doc["_id"], pos, entry["event"]))
        found.sort(key=lambda t: t[:4])
        if limit:
            found = found[:limit]
        return [OutboxItem(name, doc_id, ev) for _, name, doc_id, _, ev in found]

    async def _unset_if_empty(self, coll: Any, doc_id: str) -> None:
        # only while still empty: a write in between keeps its events pending
        await coll.update_one(
            {"_id": doc_id, f"{OUTBOX}.0": {"$exists": False}},
            {"$unset": {OUTBOX: "", OUTBOX_AT: ""}},
        )

    async def clear_events(self, items: Sequence[OutboxItem]) -> None:
        by_doc: dict[tuple[str, str], list[Any]] = {}
        for item in items:
            by_doc.setdefault((item.collection, item.doc_id), []).append(item.event.get("id"))
        for (name, doc_id), ids in by_doc.items():
            coll = self._coll(name)
            after = await coll.find_one_and_update(
                {"_id": doc_id, OUTBOX_AT: {"$exists": True}},
                {"$pull": {OUTBOX: {"event.id": {"$in": ids}}}},
                projection={OUTBOX: 1},
                return_document=ReturnDocument.AFTER,
            )
            if after is None:
                continue
            remaining = after.get(OUTBOX) or []
            if not remaining:
                await self._unset_if_empty(coll, doc_id)
            else:
                # move the relay's ordering key up to the oldest event left; a race
                # here leaves it lower than need be, which only affects ordering
                first = min(int(e["seq"]) for e in remaining)
                await coll.update_one(
                    {"_id": doc_id, f"{OUTBOX}.seq": first, OUTBOX_AT: {"$lt": first}},
                    {"$set": {OUTBOX_AT: first}},
                )
