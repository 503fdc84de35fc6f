"""Versioned resource writes (``resources.apply_put``) on every Store adapter.

A write names only what changed (``resources.changes``: the central model key by
key, so a booking does not rewrite a slot's index keys); the stored document must
be exactly what a whole-document write gives, on the embedded store and on
MongoDB alike. A caller's ``current`` saves a read; a stale one costs a retry,
never a lost or wrong write.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from gateway import constants as c
from gateway import resources
from gateway.errors import FhirError
from gateway.ports import Store
from gateway.schema import INDEXES

STORE_INDEXES = INDEXES
NOW = datetime(2027, 1, 5, 12, 0, tzinfo=UTC)
KEY = resources.doc_id("t1", "Slot", "s1")


def slot(status: str = "free", **central: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    resource = {"resourceType": "Slot", "id": "s1", "status": status}
    base: dict[str, Any] = {
        "status": status,
        "scope": "cardiology",
        "start": "2027-02-15T06:00:00.000000Z",
        "appointment_id": None,
        "identifiers": [{"system": "urn:x", "value": "1"}],
    }
    base.update(central)
    return resource, base


async def put(store: Store, status: str, msg: str, **kw: Any) -> resources.Written:
    central = kw.pop("central", {})
    resource, cen = slot(status, **central)
    return await resources.apply_put(
        store,
        now=kw.pop("now", NOW),
        tenant="t1",
        rtype="Slot",
        rid="s1",
        resource=resource,
        central=cen,
        if_match=kw.pop("if_match", None),
        msg_id=msg,
        correlation_id="c",
        **kw,
    )


async def history_of(store: Store) -> list[tuple[int, str | None, str]]:
    """The history collection's entries of s1: (version, status or None for a
    deletion, message), oldest first."""
    docs = await store.find(c.HISTORY, {"tenant": "t1", "rid": "s1"}, sort=[("version", 1)])
    return [
        (d["version"], None if d["deleted"] else d["resource"]["status"], d["msg"]) for d in docs
    ]


def test_changes_names_only_what_differs() -> None:
    cur = {
        "_id": "x",
        "version": 3,
        "tenant": "t1",
        "central": {"status": "free", "hold": {"by": "waiting-room"}, "start": "a"},
        "ident_key": "k",
    }
    fields = {"version": 4, "tenant": "t1", "central": {"status": "busy", "start": "a"}}
    assert resources.changes(cur, fields, unset=("ident_key", "absent")) == {
        "$set": {"version": 4, "central.status": "busy"},
        "$unset": {"central.hold": "", "ident_key": ""},
    }
    # No central model yet (or an empty one): written whole.
    assert resources.changes({"_id": "x"}, {"central": {"a": 1}}) == {"$set": {"central": {"a": 1}}}


async def test_update_stores_the_same_document_as_a_whole_write(store: Store) -> None:
    await put(store, "free", "m1", ident_key="t1|Slot|urn:x|1", central={"hold": {"by": "wr"}})
    first = await store.get(c.RESOURCES, KEY)
    assert first is not None and first["central"]["hold"] == {"by": "wr"}
    written = await put(store, "busy", "m2", central={"appointment_id": "a1"})
    assert written.version == 2
    doc = await store.get(c.RESOURCES, KEY)
    assert doc is not None
    _, expected_central = slot("busy", appointment_id="a1")
    # The hold and the identifier guard are gone, the rest is the new central model.
    assert doc["central"] == expected_central
    assert "ident_key" not in doc
    assert doc["version"] == 2 and doc["last_msg"] == "m2"
    assert doc["resource"]["status"] == "busy" and doc["resource"]["meta"]["versionId"] == "2"
    # Indexed reads see the change (the status indexes were rewritten).
    free = await store.find(c.RESOURCES, {"type": "Slot", "central.status": "free"})
    busy = await store.find(c.RESOURCES, {"type": "Slot", "central.status": "busy"})
    assert free == [] and [d["_id"] for d in busy] == [KEY]
    # The version it superseded is archived; the current one is the document only.
    hist = await store.get(c.HISTORY, f"{KEY}/1")
    assert hist is not None and hist["resource"]["status"] == "free"
    assert await store.get(c.HISTORY, f"{KEY}/2") is None


async def test_a_stale_current_costs_a_retry_not_a_lost_write(store: Store) -> None:
    await put(store, "free", "m1")
    stale = await store.get(c.RESOURCES, KEY)
    await put(store, "busy", "m2", central={"appointment_id": "a1"})
    # Written from the version-1 document the caller still holds: read again, version 3.
    written = await put(store, "free", "m3", current=stale)
    assert written.version == 3
    doc = await store.get(c.RESOURCES, KEY)
    assert doc is not None and doc["version"] == 3 and doc["central"]["status"] == "free"
    # Versions 1 and 2 archived once each, as they were (not as the stale copy says).
    assert await history_of(store) == [(1, "free", "m1"), (2, "busy", "m2")]
    # "Absent" when it exists: the insert fails on its _id, and the update follows.
    written = await put(store, "busy", "m4", current=None)
    assert written.version == 4


async def test_a_redelivered_write_changes_nothing(store: Store) -> None:
    await put(store, "free", "m1")
    await put(store, "busy", "m2")
    again = await put(store, "busy", "m2")
    assert again.version == 2
    doc = await store.get(c.RESOURCES, KEY)
    assert doc is not None and doc["version"] == 2
    assert await history_of(store) == [(1, "free", "m1")]


async def test_unchanged_central_keys_stay_and_new_ones_appear(store: Store) -> None:
    await put(store, "free", "m1")
    await put(store, "busy-tentative", "m2", central={"hold": {"by": "waiting-room", "since": "x"}})
    doc = await store.get(c.RESOURCES, KEY)
    assert doc is not None
    assert doc["central"]["hold"] == {"by": "waiting-room", "since": "x"}
    assert doc["central"]["identifiers"] == [{"system": "urn:x", "value": "1"}]


# --------------------------------------------------------------------------- batches


def location_op(rid: str, ident: str) -> dict[str, Any]:
    from gateway.http.fhir import prepare

    resource = {
        "resourceType": "Location",
        "identifier": [{"system": "urn:loc", "value": ident}],
        "status": "active",
        "name": f"Poradnia {rid}",
        "address": {"line": ["ul. Długa 1"], "city": "Kraków", "postalCode": "31-000"},
    }
    return prepare("PUT", "Location", rid, resource)


async def batch(store: Store, msg: str, *ops: dict[str, Any]) -> list[dict[str, Any]]:
    from gateway import operations

    reply = await operations.run_write(
        store,
        now=NOW,
        tenant="t1",
        msg_id=msg,
        correlation_id="c",
        mode="batch",
        ops_body=[{**op, "index": i} for i, op in enumerate(ops)],
        representation=False,
    )
    results: list[dict[str, Any]] = reply["results"]
    return results


def statuses(results: list[dict[str, Any]]) -> list[int]:
    return [r["error"]["status"] if "error" in r else r["status"] for r in results]


async def test_a_batch_sees_the_identifiers_its_earlier_entries_took_and_freed(
    store: Store,
) -> None:
    """A batch reads who holds each identifier once; what its entries write counts too."""
    # Two new resources with one identifier: the second is refused, as a read would.
    first = await batch(store, "m1", location_op("l1", "A"), location_op("l2", "A"))
    assert statuses(first) == [201, 409]
    # l1 moves to B, so A is free for l3 later in the same batch; l4 cannot take B.
    second = await batch(
        store,
        "m2",
        location_op("l1", "B"),
        location_op("l3", "A"),
        location_op("l4", "B"),
        location_op("l1", "B"),
    )
    assert statuses(second) == [200, 201, 409, 200]
    assert second[3].get("unchanged") is True
    l3 = await store.get(c.RESOURCES, resources.doc_id("t1", "Location", "l3"))
    assert l3 is not None and l3["ident_key"] == "t1|Location|urn:loc|A"


async def test_a_batch_does_not_see_what_its_earlier_entry_deleted(store: Store) -> None:
    """The batch's shared reads forget a resource an entry deleted: a later entry
    referencing it finds it gone, as a read would."""
    from gateway.http.fhir import prepare

    assert statuses(await batch(store, "m1", location_op("l1", "A"))) == [201]
    schedule = prepare(
        "PUT",
        "Schedule",
        "s1",
        {
            "resourceType": "Schedule",
            "active": True,
            "serviceType": [
                {
                    "coding": [
                        {
                            "system": "http://cer-gateway.org/fhir/CodeSystem/scope",
                            "code": "cardiology",
                        }
                    ]
                }
            ],
            "actor": [{"reference": "Location/l1"}],
        },
    )
    delete = {"method": "DELETE", "type": "Location", "id": "l1"}
    results = await batch(store, "m2", delete, schedule)
    assert statuses(results) == [204, 422]


# --------------------------------------------------------------------------- history
#
# The current version is the document in RESOURCES only; the history collection
# keeps the versions later writes superseded (an update or a deletion archives the
# version it replaces before its guarded update).

LATER = NOW + timedelta(minutes=5)


async def delete(store: Store, msg: str) -> int | None:
    return await resources.apply_delete(
        store, now=LATER, tenant="t1", rtype="Slot", rid="s1", msg_id=msg, correlation_id="c"
    )


async def listed(store: Store, limit: int = 1000) -> list[tuple[int, bool]]:
    docs = await resources.versions(store, "t1", "Slot", "s1", limit=limit)
    return [(d["version"], d["deleted"]) for d in docs]


async def test_a_create_writes_no_history(store: Store) -> None:
    written = await put(store, "free", "m1")
    assert (written.status, written.version) == (201, 1)
    assert await store.count(c.HISTORY, {}) == 0
    assert await store.count(c.RESOURCES, {}) == 1
    v1 = await resources.version_doc(store, "t1", "Slot", "s1", 1)
    assert v1 is not None and v1["resource"] == written.resource and not v1["deleted"]


async def test_an_update_archives_exactly_the_version_it_supersedes(store: Store) -> None:
    first = await put(store, "free", "m1")
    await put(store, "busy", "m2", now=LATER, central={"appointment_id": "a1"})
    assert await store.count(c.HISTORY, {}) == 1
    hist = await store.get(c.HISTORY, f"{KEY}/1")
    assert hist is not None
    assert {k: v for k, v in hist.items() if k != "_id"} == {
        "tenant": "t1",
        "type": "Slot",
        "rid": "s1",
        "version": 1,
        "last_updated": first.last_updated,
        "deleted": False,
        "resource": first.resource,
        "msg": "m1",
    }
    await put(store, "free", "m3", now=LATER)
    assert await history_of(store) == [(1, "free", "m1"), (2, "busy", "m2")]
    # A deletion archives the live version before it; a write after it, the deletion.
    assert await delete(store, "m4") == 4
    assert (await put(store, "busy", "m5")).status == 201  # update-as-create
    assert await history_of(store) == [
        (1, "free", "m1"),
        (2, "busy", "m2"),
        (3, "free", "m3"),
        (4, None, "m4"),
    ]
    doc = await store.get(c.RESOURCES, KEY)
    assert doc is not None and doc["version"] == 5 and not doc["deleted"]


async def test_vread_of_the_current_and_of_older_versions(store: Store) -> None:
    v1 = await put(store, "free", "m1")
    v2 = await put(store, "busy", "m2", now=LATER)
    for n, written in ((1, v1), (2, v2)):
        doc = await resources.read_version(store, "t1", "Slot", "s1", n)
        assert doc["version"] == n and not doc["deleted"]
        assert doc["resource"] == written.resource and doc["last_updated"] == written.last_updated
    for missing in (0, 3):
        with pytest.raises(FhirError) as err:
            await resources.read_version(store, "t1", "Slot", "s1", missing)
        assert err.value.status == 404
    assert await resources.version_doc(store, "t1", "Slot", "other", 1) is None
    # The deletion is the current version: read as one (no resource), the rest stays.
    assert await delete(store, "m3") == 3
    gone = await resources.read_version(store, "t1", "Slot", "s1", 3)
    assert gone["deleted"] and gone["resource"] is None
    doc = await resources.read_version(store, "t1", "Slot", "s1", 2)
    assert doc["resource"] == v2.resource and not doc["deleted"]
    # A caller's copy of the document saves a read; an older one is read again.
    stale = await store.get(c.RESOURCES, KEY)
    await put(store, "free", "m4")
    doc4 = await resources.version_doc(store, "t1", "Slot", "s1", 4, current=stale)
    assert doc4 is not None and doc4["resource"]["status"] == "free"
    doc3 = await resources.version_doc(store, "t1", "Slot", "s1", 3, current=stale)
    assert doc3 is not None and doc3["deleted"] and doc3["resource"] is None


async def test_the_history_lists_every_version_newest_first(store: Store) -> None:
    assert await listed(store) == []
    await put(store, "free", "m1")
    assert await listed(store) == [(1, False)]
    await put(store, "busy", "m2")
    await put(store, "free", "m3")
    await delete(store, "m4")
    await put(store, "busy", "m5")
    assert await listed(store) == [(5, False), (4, True), (3, False), (2, False), (1, False)]
    assert await listed(store, limit=2) == [(5, False), (4, True)]
    assert await listed(store, limit=1) == [(5, False)]
    docs = await resources.versions(store, "t1", "Slot", "s1", limit=10)
    assert [d["resource"] and d["resource"]["meta"]["versionId"] for d in docs] == [
        "5",
        None,
        "3",
        "2",
        "1",
    ]


class MeetAtUpdate:
    """A store whose first ``n`` updates of a resource document wait until all ``n``
    are waiting: writers that read the same version meet at their guarded updates."""

    def __init__(self, store: Store, n: int) -> None:
        self.store = store
        self.waiting = n
        self.met = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def update_one(self, coll: str, *args: Any, **kw: Any) -> Any:
        if coll == c.RESOURCES and self.waiting > 0:
            self.waiting -= 1
            if self.waiting == 0:
                self.met.set()
            await asyncio.wait_for(self.met.wait(), 5)
        return await self.store.update_one(coll, *args, **kw)


@pytest.mark.parametrize("if_match", [None, 1])
async def test_concurrent_updates_of_one_version(store: Store, if_match: int | None) -> None:
    """Two writers of version 1: one update wins; the other reads again and writes
    version 3 after it (or, asking for version 1, is refused). No version is lost."""
    await put(store, "free", "m1")
    v1 = await store.get(c.RESOURCES, KEY)
    both = cast(Store, MeetAtUpdate(store, 2))
    outcomes = await asyncio.gather(
        put(both, "busy", "m2", current=v1, if_match=if_match),
        put(both, "busy-tentative", "m3", current=v1, if_match=if_match),
        return_exceptions=True,
    )
    won = [o for o in outcomes if isinstance(o, resources.Written)]
    lost = [o for o in outcomes if isinstance(o, FhirError)]
    doc = await store.get(c.RESOURCES, KEY)
    assert doc is not None
    hist = await history_of(store)
    if if_match is None:
        assert sorted(w.version for w in won) == [2, 3]
        assert doc["version"] == 3
        v2 = next(w for w in won if w.version == 2).resource["status"]
        by = {"busy": "m2", "busy-tentative": "m3"}
        assert hist == [(1, "free", "m1"), (2, v2, by[v2])]
        assert doc["last_msg"] != by[v2]
    else:
        assert [w.version for w in won] == [2] and [e.status for e in lost] == [412]
        assert doc["version"] == 2 and hist == [(1, "free", "m1")]
    assert len(await store.pending_events()) == 1 + len(won)


async def test_redelivered_updates_and_deletes_change_nothing_twice(store: Store) -> None:
    await put(store, "free", "m1")
    first = await put(store, "busy", "m2")
    again = await put(store, "busy", "m2")
    assert (again.version, again.resource) == (first.version, first.resource)
    assert await history_of(store) == [(1, "free", "m1")]
    assert await delete(store, "m3") == 3
    assert await delete(store, "m3") == 3
    assert await history_of(store) == [(1, "free", "m1"), (2, "busy", "m2")]
    doc = await store.get(c.RESOURCES, KEY)
    assert doc is not None and doc["version"] == 3 and doc["deleted"]
    assert len(await store.pending_events()) == 3


async def test_a_try_interrupted_after_its_archive_ends_right(store: Store) -> None:
    """A crash between the archive and the update: the archive is there, the document
    is not moved. The redelivered command (or another writer first) finishes."""
    await put(store, "free", "m1")
    v1 = await store.get(c.RESOURCES, KEY)
    assert v1 is not None
    await store.insert(c.HISTORY, resources.archived(v1))  # m2's interrupted try
    # Another writer comes first: the archive is its own as well.
    assert (await put(store, "busy-tentative", "m3")).version == 2
    # m2 redelivered: it writes after m3, once.
    assert (await put(store, "busy", "m2")).version == 3
    assert await history_of(store) == [(1, "free", "m1"), (2, "busy-tentative", "m3")]
    v3 = await store.get(c.RESOURCES, KEY)
    assert v3 is not None
    await store.insert(c.HISTORY, resources.archived(v3))  # a deletion's interrupted try
    assert await delete(store, "m4") == 4
    assert await delete(store, "m4") == 4
    assert await history_of(store) == [
        (1, "free", "m1"),
        (2, "busy-tentative", "m3"),
        (3, "busy", "m2"),
    ]
    assert await listed(store) == [(4, True), (3, False), (2, False), (1, False)]
    assert len(await store.pending_events()) == 4


async def test_a_callers_edited_copy_is_not_archived_as_a_version(store: Store) -> None:
    """A ``current`` whose version number is not its resource's (a caller's edit) is
    read again: archiving it would keep version 2 with version 1's content."""
    await put(store, "free", "m1")
    v1 = await store.get(c.RESOURCES, KEY)
    assert v1 is not None
    await put(store, "busy", "m2")
    edited = {**v1, "version": 2}
    assert (await put(store, "busy-tentative", "m3", current=edited)).version == 3
    assert await history_of(store) == [(1, "free", "m1"), (2, "busy", "m2")]


async def test_an_update_refused_after_its_archive_lists_no_version_twice(store: Store) -> None:
    """The identifier guard refuses an update after it archived the current version:
    that copy is never read (the document answers for its version) and the next
    update finds it there."""
    await put(store, "free", "m1", ident_key="t1|Slot|urn:x|1")
    other, cen = slot("free", identifiers=[{"system": "urn:x", "value": "2"}])
    await resources.apply_put(
        store,
        now=NOW,
        tenant="t1",
        rtype="Slot",
        rid="s2",
        resource={**other, "id": "s2"},
        central=cen,
        if_match=None,
        msg_id="o1",
        correlation_id="c",
        ident_key="t1|Slot|urn:x|2",
    )
    with pytest.raises(FhirError) as err:
        await put(store, "busy", "m2", ident_key="t1|Slot|urn:x|2")
    assert err.value.status == 409
    assert await listed(store) == [(1, False)]
    assert (await put(store, "busy", "m3")).version == 2
    assert await history_of(store) == [(1, "free", "m1")]
    assert await listed(store) == [(2, False), (1, False)]
