"""Versioned FHIR resources of one provider (tenant), kept with their central model.

Every write is one command applied by a worker (``apply_put`` / ``apply_delete``):
it claims the next version in the history collection (the ``_id``
``tenant/type/id/version`` is the guard against two writers), then moves the
current document forward with a condition on the version it read, writing the
domain event into the same document's outbox. A redelivered command finds its
own message id on the document or the history entry and changes nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway import constants as c
from gateway import search
from gateway.errors import FhirError, Issue, not_found, version_conflict
from gateway.events import event
from gateway.ports import Document, DuplicateKey, Store
from gateway.timeutil import to_fhir, to_store

RESOURCE_TYPES = ("Location", "Schedule", "Slot", "Appointment")


def doc_id(tenant: str, rtype: str, rid: str) -> str:
    return f"{tenant}/{rtype}/{rid}"


@dataclass(frozen=True)
class Written:
    """The outcome of a write, as the API answers it."""

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


async def read_version(store: Store, tenant: str, rtype: str, rid: str, version: int) -> Document:
    doc = await store.get(c.HISTORY, f"{doc_id(tenant, rtype, rid)}/{version}")
    if doc is None:
        raise not_found(f"{rtype}/{rid}/_history/{version}")
    return doc


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
    update is conditioned on its version, the insert on its ``_id``).
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
        version = cur_version + 1
        stored = with_meta(resource, rid, version, now)
        at = to_store(now)
        hist = {
            "_id": f"{key}/{version}",
            "tenant": tenant,
            "type": rtype,
            "rid": rid,
            "version": version,
            "last_updated": at,
            "deleted": False,
            "resource": stored,
            "msg": msg_id,
        }
        try:
            await store.insert(c.HISTORY, hist)
        except DuplicateKey:
            existing = await store.get(c.HISTORY, f"{key}/{version}")
            if existing is None or existing.get("msg") != msg_id:
                continue  # another writer took this version: read again
            # Our own history entry from an interrupted earlier try: finish the write.
            stored, at = existing["resource"], existing["last_updated"]
        created = not live
        ev = event(
            f"resource.{rtype}.{'created' if created else 'updated'}",
            {"type": rtype, "id": rid, "version": version, "channel": channel},
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
                    c.RESOURCES, {"_id": key, **fields, "created": at}, events=events
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
    """Mark deleted (kept for history); returns the deletion's version, None if absent."""
    key = doc_id(tenant, rtype, rid)
    for _ in range(5):
        current = await store.get(c.RESOURCES, key)
        if current is None:
            return None
        if current.get("deleted"):
            return int(current["version"])
        version = current["version"] + 1
        at = to_store(now)
        try:
            await store.insert(
                c.HISTORY,
                {
                    "_id": f"{key}/{version}",
                    "tenant": tenant,
                    "type": rtype,
                    "rid": rid,
                    "version": version,
                    "last_updated": at,
                    "deleted": True,
                    "resource": None,
                    "msg": msg_id,
                },
            )
        except DuplicateKey:
            existing = await store.get(c.HISTORY, f"{key}/{version}")
            if existing is None or existing.get("msg") != msg_id:
                continue
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
        )
        if done is not None:
            return version
    raise FhirError(409, [Issue("conflict", f"{rtype}/{rid} is changing concurrently; retry")])
