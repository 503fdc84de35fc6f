"""Versioned FHIR resources of one provider (tenant), kept with their central model.

The current version of a resource lives only in its document in ``resources``
(``_id`` ``tenant/type/id``); the history collection keeps the versions it
superseded (``_id`` ``tenant/type/id/version``). A resource written once is
stored once, and a create writes one document.

Every write is one command applied by a worker (``apply_put`` / ``apply_delete``):

- a **create** inserts the document; its unique ``_id`` (and the unique
  ``ident_key``) is the guard against a second writer;
- an **update** or a **deletion** first archives the current version (a copy of
  the stored document as a history entry, ``archive``), then moves the document
  forward with a condition on the version it read: that condition is the guard.
  The archived copy of version n is the same whoever writes it (a version's
  resource, time, deletion mark and message never change), so a ``DuplicateKey``
  on it means another writer, or an interrupted earlier try, archived it already.

The domain event goes into the document's outbox in that same single-document
write. So while the document is at version n, versions 1..n-1 are in the
history: each was archived before the write that superseded it. Readers of a
version (``version_doc``, ``versions``) look at the current document first, then
the history. A redelivered command finds its own message id on the document
(``last_msg``) and changes nothing twice; one interrupted between its archive
and its update finds the archive there and finishes. A write refused after its
archive (another resource took the identifier meanwhile: 409) leaves a copy of
the current version in the history, which readers never consult (the document
answers for it) and the next update finds there.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from gateway import constants as c
from gateway import search
from gateway.errors import FhirError, Issue, not_found, version_conflict
from gateway.events import event
from gateway.ports import Document, DuplicateKey, Store
from gateway.timeutil import to_fhir, to_store

RESOURCE_TYPES = ("Location", "Schedule", "Slot", "Appointment")
# What a Slot's created / updated event carries of the version it announces, so that a
# consumer can tell without reading the slot whether it concerns it (the waiting room
# reads only slots it could assign now: not a vendor's 100,000 slots beyond the window).
SLOT_EVENT_FACTS = ("scope", "category", "status", "start")


def doc_id(tenant: str, rtype: str, rid: str) -> str:
    return f"{tenant}/{rtype}/{rid}"


class Written(NamedTuple):
    """The outcome of a write, as the API answers it (a named tuple: a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``; two a booking)."""

    status: int  # 200 updated, 201 created
    version: int
    last_updated: str
    resource: dict[str, Any]
    # False when the content equalled the stored version: nothing was written (no new
    # version, no event), as FHIR servers' "no-op" updates do; re-imports rely on it.
    changed: bool = True

    def to_reply(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "version": self.version,
            "last_updated": self.last_updated,
            "resource": self.resource,
        }


def with_meta(resource: dict[str, Any], rid: str, version: int, at: datetime) -> dict[str, Any]:
    out = dict(resource)
    out["id"] = rid
    meta = dict(out.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = to_fhir(at)
    out["meta"] = meta
    return out


def _without_version_meta(resource: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    body = dict(resource)
    meta = dict(body.pop("meta", None) or {})
    meta.pop("versionId", None)
    meta.pop("lastUpdated", None)
    return body, meta


def same_content(
    current: Document, rid: str, resource: dict[str, Any], central: dict[str, Any]
) -> bool:
    """Does a write of ``resource`` / ``central`` leave ``current`` as it is?

    The FHIR resource is compared without ``meta.versionId`` / ``meta.lastUpdated``
    (the server's); the central model key by key for the keys the write sets: keys
    only the stored one has (``cancelled_at``, a waiting-room ``hold``) were derived
    by earlier writes and a repeat of the same content keeps them.
    """
    if current.get("deleted"):
        return False
    stored = current.get("resource") or {}
    if _without_version_meta(stored) != _without_version_meta({**resource, "id": rid}):
        return False
    before = current.get("central") or {}
    return all(k in before and before[k] == v for k, v in central.items())


class Unread:
    """The type of ``UNREAD``: the caller has not read the stored document."""


UNREAD = Unread()
_ABSENT = object()


def changes(
    current: Document, fields: dict[str, Any], unset: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The update that turns ``current`` into ``current`` + ``fields`` - ``unset``, writing
    only what differs, the central model key by key.

    Why: a store keeps an index entry up to date only for the paths an update names
    (``MemoryStore``'s ``touched_by``; MongoDB likewise rewrites only the index keys
    that change). A booking changes a slot's ``central.status`` and
    ``central.appointment_id``, not its tenant, type, start or identifiers: naming
    only those skips most of the ten indexes on resources.
    """
    set_: dict[str, Any] = {}
    drop: dict[str, Any] = {}
    for name, value in fields.items():
        old = current.get(name, _ABSENT)
        if name == "central" and isinstance(old, dict) and isinstance(value, dict) and old:
            for k, v in value.items():
                if old.get(k, _ABSENT) != v:
                    set_[f"central.{k}"] = v
            for k in old:
                if k not in value:
                    drop[f"central.{k}"] = ""
        elif old != value:
            set_[name] = value
    for name in unset:
        if name in current:
            drop[name] = ""
    update: dict[str, Any] = {"$set": set_}
    if drop:
        update["$unset"] = drop
    return update


async def read(store: Store, tenant: str, rtype: str, rid: str) -> Document:
    """The current version; 404 if unknown (or another tenant's), 410 if deleted."""
    doc = await store.get(c.RESOURCES, doc_id(tenant, rtype, rid))
    if doc is None:
        raise not_found(f"{rtype}/{rid}")
    if doc.get("deleted"):
        raise FhirError(410, [Issue("deleted", f"{rtype}/{rid} was deleted")], code="gone")
    return doc


async def version_doc(
    store: Store,
    tenant: str,
    rtype: str,
    rid: str,
    version: int,
    current: Document | Unread | None = UNREAD,
) -> Document | None:
    """Version ``version`` of ``rtype/rid``: the current document when it is that
    version, else its history entry; None when there is no such version.

    Either has ``version``, ``last_updated``, ``deleted`` and ``resource`` (None for a
    deletion: a deleted document keeps the resource it had, the version does not).
    ``current``: the document as the caller just read it (None: absent), to save
    reading it again; it is read again when it is older than ``version``.
    """
    if version < 1:
        return None
    key = doc_id(tenant, rtype, rid)
    doc = await store.get(c.RESOURCES, key) if isinstance(current, Unread) else current
    if not isinstance(current, Unread) and (doc is None or doc["version"] < version):
        doc = await store.get(c.RESOURCES, key)
    if doc is None or doc["version"] < version:
        return None
    if doc["version"] == version:
        return {**doc, "resource": None} if doc.get("deleted") else doc
    return await store.get(c.HISTORY, f"{key}/{version}")


async def versions(store: Store, tenant: str, rtype: str, rid: str, limit: int) -> list[Document]:
    """The newest ``limit`` versions of ``rtype/rid``, newest first (as ``version_doc``
    gives them); empty if the resource is unknown."""
    doc = await store.get(c.RESOURCES, doc_id(tenant, rtype, rid))
    if doc is None or limit < 1:
        return []
    newest = {**doc, "resource": None} if doc.get("deleted") else doc
    # Versions the document superseded only: a refused write may have archived the
    # current one as well (see the module's docstring).
    older = (
        await store.find(
            c.HISTORY,
            {"tenant": tenant, "type": rtype, "rid": rid, "version": {"$lt": doc["version"]}},
            sort=[("version", -1)],
            limit=limit - 1,
        )
        if limit > 1
        else []
    )
    return [newest, *older]


async def read_version(store: Store, tenant: str, rtype: str, rid: str, version: int) -> Document:
    """Version ``version`` (``version_doc``); 404 if there is no such version."""
    doc = await version_doc(store, tenant, rtype, rid, version)
    if doc is None:
        raise not_found(f"{rtype}/{rid}/_history/{version}")
    return doc


def archived(doc: Document) -> Document:
    """The history entry of the stored document's version: what an update or a
    deletion archives before it supersedes it."""
    deleted = bool(doc.get("deleted"))
    return {
        "_id": f"{doc['_id']}/{doc['version']}",
        "tenant": doc["tenant"],
        "type": doc["type"],
        "rid": doc["rid"],
        "version": doc["version"],
        "last_updated": doc["last_updated"],
        "deleted": deleted,
        "resource": None if deleted else doc["resource"],
        "msg": doc.get("last_msg"),
    }


async def archive(store: Store, doc: Document) -> None:
    """Keep the stored document's version in the history before a write supersedes it."""
    try:
        await store.insert(c.HISTORY, archived(doc), handover=True)
    except DuplicateKey:
        pass  # the same version, archived by another writer or an interrupted earlier try


def _is_stored_copy(doc: Document) -> bool:
    """Is ``doc`` (a caller's ``current``) a copy of a stored version, as far as a cheap
    look tells? A caller's own edit of it (a new version number on the old resource)
    must not be archived as that version."""
    if doc.get("deleted"):
        return True
    meta = (doc.get("resource") or {}).get("meta") or {}
    return bool(meta.get("versionId") == str(doc["version"]))


async def apply_put(
    store: Store,
    *,
    now: datetime,
    tenant: str,
    rtype: str,
    rid: str,
    resource: dict[str, Any],
    central: dict[str, Any],
    if_match: int | None,
    msg_id: str,
    correlation_id: str,
    ident_key: str | None = None,
    extra_events: list[dict[str, Any]] | None = None,
    channel: str = "provider",
    current: Document | Unread | None = UNREAD,
) -> Written:
    """Create or update ``rtype/rid`` for ``tenant`` (FHIR update-as-create).

    ``current``: the stored document as the caller just read it (None: absent), to
    save reading it again; a stale one costs a retry, never a wrong write (the
    update is conditioned on its version, the insert on its ``_id``; the version
    it archives is the same in every copy).

    A create hands its document over to the store (``Store.insert(..., handover=
    True)``: no copy of it on the embedded store), ``central`` included: callers
    build ``central`` for the write out of JSON values and do not change it
    afterwards (the worker's ops, the booking and waiting-room writes all do so;
    reading it is fine).
    """
    key = doc_id(tenant, rtype, rid)
    known = current
    found: Document | None
    for _ in range(6):
        fresh = isinstance(known, Unread)
        if isinstance(known, Unread):
            found = await store.get(c.RESOURCES, key)
        else:
            found, known = known, UNREAD
        if found is not None and found.get("last_msg") == msg_id:
            if not fresh:
                continue  # decided on the stored document only
            # Redelivery of a command that was fully applied.
            return Written(
                200 if found["version"] > 1 else 201,
                found["version"],
                found["last_updated"],
                found["resource"],
            )
        live = found is not None and not found.get("deleted")
        cur_version = found["version"] if found is not None else 0
        if if_match is not None and (not live or cur_version != if_match):
            if not fresh:
                continue
            raise version_conflict(if_match, cur_version if live else None)
        if (
            live
            and found is not None
            and not extra_events
            and same_content(found, rid, resource, central)
        ):
            if not fresh:
                continue  # "nothing changes" is decided on the stored document only
            # Nothing changes: no new version and no event (a re-run of an import, a
            # vendor re-sending what it sent; R-SCHED-5 "import it again, no change").
            return Written(
                200, cur_version, found["last_updated"], found["resource"], changed=False
            )
        if found is not None and not fresh and not _is_stored_copy(found):
            continue  # not as stored: read it
        version = cur_version + 1
        stored = with_meta(resource, rid, version, now)
        at = to_store(now)
        if found is not None:
            await archive(store, found)
        created = not live
        body: dict[str, Any] = {"type": rtype, "id": rid, "version": version, "channel": channel}
        if rtype == "Slot":
            body["slot"] = {k: central.get(k) for k in SLOT_EVENT_FACTS}
        ev = event(
            f"resource.{rtype}.{'created' if created else 'updated'}",
            body,
            tenant=tenant,
            correlation_id=correlation_id,
            now=now,
        )
        fields = {
            "tenant": tenant,
            "type": rtype,
            "rid": rid,
            "version": version,
            "last_updated": at,
            "deleted": False,
            "resource": stored,
            "central": central,
            "ident_keys": [
                f"{i.get('system')}|{i.get('value')}"
                for i in central.get("identifiers") or []
                if i.get("system") and i.get("value")
            ],
            "last_msg": msg_id,
            search.FOLDED: search.folded(rtype, central),
        }
        if ident_key:
            fields["ident_key"] = ident_key
        events = [ev, *(extra_events or [])]
        if found is None:
            try:
                # ``created``: when the resource first reached the gateway (the payer's
                # "schedules transmitted by", R-SCOPE-3); updates keep it.
                await store.insert(
                    c.RESOURCES,
                    {"_id": key, **fields, "created": at},
                    events=events,
                    handover=True,  # built here; ``central`` as the docstring says
                )
            except DuplicateKey as exc:
                if await store.get(c.RESOURCES, key) is not None:
                    continue
                raise FhirError(
                    409,
                    [Issue("duplicate", f"another {rtype} already has this identifier")],
                    code="duplicate",
                ) from exc
        else:
            try:
                done = await store.update_one(
                    c.RESOURCES,
                    {"_id": key, "version": cur_version},
                    changes(found, fields, unset=() if ident_key else ("ident_key",)),
                    events=events,
                    fields=(),  # only "did the version still match?"
                )
            except DuplicateKey as exc:
                raise FhirError(
                    409,
                    [Issue("duplicate", f"another {rtype} already has this identifier")],
                    code="duplicate",
                ) from exc
            if done is None:
                continue
        return Written(201 if created else 200, version, at, stored)
    raise FhirError(409, [Issue("conflict", f"{rtype}/{rid} is changing concurrently; retry")])


async def apply_delete(
    store: Store,
    *,
    now: datetime,
    tenant: str,
    rtype: str,
    rid: str,
    msg_id: str,
    correlation_id: str,
    channel: str = "provider",
) -> int | None:
    """Mark deleted (the document stays, as the deletion's version; the version it
    supersedes is archived); returns the deletion's version, None if absent."""
    key = doc_id(tenant, rtype, rid)
    for _ in range(5):
        current = await store.get(c.RESOURCES, key)
        if current is None:
            return None
        if current.get("deleted"):
            return int(current["version"])
        version = current["version"] + 1
        at = to_store(now)
        await archive(store, current)
        ev = event(
            f"resource.{rtype}.deleted",
            {"type": rtype, "id": rid, "version": version, "channel": channel},
            tenant=tenant,
            correlation_id=correlation_id,
            now=now,
        )
        done = await store.update_one(
            c.RESOURCES,
            {"_id": key, "version": current["version"]},
            {
                "$set": {
                    "deleted": True,
                    "version": version,
                    "last_updated": at,
                    "last_msg": msg_id,
                },
                "$unset": {"ident_key": ""},
            },
            events=[ev],
            fields=(),
        )
        if done is not None:
            return version
    raise FhirError(409, [Issue("conflict", f"{rtype}/{rid} is changing concurrently; retry")])
