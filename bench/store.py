"""Sanity figures for the embedded store (not a test): ``python -m bench.store``.

Prints inserts/s, conditional updates/s (the booking guard, sequential and as
200 concurrent bookers) and the gateway's hot query -- free cardiology slots in
a date range, sorted by start, first 20 -- over 50,000 slot documents, with and
without the index that serves it.

Latest figures (2026-11-26, 2 shared cores, Intel Xeon, Python 3.11, load average
2-2.5, runs alternated with the store as it was that morning): 55,000-58,000 inserts/s
(was 17,000-33,000/s), 38,000-45,000 conditional updates/s (12,000-26,000/s),
360,000 racing booking attempts/s (160,000-230,000/s), the query 0.09 ms median
indexed (unchanged), 30-35 ms by full scan.

``--resources N`` instead inserts N created Slots as the gateway writes them (its ten
``resources`` indexes, one outbox event), then a history version of each (a create
writes none since 2026-11-26: it is what an update or a deletion archives of the
version it supersedes) and prints the CPU per insert. 2026-11-26 (2 shared cores,
AMD EPYC, load average 3.5-4, 100,000 Slots, runs alternated): 50-55 -> 29-31 us per
insert into ``resources`` with the partial Appointment indexes and the leaner insert
path; a history version 9-11 us.

``--ops N`` instead prints the CPU per write of the waiting room's assignment shapes over
N waiting entries (the gateway's indexes): guards by ``_id`` with a string, an int, an
``$or`` or a dotted path, upserts of a missing document, an entry's status changes.
2026-11-26 (2 shared cores, AMD EPYC, load average 1.7-2.8, N = 20,000), before -> after
the guard fast path took numbers, paths and ``$or``, and the top-level upsert: {_id,
version: int} 9.3-9.6 -> 6.3-6.5 us, {_id, $or} 13.3-16.8 -> 8.7-8.9 us, assigning ->
assigned {claim.by} 47-60 -> 36-43 us, an upsert of a missing reminder 13.3 -> 10.8 us
(its insert 7 us); a status change (waiting -> assigning, three indexes) 33-35 us, of
which about 8 bisects of 1-1.5 us each (cache misses over the entries' tuples).

``--assign N`` instead prints the CPU of each store call of a waiting-room assignment
(``waiting_assign.assign_pair``: the Slot's read and new version with two events, its
history, the Appointment handed over, the entry's claim with its fields and its
assignment, the e-referral's claim) over N Slots, entries and e-referrals, and the
tracked objects an assignment leaves for the gc policy's young collection. 2026-11-26
(2 shared vCPUs, Intel Xeon, load average 1-2, N = 20,000, 8 alternated runs each),
before -> after the one-entry buckets, the remembered update shapes, ``a.b`` paths
without the writer and the flat prefixes: 215-294 (median 235) -> 196-225 (median 214)
us per assignment; best runs: Slot update 67 -> 57, claim 37 -> 34, assigned 38 -> 35,
e-referral 14 -> 12, Appointment 37 -> 36; 33.1 -> 22.1 tracked objects left per
assignment (their collection 15-20 -> 13-15 us).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from adapters.memory_store import MemoryStore
from gateway import constants as c
from gateway.events import event
from gateway.ports import Index
from gateway.schema import INDEXES as GATEWAY_INDEXES
from gateway.timeutil import to_store
from gateway.waiting_assign import CLAIMED_FIELDS

SLOTS = "slots"
INDEXES = {
    SLOTS: [
        Index((("type", 1), ("status", 1), ("category", 1), ("start", 1))),
        Index((("tenant", 1), ("start", 1))),
        Index((("tenant", 1), ("ext", 1)), unique=True),
    ]
}
CATEGORIES = ["cardiology", "dermatology", "neurology", "orthopedics", "ophthalmology"]
BASE = datetime(2026, 12, 1, tzinfo=UTC)


def slot(i: int, rng: random.Random) -> dict[str, Any]:
    start = BASE + timedelta(minutes=10 * rng.randrange(0, 90 * 24 * 6))
    return {
        "_id": f"slot-{i:06d}",
        "tenant": f"prov-{rng.randrange(40):02d}",
        "ext": f"e{i}",
        "type": "Slot",
        "status": "free" if rng.random() < 0.8 else "busy",
        "scope": rng.choice(["nfz", "private"]),
        "category": rng.choice(CATEGORIES),
        "start": to_store(start),
        "end": to_store(start + timedelta(minutes=10)),
        "postal_code": f"{rng.randrange(100):02d}-{rng.randrange(1000):03d}",
    }


def query(rng: random.Random) -> tuple[dict[str, Any], list[tuple[str, int]], int]:
    lo = BASE + timedelta(days=rng.randrange(0, 80))
    hi = lo + timedelta(days=7)
    return (
        {
            "type": "Slot",
            "status": "free",
            "category": "cardiology",
            "start": {"$gte": to_store(lo), "$lt": to_store(hi)},
        },
        [("start", 1)],
        20,
    )


async def time_query(store: MemoryStore, runs: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    times = []
    for _ in range(runs):
        filt, sort, limit = query(rng)
        t0 = time.perf_counter()
        found = await store.find(SLOTS, filt, sort=sort, limit=limit)
        times.append((time.perf_counter() - t0) * 1000)
        assert len(found) == limit
        assert [d["start"] for d in found] == sorted(d["start"] for d in found)
    return times


def ms(times: list[float]) -> str:
    q = statistics.quantiles(times, n=100, method="inclusive")
    return f"median {statistics.median(times):.3f} ms, p99 {q[98]:.3f} ms, max {max(times):.3f} ms"


def slot_resource(
    i: int, rng: random.Random
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A created Slot as ``resources.apply_put`` writes it (as ``bench.ingest`` posts
    them: one provider, schedule after schedule of 960 slots, random ids): the resource
    document, its outbox event, and the history version an update of it would archive."""
    tenant, rid, sch = "bench-provider", f"{rng.getrandbits(128):032x}", f"sch-{i // 960:04d}"
    start = BASE + timedelta(days=(i % 960) // 24, minutes=20 * (i % 24))
    at = to_store(BASE + timedelta(microseconds=i))
    ident = {"system": "http://example-vendor.pl/fhir/sid/slot", "value": f"SLOT-{i:07d}"}
    resource = {
        "resourceType": "Slot",
        "id": rid,
        "meta": {"versionId": "1", "lastUpdated": at},
        "identifier": [ident],
        "serviceType": [{"coding": [{"system": "urn:scope", "code": "cardiology"}]}],
        "appointmentType": {"coding": [{"system": "urn:category", "code": "first-stable"}]},
        "schedule": {"reference": f"Schedule/{sch}"},
        "status": "free",
        "start": start.isoformat(),
        "end": (start + timedelta(minutes=20)).isoformat(),
    }
    central = {
        "schedule_id": sch,
        "scope": "cardiology",
        "category": "first-stable",
        "start": to_store(start),
        "end": to_store(start + timedelta(minutes=20)),
        "status": "free",
        "overbooked": False,
        "comment": None,
        "identifiers": [ident],
        "location_id": "loc-1",
        "postal_code": "00-001",
        "city": "Warszawa",
    }
    key = f"{tenant}/Slot/{rid}"
    fields = {
        "tenant": tenant,
        "type": "Slot",
        "rid": rid,
        "version": 1,
        "last_updated": at,
        "deleted": False,
        "resource": resource,
        "central": central,
        "ident_keys": [f"{ident['system']}|{ident['value']}"],
        "last_msg": f"msg-{i}",
        "folded": {},
        "ident_key": f"{tenant}|Slot|{ident['system']}|{ident['value']}",
    }
    ev = event(
        "resource.Slot.created",
        {"type": "Slot", "id": rid, "version": 1, "channel": "fhir"},
        tenant=tenant,
        correlation_id=f"corr-{i}",
        now=BASE,
    )
    hist = {
        "_id": f"{key}/1",
        **{k: fields[k] for k in ("tenant", "type", "rid", "version", "last_updated")},
        "deleted": False,
        "resource": resource,
        "msg": f"msg-{i}",
    }
    return {"_id": key, **fields, "created": at}, ev, hist


async def resource_inserts(n: int) -> None:
    """CPU per insert of a created Slot into ``resources`` (the gateway's indexes) and of
    a history version (what an update archives), as the write path does them; automatic
    garbage collection off, as ``cer-gateway serve`` runs the embedded store
    (``gateway.gc_policy``)."""
    rng = random.Random(1)
    made = [slot_resource(i, rng) for i in range(n)]
    store = MemoryStore()
    await store.start(GATEWAY_INDEXES)
    gc.collect()
    gc.disable()
    try:
        t0 = time.process_time()
        for doc, ev, _ in made:
            await store.insert(c.RESOURCES, doc, events=[ev])
        dt = time.process_time() - t0
        t0 = time.process_time()
        for _, _, hist in made:
            await store.insert(c.HISTORY, hist)
        dh = time.process_time() - t0
    finally:
        gc.enable()
    print(
        f"resources: {n} Slots ({len(GATEWAY_INDEXES[c.RESOURCES])} indexes, one event each): "
        f"{dt / n * 1e6:.1f} us CPU per insert; history versions (an update's archive): "
        f"{dh / n * 1e6:.1f} us CPU per insert"
    )


async def _per_op(label: str, n: int, run: Any) -> None:
    """Run ``run(i)`` for i in 0..n (awaited) and print the CPU per call."""
    t0 = time.process_time()
    for i in range(n):
        await run(i)
    dt = time.process_time() - t0
    print(f"  {label}: {dt / n * 1e6:.1f} us CPU per operation ({n})")


async def write_ops(n: int) -> None:
    """CPU per write of the shapes the waiting room's assignment path makes, on the
    gateway's indexes (gateway/schema.py), automatic garbage collection off."""
    rng = random.Random(2)
    store = MemoryStore()
    await store.start(GATEWAY_INDEXES)
    for i in range(n):  # waiting-room entries as bench.waiting_room writes them
        eid = f"00000000-0000-4000-8000-{i:012d}"
        queue = "urgent" if rng.random() < 0.3 else "stable"
        at = to_store(BASE - timedelta(days=rng.random() * 90))
        await store.insert(
            c.WAITING_ROOM,
            {
                "_id": eid,
                "pesel": f"{i:011d}",
                "scope": "cardiology",
                "queue": queue,
                "referral": {"key": f"ref-{i}", "code": "1234"},
                "loc_key": rng.choice(["", "city:Warszawa", "city:Krakow", f"pc:{i % 100:02d}"]),
                "phone_key": f"48600{i:06d}",
                "status": "waiting",
                "active_key": f"cardiology|ref-{i}",
                "rank": f"{at}|{eid}",
                "entered_at": at,
                "rev": 1,
            },
        )
        await store.insert(
            c.REFERRALS,
            {
                "_id": f"ref-{i}",
                "pesel": f"{i:011d}",
                "scope": "cardiology",
                "status": "issued",
                "code": "1234",
                "appointment_id": None,
            },
        )
    for i in range(n):
        await store.insert("plain", {"_id": f"p{i}", "version": 1, "status": "a", "n": i})
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(n)]
    gc.collect()
    gc.disable()
    try:
        print(f"write shapes ({n} waiting entries, referrals and plain documents):")
        await _per_op(
            "insert (no index)",
            n,
            lambda i: store.insert("plain2", {"_id": f"q{i}", "version": 1, "status": "a", "n": i}),
        )
        await _per_op(
            "update {_id, status: str} (no index)",
            n,
            lambda i: store.update_one(
                "plain", {"_id": f"p{i}", "status": "a"}, {"$set": {"status": "b"}}
            ),
        )
        await _per_op(
            "update {_id, version: int} (no index)",
            n,
            lambda i: store.update_one(
                "plain", {"_id": f"p{i}", "version": 1}, {"$set": {"version": 2}}
            ),
        )
        await _per_op(
            "upsert of a missing _id ($setOnInsert)",
            n,
            lambda i: store.update_one(
                "plain3",
                {"_id": f"u{i}"},
                {"$setOnInsert": {"through": "x", "lease": None}},
                upsert=True,
            ),
        )
        reminder = {
            "tenant": "t",
            "appointment_id": "a",
            "kind": "24h",
            "start": "s",
            "due": "d",
            "status": "pending",
        }
        await _per_op(
            "insert of a reminder (2 indexes)",
            n,
            lambda i: store.insert(c.REMINDERS, {"_id": f"r{i}", **reminder}),
        )
        await _per_op(
            "upsert of a missing reminder ($set, 2 indexes)",
            n,
            lambda i: store.update_one(
                c.REMINDERS, {"_id": f"u{i}"}, {"$set": reminder}, upsert=True
            ),
        )
        await _per_op(
            "update {_id, $or: [{status}, {appointment_id}]}",
            n,
            lambda i: store.update_one(
                c.REFERRALS,
                {"_id": f"ref-{i}", "$or": [{"status": "issued"}, {"appointment_id": "g"}]},
                {"$set": {"status": "booked", "appointment_id": "g"}},
            ),
        )
        await _per_op(
            "entry waiting -> assigning (claim)",
            n,
            lambda i: store.update_one(
                c.WAITING_ROOM,
                {"_id": ids[i], "status": "waiting"},
                {
                    "$set": {"status": "assigning", "claim": {"by": f"m{i}", "slot": "s"}},
                    "$inc": {"rev": 1},
                },
            ),
        )
        await _per_op(
            "entry assigning -> assigned ({claim.by})",
            n,
            lambda i: store.update_one(
                c.WAITING_ROOM,
                {"_id": ids[i], "status": "assigning", "claim.by": f"m{i}"},
                {
                    "$set": {
                        "status": "assigned",
                        "appointment": "a",
                        "slot": "s",
                        "assigned_at": "t",
                        "updated_at": "t",
                    },
                    "$unset": {"active_key": "", "claim": "", "proposal": ""},
                    "$inc": {"rev": 1},
                },
            ),
        )
    finally:
        gc.enable()


