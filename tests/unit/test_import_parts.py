"""Parts of the initial import (R-SCHED-5): how lines become writes, how files become chunks.

The API side (``gateway.http.imports.build_ops``): every resource gets a stable
id, so that running an import twice finds the same resources; what cannot be
imported is rejected with its position. The CLI side (``gateway.import_client``):
files in dependency order, chunks with their positions, resuming after a
checkpoint, Bundles streamed entry by entry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson

from adapters.memory_store import MemoryStore
from gateway import constants as c
from gateway import import_client
from gateway.http.imports import build_ops, derived_id
from gateway.schema import INDEXES

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "docs" / "examples" / "transaction-week-cardiology.json"
LOC_SYSTEM = "http://example-vendor.pl/fhir/sid/location"


def location(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Location",
        "status": "active",
        "name": "Poradnia",
        "address": {"city": "Kraków", "postalCode": "31-000"},
        **extra,
    }


def lines(*items: Any) -> list[bytes]:
    return [x if isinstance(x, bytes) else orjson.dumps(x) for x in items]


async def store() -> MemoryStore:
    s = MemoryStore()
    await s.start(INDEXES)
    return s


async def test_ids_are_stable_across_runs() -> None:
    s = await store()
    ident = {"identifier": [{"system": LOC_SYSTEM, "value": "L-7"}]}
    body = lines(location(id="own-id"), location(**ident), b"", location())
    built = await build_ops(s, "t1", {}, body, 1, "ndjson")
    ids = [op["id"] for op in built.ops]
    assert ids == ["own-id", derived_id("Location", LOC_SYSTEM, "L-7")]
    assert built.positions == [1, 2, 4]  # the blank line 3 is no resource
    (rejected,) = built.rejected
    assert rejected["index"] == 2
    assert "needs an id or an identifier" in json.dumps(rejected["outcome"])
    again = await build_ops(s, "t1", {}, body, 1, "ndjson")
    assert [op["id"] for op in again.ops] == ids


async def test_a_resource_holding_the_identifier_keeps_its_id() -> None:
    s = await store()
    await s.insert(
        c.RESOURCES,
        {"_id": "t1/Location/abc", "rid": "abc", "ident_key": f"t1|Location|{LOC_SYSTEM}|L-7"},
    )
    ident = {"identifier": [{"system": LOC_SYSTEM, "value": "L-7"}]}
    built = await build_ops(s, "t1", {}, lines(location(**ident)), 1, "ndjson")
    assert built.ops[0]["id"] == "abc"


async def test_bad_lines_are_rejected_with_their_place() -> None:
    s = await store()
    body = lines(b"{not json", {"resourceType": "Patient", "id": "p"}, location(id="x", status=7))
    built = await build_ops(s, "t1", {}, body, 10, "ndjson")
    assert built.ops == []
    assert [r["index"] for r in built.rejected] == [0, 1, 2]
    assert built.positions == [10, 11, 12]
    texts = [json.dumps(r["outcome"]) for r in built.rejected]
    assert "not JSON" in texts[0] and "not 'Patient'" in texts[1]
    assert built.rejected[2]["resource"] == "Location/x"


async def test_bundle_entries_resolve_urn_uuid_references() -> None:
    s = await store()
    entries = json.loads(BUNDLE.read_text())["entry"][:3]
    body = [orjson.dumps({"fullUrl": e["fullUrl"], "resource": e["resource"]}) for e in entries]
    built = await build_ops(s, "t1", {}, body, 0, "bundle")
    loc, sch, slot = built.ops
    assert loc["id"] == entries[0]["fullUrl"].split(":")[-1].replace("-", "")
    assert sch["resource"]["actor"][0]["reference"] == f"Location/{loc['id']}"
    assert slot["resource"]["schedule"]["reference"] == f"Schedule/{sch['id']}"


async def test_the_validation_process_gives_the_same_writes_as_json() -> None:
    """In the pool the writes come back as JSON and go on to the bus as they are: the
    same writes (an Appointment without a booking channel gets ``import``) and the
    same rejections as inline."""
    from gateway.http.imports import ValidationPool

    appointment = {
        "resourceType": "Appointment",
        "id": "a1",
        "status": "booked",
        "slot": [{"reference": "Slot/s1"}],
        "participant": [
            {
                "actor": {
                    "type": "Patient",
                    "identifier": {
                        "system": "urn:oid:2.16.840.1.113883.3.4424.1.1.616",
                        "value": "44051401359",
                    },
                },
                "status": "accepted",
            }
        ],
    }
    body = lines(location(id="l1"), location(id="l2", status=7), appointment)
    pool = ValidationPool(1)
    try:
        pooled = await build_ops(await store(), "t1", {}, body, 0, "ndjson", pool.run)
    finally:
        pool.close()
    inline = await build_ops(await store(), "t1", {}, body, 0, "ndjson")
    assert pooled.ops == [] and pooled.ops_json is not None
    assert orjson.loads(orjson.dumps(pooled.for_command())) == inline.ops
    assert [op["index"] for op in inline.ops] == [0, 2]
    assert inline.ops[1]["central"]["channel"] == "import"
    assert pooled.rejected == inline.rejected and [r["index"] for r in inline.rejected] == [1]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_files_in_dependency_order_and_chunks_resume(tmp_path: Path) -> None:
    slot = write(tmp_path / "b.ndjson", '{"resourceType": "Slot"}\n' * 5)
    loc = write(tmp_path / "a.ndjson", '{"resourceType": "Location"}\n\n{"resourceType": "X"}\n')
    appt = write(tmp_path / "c.ndjson", '{"resourceType": "Appointment"}\n')
    sources = import_client.discover((str(appt), str(slot), str(loc)))
    assert [s.path.name for s in sources] == ["a.ndjson", "b.ndjson", "c.ndjson"]
    got = [
        (ch.source_index, ch.first, ch.last, ch.lines)
        for ch in import_client.chunks(sources, None, 2, 1)
        if ch.body
    ]
    assert got == [(0, 1, 3, 2), (1, 1, 2, 2), (1, 3, 4, 2), (1, 5, 5, 1), (2, 1, 1, 1)]
    resumed = [
        (ch.seq, ch.source_index, ch.first)
        for ch in import_client.chunks(sources, (1, 2), 2, 7)
        if ch.body
    ]
    assert resumed == [(7, 1, 3), (8, 1, 5), (9, 2, 1)]


def test_a_bundle_is_streamed_entry_by_entry() -> None:
    (source,) = import_client.discover((str(BUNDLE),))
    assert source.format == "bundle"
    entries = json.loads(BUNDLE.read_text())["entry"]
    chunks = [ch for ch in import_client.chunks([source], None, 25, 1) if ch.body]
    assert [ch.first for ch in chunks] == [0, 25, 50]
    first = orjson.loads(chunks[0].body.split(b"\n")[0])
    assert first == {"fullUrl": entries[0]["fullUrl"], "resource": entries[0]["resource"]}
    assert sum(ch.nbytes for ch in import_client.chunks([source], None, 25, 1)) == source.size
    # resuming after entry 30 starts at entry 31
    assert next(import_client.chunks([source], (0, 30), 25, 4)).first == 31


def test_summary_names_every_count() -> None:
    counts = {"read": 10, "created": 7, "updated": 1, "unchanged": 1, "rejected": 1}
    text = import_client.summary({"id": "j1", "status": "completed"}, counts, 75.0, 10, [], "e")
    assert "Import j1: completed" in text
    for name in ("read", "created", "updated", "unchanged", "rejected"):
        assert f"  {name}" in text
    assert "1 min 15.0 s" in text and "resources/s" in text and "(why: e)" in text
