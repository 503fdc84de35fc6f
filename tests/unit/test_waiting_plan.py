"""The nightly unlock's plan on the embedded store (``WaitingRoomService.plan_days``,
R-SCHED-6, R-WAIT-3, R-WAIT-5): the pairs it sends are the rule's, read slot by slot
(each free slot of the unlocked days, earliest first, to the best-ranked waiting entry
left that takes it), in the order the entries rank, chunked per provider; and it reads
only the entries whose list of slots still has some."""

from __future__ import annotations

import asyncio
import random
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from adapters.clock import SandboxClock
from adapters.memory_bus import MemoryBus
from adapters.memory_store import MemoryStore
from gateway import constants as c
from gateway import waiting_rules as rules
from gateway import waiting_service as ws
from gateway.metrics import Metrics
from gateway.schema import INDEXES
from gateway.settings import Settings
from gateway.timeutil import to_store
from mappings import codes

WARSAW = ZoneInfo("Europe/Warsaw")
FIRST, LAST = date(2027, 2, 15), date(2027, 2, 17)  # Monday to Wednesday
# MIN_NOTICE (72 h) after ``NOW`` is Monday 08:00: earlier slots of the first day stay out
NOW = datetime(2027, 2, 12, 8, 0, tzinfo=WARSAW)
PLACES = [
    ("p1", "loc", "Kraków", "31-147"),
    ("p1", "loc2", "Kraków", "31-200"),
    ("p2", "g1", "Gdańsk", "80-001"),
    ("p3", "w1", "Warszawa", "00-950"),
]


def slot_doc(rng: random.Random, n: int, places: list[tuple[str, ...]] = PLACES) -> dict[str, Any]:
    tenant, loc, city, postal = rng.choice(places)
    day = FIRST + timedelta(days=rng.randint(-1, 3))  # some before and after the days
    start = datetime(day.year, day.month, day.day, rng.randint(6, 18), 0, tzinfo=WARSAW)
    start += timedelta(minutes=rng.choice([0, 20, 40]))
    central: dict[str, Any] = {
        "scope": "cardiology" if rng.random() < 0.95 else "other",
        "start": to_store(start),
        "status": "free",
        "category": rng.choice(["first-stable", "first-urgent", None, "control"]),
        "location_id": loc,
        "city": city,
        "postal_code": postal,
    }
    r = rng.random()
    if r < 0.05:
        central["status"] = "busy"
    elif r < 0.1:
        central["hold"] = {"entry": "x"}
    elif r < 0.13:
        central["appointment_id"] = "a1"
    rid = f"s{n:03d}"
    return {
        "_id": f"{tenant}/Slot/{rid}",
        "tenant": tenant,
        "type": "Slot",
        "rid": rid,
        "deleted": rng.random() < 0.03,
        "central": central,
    }


def entry_doc(rng: random.Random, n: int, places: list[tuple[str, ...]] = PLACES) -> dict[str, Any]:
    tenant, loc, city, postal = rng.choice(places)
    crit: dict[str, Any] = {
        "from": None,
        "to": None,
        "weekdays": [],
        "hours": None,
        "postal_code": None,
        "city": None,
        "facility": None,
    }
    pick = rng.random()
    if pick < 0.25:
        crit["city"] = rng.choice([city, city.upper()])
    elif pick < 0.45:
        crit["postal_code"] = postal[: rng.randint(1, 6)]
    elif pick < 0.6:
        crit["facility"] = [rng.choice([None, tenant]), loc]
    if rng.random() < 0.15:
        crit["city"] = city  # a second location criterion
    if rng.random() < 0.3:
        crit["weekdays"] = sorted(rng.sample(range(1, 8), rng.randint(1, 3)))
    if rng.random() < 0.3:
        lo = rng.randint(6, 15)
        crit["hours"] = [lo * 60, (lo + rng.randint(1, 4)) * 60]
    if rng.random() < 0.1:
        crit["from"] = to_store(datetime(2027, 2, 16, 10, 0, tzinfo=WARSAW))
    if rng.random() < 0.1:
        crit["to"] = to_store(datetime(2027, 2, 16, 12, 0, tzinfo=WARSAW))
    queue = rng.choice(["stable", "urgent"])
    eid = f"e{n:04d}"
    queued = datetime(2026, 11, 1, tzinfo=WARSAW) + timedelta(minutes=rng.randrange(100_000))
    return {
        "_id": eid,
        "scope": "cardiology" if rng.random() < 0.95 else "other",
        "status": rng.choice([rules.WAITING] * 8 + [rules.ASSIGNED, rules.LEFT]),
        "queue": queue,
        "rank": rules.rank_of(
            eid,
            queued,
            queue,
            rng.random() < 0.1,
            urgent_credit=timedelta(days=60),
            privileged_credit=timedelta(days=30),
        ),
        "criteria": crit,
        "loc_key": rules.location_key(crit),
        "gave_up": [f"p1~s{rng.randrange(60):03d}"] if rng.random() < 0.1 else [],
    }