def _assignment_docs(i: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A free Slot (the resource document as the write path stores it), a waiting-room
    entry and its e-referral, as ``bench.waiting_room`` writes them."""
    tenant, rid = f"wr-bench-{i % 50:03d}", f"s{i}"
    start = BASE + timedelta(minutes=5 * (i % 144))
    at = to_store(BASE - timedelta(days=30))
    resource = {
        "resourceType": "Slot",
        "id": rid,
        "serviceType": [{"coding": [{"system": "urn:scope", "code": "cardiology"}]}],
        "appointmentType": {"coding": [{"system": "urn:category", "code": "first-stable"}]},
        "schedule": {"reference": "Schedule/sch"},
        "status": "free",
        "start": start.isoformat(),
        "end": (start + timedelta(minutes=5)).isoformat(),
        "meta": {"versionId": "1", "lastUpdated": at},
    }
    slot_doc = {
        "_id": f"{tenant}/Slot/{rid}",
        "tenant": tenant,
        "type": "Slot",
        "rid": rid,
        "version": 1,
        "last_updated": at,
        "deleted": False,
        "resource": resource,
        "central": {
            "schedule_id": "sch",
            "scope": "cardiology",
            "category": "first-stable",
            "start": to_store(start),
            "end": to_store(start + timedelta(minutes=5)),
            "status": "free",
            "overbooked": False,
            "comment": None,
            "identifiers": [],
            "location_id": "loc",
            "postal_code": "90-001",
            "city": "Łódź",
            "appointment_id": None,
        },
        "ident_keys": [],
        "last_msg": f"msg-{i}",
        "folded": {},
        "created": at,
    }
    eid = f"00000000-0000-4000-8000-{i:012d}"
    ref = f"B{i:019d}"
    entered = to_store(BASE - timedelta(days=60, seconds=i))
    entry = {
        "_id": eid,
        "pesel": f"{i:011d}",
        "scope": "cardiology",
        "queue": "stable",
        "privileged": False,
        "referral": {"key": ref, "code": "1234"},
        "criteria": {
            "from": None,
            "to": None,
            "weekdays": [],
            "hours": [660, 900],
            "postal_code": None,
            "city": "Łódź",
            "facility": None,
        },
        "loc_key": "city|łódź",
        "criteria_input": {"city": "Łódź", "hours": "11:00-15:00"},
        "contact": {"phone": f"+48600{i:06d}", "email": None},
        "phone_key": f"48600{i:06d}",
        "status": "waiting",
        "active_key": f"cardiology|{ref}",
        "queued_at": entered,
        "rank": f"{entered}|{eid}",
        "entered_at": entered,
        "updated_at": entered,
        "channel": "portal",
        "gave_up": [],
        "rev": 1,
    }
    referral = {
        "_id": ref,
        "key": ref,
        "code": "1234",
        "pesel": f"{i:011d}",
        "scope": "cardiology",
        "category": "stable",
        "privileged": False,
        "status": "issued",
        "appointment_id": None,
        "issued": at,
    }
    return slot_doc, entry, referral


def _assignment_writes(i: int, slot: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """What one assignment writes (``waiting_assign.assign_pair``), built beforehand."""
    now = to_store(BASE + timedelta(seconds=i))
    tenant, rid = slot["tenant"], slot["rid"]
    appt_rid = f"wra-{i:028x}"
    appt_gid = f"{tenant}~{appt_rid}"
    msg = f"wru-{i:032x}/{i}"
    corr = "unlock-cardiology"
    central = slot["central"]
    resource = {
        **slot["resource"],
        "status": "busy",
        "meta": {"versionId": "2", "lastUpdated": now},
    }
    appointment = {
        "resourceType": "Appointment",
        "id": appt_rid,
        "status": "booked",
        "serviceType": slot["resource"]["serviceType"],
        "appointmentType": slot["resource"]["appointmentType"],
        "start": slot["resource"]["start"],
        "end": slot["resource"]["end"],
        "slot": [{"reference": f"Slot/{rid}"}],
        "basedOn": [{"identifier": {"system": "urn:e-referral", "value": "B:1234"}}],
        "participant": [
            {
                "actor": {"type": "Patient", "identifier": {"system": "urn:pesel", "value": "1"}},
                "required": "required",
                "status": "accepted",
            }
        ],
        "meta": {"versionId": "1", "lastUpdated": now},
    }
    appt_doc = {
        "_id": f"{tenant}/Appointment/{appt_rid}",
        "tenant": tenant,
        "type": "Appointment",
        "rid": appt_rid,
        "version": 1,
        "last_updated": now,
        "deleted": False,
        "resource": appointment,
        "central": {
            "status": "booked",
            "slot_ids": [rid],
            "start": central["start"],
            "end": central["end"],
            "scope": "cardiology",
            "category": "first-stable",
            "patient_pesel": entry["pesel"],
            "referral": dict(entry["referral"]),
            "cancel_reason": None,
            "cancel_note": None,
            "cancelled_at": None,
            "channel": "waiting-room",
            "booked_at": now,
            "cancel_channel": None,
            "contact": dict(entry["contact"]),
            "privileged": False,
            "requested_period": [],
            "comment": None,
            "identifiers": [],
        },
        "ident_keys": [],
        "last_msg": f"{msg}/0",
        "folded": {},
        "created": now,
    }

    def ev(kind: str, body: dict[str, Any], tenant: str) -> dict[str, Any]:
        return event(kind, body, tenant=tenant, correlation_id=corr, now=BASE)

    return {
        "claim": (
            {"_id": entry["_id"], "status": "waiting"},
            {
                "$set": {
                    "status": "assigning",
                    "claim": {"by": msg, "slot": f"{tenant}~{rid}", "real": 1795694692.0 + i},
                },
                "$inc": {"rev": 1},
            },
        ),
        "referral": (
            {
                "_id": entry["referral"]["key"],
                "status": "issued",
                "code": "1234",
                "pesel": entry["pesel"],
                "scope": "cardiology",
            },
            {"$set": {"status": "booked", "appointment_id": appt_gid}},
        ),
        "history": {
            "_id": f"{slot['_id']}/1",
            **{k: slot[k] for k in ("tenant", "type", "rid", "version", "last_updated")},
            "deleted": False,
            "resource": slot["resource"],
            "msg": slot["last_msg"],
        },
        "slot": (
            {"_id": slot["_id"], "version": 1},
            {
                "$set": {
                    "version": 2,
                    "last_updated": now,
                    "resource": resource,
                    "central.status": "busy",
                    "central.appointment_id": appt_rid,
                    "last_msg": f"{msg}/0/hold",
                }
            },
            [
                ev("resource.Slot.updated", {"type": "Slot", "id": rid, "version": 2}, tenant),
                ev("booking.booked", {"appointment_id": appt_rid, "slot_id": rid}, tenant),
            ],
        ),
        "appointment": (
            appt_doc,
            [ev("resource.Appointment.created", {"type": "Appointment", "id": appt_rid}, tenant)],
        ),
        "assigned": (
            {"_id": entry["_id"], "status": "assigning", "claim.by": msg},
            {
                "$set": {
                    "status": "assigned",
                    "appointment": appt_gid,
                    "slot": f"{tenant}~{rid}",
                    "assigned_at": now,
                    "updated_at": now,
                },
                "$unset": {"active_key": "", "claim": "", "proposal": ""},
                "$inc": {"rev": 1},
            },
            [ev("waiting-room.changed", {"entry": entry["_id"]}, "cer-waiting-room")],
        ),
    }


ASSIGN_STEPS = ("get", "claim", "referral", "slot", "history", "appointment", "assigned")


async def assignments(n: int) -> None:
    """CPU per store call of one waiting-room assignment (``waiting_assign.assign_pair``
    as the unlock makes it: the Slot's read, the entry's claim with its ``fields``, the
    e-referral's claim, the Slot's new version with two events, its old version into the
    history, the Appointment handed over, the entry assigned), over ``n`` Slots, entries
    and e-referrals; garbage collection off. Also the tracked objects an assignment
    leaves behind (what the gc policy's next young collection visits)."""
    store = MemoryStore()
    await store.start(GATEWAY_INDEXES)
    made = [_assignment_docs(i) for i in range(n)]
    for slot_doc, entry, referral in made:
        await store.insert(c.RESOURCES, slot_doc, handover=True)
        await store.insert(c.WAITING_ROOM, entry)
        await store.insert(c.REFERRALS, referral)
    await store.clear_events(await store.pending_events(limit=0))
    writes = [_assignment_writes(i, s, e) for i, (s, e, _) in enumerate(made)]
    spent = dict.fromkeys(ASSIGN_STEPS, 0)
    clock = time.process_time_ns
    gc.collect()
    gc.disable()
    try:
        young = len(gc.get_objects(0))
        for i, w in enumerate(writes):
            slot_id = made[i][0]["_id"]
            t0 = clock()
            await store.get(c.RESOURCES, slot_id)
            t1 = clock()
            got = await store.update_one(c.WAITING_ROOM, *w["claim"], fields=CLAIMED_FIELDS)
            t2 = clock()
            assert got is not None
            done = await store.update_one(c.REFERRALS, *w["referral"], fields=())
            t3 = clock()
            assert done is not None
            filt, upd, evs = w["slot"]
            done = await store.update_one(c.RESOURCES, filt, upd, events=evs, fields=())
            t4 = clock()
            assert done is not None
            await store.insert(c.HISTORY, w["history"], handover=True)
            t5 = clock()
            doc, evs = w["appointment"]
            await store.insert(c.RESOURCES, doc, events=evs, handover=True)
            t6 = clock()
            filt, upd, evs = w["assigned"]
            done = await store.update_one(c.WAITING_ROOM, filt, upd, events=evs, fields=())
            t7 = clock()
            assert done is not None
            w.clear()  # what the caller drops
            for step, dt in zip(
                ASSIGN_STEPS,
                (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6),
                strict=True,
            ):
                spent[step] += dt
            if i % 100 == 99:  # the outbox relay's part, untimed
                await store.clear_events(await store.pending_events(limit=0))
        # what the gc policy's young collection visits: the tracked objects made since
        # the last one (everything older is frozen)
        tracked = len(gc.get_objects(0)) - young
        t0 = clock()
        gc.collect(1)
        collect = clock() - t0
    finally:
        gc.enable()
    total = sum(spent.values())
    print(f"one assignment's store calls ({n} Slots, entries and e-referrals):")
    for step in ASSIGN_STEPS:
        print(f"  {step}: {spent[step] / n / 1e3:.1f} us CPU")
    print(
        f"  total: {total / n / 1e3:.1f} us CPU per assignment; "
        f"{tracked / n:.1f} tracked objects left per assignment, "
        f"their young collection {collect / n / 1e3:.1f} us"
    )


async def main(n: int, updates: int, resources: int, ops: int = 0, assign: int = 0) -> None:
    print(
        f"machine: nproc={os.cpu_count()} python={platform.python_version()} "
        f"({platform.python_implementation()}) {platform.system()} {platform.machine()}"
    )
    if resources:
        await resource_inserts(resources)
        return
    if ops:
        await write_ops(ops)
        return
    if assign:
        await assignments(assign)
        return
    rng = random.Random(1)
    docs = [slot(i, rng) for i in range(n)]

    store = MemoryStore()
    await store.start(INDEXES)
    t0 = time.perf_counter()
    for d in docs:
        await store.insert(SLOTS, d)
    dt = time.perf_counter() - t0
    print(f"inserts: {n} slot docs (3 indexes) in {dt:.2f} s = {n / dt:,.0f}/s")

    ids = [d["_id"] for d in docs]
    picks = [rng.choice(ids) for _ in range(updates)]
    t0 = time.perf_counter()
    won = 0
    for i, sid in enumerate(picks):
        res = await store.update_one(
            SLOTS,
            {"_id": sid, "status": "free"},
            {"$set": {"status": "busy", "by": i}},
            events=[{"id": f"ev-{i}", "type": "booking.made", "body": {"slot": sid}}],
        )
        won += res is not None
    dt = time.perf_counter() - t0
    print(
        f"conditional updates: {updates} in {dt:.2f} s = {updates / dt:,.0f}/s "
        f"({won} won, {updates - won} found the slot taken), with one outbox event each"
    )
    items = await store.pending_events(limit=0)
    await store.clear_events(items)

    free = [d["_id"] for d in docs if d["status"] == "free"][:200]
    for sid in free:  # make them free again for the race
        await store.update_one(SLOTS, {"_id": sid}, {"$set": {"status": "free"}})

    async def booker(i: int) -> int:
        wins = 0
        for sid in free:
            res = await store.update_one(
                SLOTS, {"_id": sid, "status": "free"}, {"$set": {"status": "busy", "by": i}}
            )
            wins += res is not None
        return wins

    t0 = time.perf_counter()
    wins = await asyncio.gather(*(booker(i) for i in range(200)))
    dt = time.perf_counter() - t0
    total = 200 * len(free)
    print(
        f"200 concurrent bookers x {len(free)} slots: {total} attempts in {dt:.2f} s "
        f"= {total / dt:,.0f}/s, {sum(wins)} winners (one per slot: {sum(wins) == len(free)})"
    )

    times = await time_query(store, 2000, seed=5)
    print(f"query (free cardiology, 7-day range, sort start, limit 20), indexed: {ms(times)}")

    plain = MemoryStore()
    await plain.start({SLOTS: []})
    for d in await store.find(SLOTS, {}):
        await plain.insert(SLOTS, d)
    times = await time_query(plain, 20, seed=5)
    print(f"same query without indexes (full scan):                     {ms(times)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=50_000)
    parser.add_argument("--updates", type=int, default=20_000)
    parser.add_argument(
        "--resources",
        type=int,
        default=0,
        help="instead: insert this many created Slots with the gateway's indexes "
        "(gateway/schema.py) and print the CPU per insert",
    )
    parser.add_argument(
        "--ops",
        type=int,
        default=0,
        help="instead: the CPU per write of the waiting room's assignment shapes "
        "(conditional updates, an upsert, an $or, an entry's status changes) over this "
        "many entries",
    )
    parser.add_argument(
        "--assign",
        type=int,
        default=0,
        help="instead: the CPU per store call of a waiting-room assignment (the Slot's "
        "read and new version, its history, the Appointment, the entry's and the "
        "e-referral's claims) over this many Slots and entries",
    )
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.docs, args.updates, args.resources, args.ops, args.assign)))
