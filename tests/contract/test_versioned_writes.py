"""Versioned resource writes (``resources.apply_put``) on every Store adapter.

A write names only what changed (``resources.changes``: the central model key by
key, so a booking does not rewrite a slot's index keys); the stored document must
be exactly what a whole-document write gives, on the embedded store and on
MongoDB alike. A caller's ``current`` saves a read; a stale one costs a retry,
never a lost or wrong write.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gateway import constants as c
from gateway import resources
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
        now=NOW,
        tenant="t1",
        rtype="Slot",
        rid="s1",
        resource=resource,
        central=cen,
        if_match=None,
        msg_id=msg,
        correlation_id="c",
        **kw,
    )


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
    hist = await store.get(c.HISTORY, f"{KEY}/2")
    assert hist is not None and hist["resource"]["status"] == "busy"


async def test_a_stale_current_costs_a_retry_not_a_lost_write(store: Store) -> None:
    await put(store, "free", "m1")
    stale = await store.get(c.RESOURCES, KEY)
    await put(store, "busy", "m2", central={"appointment_id": "a1"})
    # Written from the version-1 document the caller still holds: read again, version 3.
    written = await put(store, "free", "m3", current=stale)
    assert written.version == 3
    doc = await store.get(c.RESOURCES, KEY)
    assert doc is not None and doc["version"] == 3 and doc["central"]["status"] == "free"
    assert await store.get(c.HISTORY, f"{KEY}/3") is not None
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
    assert await store.get(c.HISTORY, f"{KEY}/3") is None


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