def expected_commands(
    slot_docs: list[dict[str, Any]], entry_docs: list[dict[str, Any]], chunk: int
) -> list[tuple[str, list[list[str]]]]:
    """The rule, slot by slot, then sent as ``plan_days`` sends: the pairs in the order
    their entries rank, per provider in chunks (the rest at the end, first served first)."""
    notice = to_store(NOW + rules.MIN_NOTICE)
    slots = [
        rules.slot_facts(d)
        for d in slot_docs
        if d["central"]["scope"] == "cardiology"
        and not d["deleted"]
        and d["central"]["status"] == "free"
        and not d["central"].get("hold")
        and d["central"].get("appointment_id") is None
        and rules.queues_for(d["central"]["category"])
        and d["central"]["start"] > notice
        and FIRST <= rules.slot_facts(d).day <= LAST
    ]
    left = sorted(
        (
            rules.entry_facts(d)
            for d in entry_docs
            if d["scope"] == "cardiology" and d["status"] == rules.WAITING
        ),
        key=lambda e: e.rank,
    )
    pairs = []
    for s in sorted(slots, key=lambda s: (s.start, s.tenant, s.rid)):
        e = rules.best_candidate(left, s)
        if e is not None:
            pairs.append((s, e))
            left.remove(e)
    pairs.sort(key=lambda p: p[1].rank)
    out: list[tuple[str, list[list[str]]]] = []
    parts: dict[str, list[list[str]]] = {}
    for s, e in pairs:
        parts.setdefault(s.tenant, []).append([s.rid, e.id])
        if len(parts[s.tenant]) >= chunk:
            out.append((s.tenant, parts.pop(s.tenant)))
    out += list(parts.items())
    return out


async def planned(
    slot_docs: list[dict[str, Any]],
    entry_docs: list[dict[str, Any]],
    store: MemoryStore | None = None,
) -> tuple[list[tuple[str, list[list[str]]]], int]:
    """The commands ``plan_days`` sends over these documents (in ``store``, a new
    embedded store by default), and how many pairs it planned."""
    store = store or MemoryStore()
    await store.start(INDEXES)
    for d in slot_docs:
        await store.insert(c.RESOURCES, d)
    for d in entry_docs:
        await store.insert(c.WAITING_ROOM, d)
    clock = SandboxClock()
    bus = MemoryBus(clock, partitions=1, retry_delays=(), prefetch=1)  # never started
    service = ws.WaitingRoomService(store, bus, clock, Settings(), Metrics())
    sent: list[tuple[str, list[list[str]]]] = []

    async def send(kind: str, body: dict[str, Any], tenant: str, msg_id: str, corr: str) -> None:
        assert kind == "waiting-room.assign" and body["reason"] == "unlock"
        sent.append((tenant, body["pairs"]))

    service.send = send  # type: ignore[method-assign]
    n = await service.plan_days(codes.scopes()["cardiology"], FIRST, LAST, NOW)
    return sent, n


