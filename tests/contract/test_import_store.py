"""The initial import's store side on every Store adapter (R-SCHED-5, issue 9).

No-op writes (``resources.apply_put`` with the stored content: no version, no
event), the job's chunk bookkeeping (counters per file with dotted ``$inc``, the
sequence guard, the checkpoint) and the freeze, on the embedded store and on
MongoStore over the emulator (and a real MongoDB when ``MONGODB_URL`` is set).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway import constants as c
from gateway import imports, resources
from gateway.errors import FhirError
from gateway.events import command
from gateway.http.fhir import prepare
from gateway.ports import Store
from gateway.schema import INDEXES

STORE_INDEXES = {
    name: INDEXES[name] for name in (c.RESOURCES, c.HISTORY, c.IMPORT_JOBS, c.IMPORT_ERRORS)
}
NOW = datetime(2027, 1, 4, 8, 0, tzinfo=UTC)
TENANT = "prov-test"


class FixedClock:
    def __init__(self, now: datetime) -> None:
        self.at = now

    def now(self) -> datetime:
        return self.at

    async def wait_changed(self, timeout: float) -> None:
        return None


def location(name: str = "Poradnia") -> dict[str, Any]:
    return {
        "resourceType": "Location",
        "id": "loc-1",
        "identifier": [{"system": "http://example-vendor.pl/fhir/sid/location", "value": "L1"}],
        "status": "active",
        "name": name,
        "address": {"city": "Kraków", "postalCode": "31-000"},
    }


async def put_location(store: Store, resource: dict[str, Any], msg: str) -> resources.Written:
    op = prepare("PUT", "Location", "loc-1", resource)
    return await resources.apply_put(
        store,
        now=NOW,
        tenant=TENANT,
        rtype="Location",
        rid="loc-1",
        resource=op["resource"],
        central=op["central"],
        if_match=None,
        msg_id=msg,
        correlation_id="test",
    )


async def test_same_content_writes_nothing(store: Store) -> None:
    first = await put_location(store, location(), "m1")
    assert (first.status, first.version, first.changed) == (201, 1, True)
    again = await put_location(store, location(), "m2")
    assert (again.status, again.version, again.changed) == (200, 1, False)
    # One version: the document, nothing superseded (the history keeps only those).
    assert await store.count(c.HISTORY, {"tenant": TENANT}) == 0
    assert len(await store.pending_events()) == 1  # the creation's event only
    # meta.versionId / lastUpdated are the server's: a read-back sent again is the same
    stored = (await store.get(c.RESOURCES, "prov-test/Location/loc-1") or {})["resource"]
    assert (await put_location(store, stored, "m3")).changed is False
    changed = await put_location(store, location("Poradnia Kardiologiczna"), "m4")
    assert (changed.version, changed.changed) == (2, True)
    assert await store.count(c.HISTORY, {"tenant": TENANT}) == 1  # version 1, superseded
    assert len(await store.pending_events()) == 2


async def new_job(store: Store, now: datetime = NOW, stale: float = 900.0) -> dict[str, Any]:
    return await imports.start_job(
        store,
        now=now,
        tenant=TENANT,
        status_url="http://gw/fhir/_import/{job}",
        stale_seconds=stale,
    )


def chunk_msg(job: str, seq: int, ops: list[dict[str, Any]], **extra: Any) -> Any:
    body = {
        "job": job,
        "seq": seq,
        "file": {"key": "f0", "name": "locations.ndjson", "format": "ndjson"},
        "last": extra.pop("last", seq),
        "positions": extra.pop("positions", [seq]),
        "ops": ops,
        "rejected": extra.pop("rejected", []),
    }
    return command("import.chunk", body, tenant=TENANT, correlation_id="t", now=NOW)


def location_op(name: str, index: int = 0) -> dict[str, Any]:
    op = prepare("PUT", "Location", "loc-1", location(name))
    op["index"] = index
    return op


async def test_chunks_count_once_in_order(store: Store) -> None:
    """R-SCHED-5: counts per file, a chunk sent twice counted once, order enforced."""
    clock = FixedClock(NOW)
    job = await new_job(store)
    out = await imports.handle_chunk(store, clock, chunk_msg(job["_id"], 1, [location_op("A")]))
    assert out["chunk"]["created"] == 1
    again = await imports.handle_chunk(store, clock, chunk_msg(job["_id"], 1, [location_op("A")]))
    assert again["duplicate"] is True
    with pytest.raises(FhirError) as err:
        await imports.handle_chunk(store, clock, chunk_msg(job["_id"], 3, [location_op("A")]))
    assert err.value.status == 409 and err.value.code == "out-of-order"
    bad = {"index": 1, "outcome": {"resourceType": "OperationOutcome", "issue": []}}
    out = await imports.handle_chunk(
        store,
        clock,
        chunk_msg(job["_id"], 2, [location_op("A")], positions=[2, 3], rejected=[bad], last=3),
    )
    assert out["chunk"] == {
        "read": 2,
        "created": 0,
        "updated": 0,
        "unchanged": 1,
        "rejected": 1,
    }
    saved = await store.get(c.IMPORT_JOBS, job["_id"])
    assert saved is not None
    assert saved["counts"] == {"read": 3, "created": 1, "updated": 0, "unchanged": 1, "rejected": 1}
    assert saved["files"]["f0"]["read"] == 3 and saved["files"]["f0"]["position"] == 3
    assert saved["checkpoint"] == {"file": "f0", "name": "locations.ndjson", "position": 3}
    errors = await store.find(c.IMPORT_ERRORS, {"job": job["_id"]})
    assert len(errors) == 1
    source = errors[0]["outcome"]["extension"][0]
    assert source["url"] == imports.IMPORT_SOURCE
    assert {"url": "line", "valueInteger": 3} in source["extension"]


async def test_freeze_while_running_and_not_after(store: Store) -> None:
    """R-SCHED-5: one running import per provider; writes refused (423) until it ends."""
    clock = FixedClock(NOW)
    job = await new_job(store)
    with pytest.raises(FhirError) as err:
        await imports.refuse_during_import(store, clock, TENANT)
    assert err.value.status == 423
    assert err.value.issues[0].code == "lock-error"
    assert job["status_url"] in err.value.issues[0].diagnostics
    with pytest.raises(FhirError) as second:
        await new_job(store)
    assert second.value.status == 409
    await imports.refuse_during_import(store, clock, "another-provider")
    await imports.end_job(store, job, NOW, "cancelled", "test")
    await imports.refuse_during_import(store, clock, TENANT)
    assert (await new_job(store))["status"] == imports.RUNNING


async def test_stale_job_stops_freezing_and_reopens(store: Store) -> None:
    """R-SCHED-5: a client gone silent does not freeze the provider for ever."""
    job = await new_job(store, stale=60)
    later = FixedClock(NOW + timedelta(seconds=61))
    await imports.refuse_during_import(store, later, TENANT)  # no 423: stale
    failed = await store.get(c.IMPORT_JOBS, job["_id"])
    assert failed is not None and failed["status"] == "failed"
    assert failed["reason"].startswith("stale")
    out = await imports.handle_chunk(store, later, chunk_msg(job["_id"], 1, [location_op("A")]))
    assert out["job"]["status"] == imports.RUNNING
    with pytest.raises(FhirError):
        await imports.refuse_during_import(store, later, TENANT)