@pytest.mark.parametrize("seed", range(12))
async def test_the_unlock_plan_is_the_rule_slot_by_slot_r_wait_5(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small pages and chunks: entries come in many pages per queue, merged, with lists
    # used up between them; each provider's pairs go out in several commands.
    monkeypatch.setattr(ws.RankedEntries, "PAGE", 3 + seed % 4)
    monkeypatch.setattr(ws, "CHUNK", 4)
    rng = random.Random(seed)
    slot_docs = [slot_doc(rng, n) for n in range(rng.randint(20, 60))]
    entry_docs = [entry_doc(rng, n) for n in range(rng.randint(40, 160))]
    sent, n = await planned(slot_docs, entry_docs)
    expected = expected_commands(slot_docs, entry_docs, 4)
    assert sent == expected
    assert n == sum(len(pairs) for _, pairs in expected) > 0


async def test_the_unlock_plan_with_more_places_than_one_look_takes_r_wait_5(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With many places the entries' location keys are more than one indexed look takes
    on the embedded store: the plan is still the rule."""
    monkeypatch.setattr(ws.RankedEntries, "PAGE", 25)
    places = [(f"p{k}", "loc", f"City{k % 7}", f"{k % 90:02d}-{k:03d}") for k in range(150)]
    rng = random.Random(99)
    slot_docs = [slot_doc(rng, n, places) for n in range(400)]
    entry_docs = [entry_doc(rng, n, places) for n in range(900)]
    sent, n = await planned(slot_docs, entry_docs)
    assert sent == expected_commands(slot_docs, entry_docs, ws.CHUNK)
    assert n > 100


async def test_the_plan_reads_only_entries_whose_list_has_slots_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Entries waiting for places without a slot that night, or whose places' slots are
    all taken, are not read (at the bench's default most entries are such)."""
    monkeypatch.setattr(ws.RankedEntries, "PAGE", 10)
    rng = random.Random(1)
    slot_docs = []
    for n in range(3):
        d = slot_doc(rng, n)
        d.update(_id=f"p1/Slot/{d['rid']}", tenant="p1", deleted=False)
        d["central"].update(
            scope="cardiology",
            status="free",
            category="first-stable",
            location_id="loc",
            city="Kraków",
            postal_code="31-147",
            start=to_store(datetime(2027, 2, 16, 9, 20 * n, tzinfo=WARSAW)),
        )
        d["central"].pop("hold", None)
        d["central"].pop("appointment_id", None)
        slot_docs.append(d)
    entry_docs = []
    for n in range(400):
        d = entry_doc(rng, n)
        d.update(scope="cardiology", status=rules.WAITING, queue="stable", gave_up=[])
        crit = {**d["criteria"], "weekdays": [], "hours": None, "from": None, "to": None}
        crit.update(city=None, postal_code=None, facility=None)
        if n % 100 == 50:
            crit["city"] = "Kraków"  # four takers for three slots, among ...
        else:
            crit["city"] = "Gdańsk"  # ... entries for a place without slots
        d.update(criteria=crit, loc_key=rules.location_key(crit))
        entry_docs.append(d)
    read: list[int] = []

    class Counting(MemoryStore):
        async def find(self, coll: str, filter: Any, **kw: Any) -> Any:
            found = await super().find(coll, filter, **kw)
            if coll == c.WAITING_ROOM:
                read.append(len(found))
            return found

    sent, n = await planned(slot_docs, entry_docs, Counting())
    assert n == 3
    takers = sorted(
        (d for d in entry_docs if d["criteria"]["city"] == "Kraków"), key=lambda d: d["rank"]
    )
    assert [e for _, e in sent[0][1]] == [d["_id"] for d in takers[:3]]
    assert sum(read) <= 4  # the Kraków entries; not one of the 396 for Gdańsk


def test_every_queue_an_entry_can_be_in_is_named_in_queues() -> None:
    mediums = {info.medical_category for info in codes.slot_categories().values()}
    for medical in [*mediums, None, "urgent", "stable", "unknown"]:
        assert rules.queue_of(medical) in rules.QUEUES


async def test_the_estimate_reads_the_active_entries_by_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """R-WAIT-5's estimate reads a scope's active entries: through the (scope, status,
    queue, rank) index, so the assigned and closed entries that pile up over the months
    are not read; the same entries, in rank order, as a scan finds."""
    from adapters import memory_store
    from gateway import waiting_estimate as est

    rng = random.Random(11)
    store = MemoryStore()
    await store.start(INDEXES)
    docs = [entry_doc(rng, n) for n in range(600)]
    for n, d in enumerate(docs):
        if n % 5:  # most are done: assigned or left long ago
            d["status"] = rng.choice([rules.ASSIGNED, rules.LEFT])
        await store.insert(c.WAITING_ROOM, d)
    plans: list[Any] = []
    real_plan = memory_store._plan

    def recording(coll: Any, cons: Any, sort: Any, want: int) -> Any:
        found = real_plan(coll, cons, sort, want)
        if coll is store._colls[c.WAITING_ROOM]:
            plans.append(found)
        return found

    monkeypatch.setattr(memory_store, "_plan", recording)
    snap = await est.load_snapshot(store, "cardiology", NOW, timedelta(minutes=10))
    active = [d for d in docs if d["scope"] == "cardiology" and d["status"] in rules.ACTIVE]
    assert plans and plans[0] is not None and plans[0].count == len(active)
    got = sorted((q, e.id) for q, entries in snap.queues.items() for e in entries)
    assert got == sorted((d["queue"], d["_id"]) for d in active)
    for entries in snap.queues.values():
        ranks = [e.rank for e in entries]
        assert ranks == sorted(ranks)


async def test_the_plan_lets_the_event_loop_run_between_its_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The embedded store never suspends: the plan yields between reading the slots and
    building their lists (as after each page of entries), so API requests and the
    bookings already sent run meanwhile."""
    rng = random.Random(4)
    slot_docs = [slot_doc(rng, n) for n in range(60)]
    entry_docs = [entry_doc(rng, n) for n in range(200)]
    ticks = 0
    stop = False
    seen: dict[str, int] = {}

    async def ticker() -> None:
        nonlocal ticks
        while not stop:
            ticks += 1
            await asyncio.sleep(0)

    class Watched(MemoryStore):
        async def find(self, coll: str, filter: Any, **kw: Any) -> Any:
            found = await super().find(coll, filter, **kw)
            if coll == c.RESOURCES and filter.get("type") == "Slot":
                seen["slots read"] = ticks
            return found

    planner_init = ws.Planner.__init__

    def watched_init(self: Any, slots: Any) -> None:
        seen["lists built"] = ticks
        planner_init(self, slots)

    monkeypatch.setattr(ws.Planner, "__init__", watched_init)
    task = asyncio.create_task(ticker())
    try:
        _, n = await planned(slot_docs, entry_docs, Watched())
    finally:
        stop = True
        await task
    assert n > 0
    assert seen["lists built"] > seen["slots read"]
