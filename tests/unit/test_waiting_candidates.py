"""The look for a slot's best-ranked taker (``waiting_assign.find_best``) on the embedded store.

It reads only the entries whose location criterion the slot meets (``loc_key``,
R-WAIT-5); entries stored before ``loc_key`` existed get it when the waiting room
starts, so none is skipped.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from adapters.clock import SandboxClock
from adapters.memory_bus import MemoryBus
from adapters.memory_store import MemoryStore
from gateway import constants as c
from gateway import waiting_assign as assign
from gateway import waiting_rules as rules
from gateway.metrics import Metrics
from gateway.schema import INDEXES
from gateway.settings import Settings
from gateway.timeutil import to_store
from gateway.waiting_service import WaitingRoomService
from mappings import codes

SLOT = {
    "tenant": "p1",
    "rid": "s1",
    "central": {
        "start": to_store(datetime(2027, 2, 15, 9, 0, tzinfo=UTC)),  # a Monday, 10:00 Warsaw
        "category": "first-stable",
        "location_id": "loc",
        "city": "Kraków",
        "postal_code": "31-147",
        "status": "free",
    },
}


def entry_doc(n: int, criteria: dict[str, Any], *, with_key: bool = True) -> dict[str, Any]:
    crit = {
        "from": None,
        "to": None,
        "weekdays": [],
        "hours": None,
        "postal_code": None,
        "city": None,
        "facility": None,
        **criteria,
    }
    doc = {
        "_id": f"e{n:04d}",
        "scope": "cardiology",
        "status": rules.WAITING,
        "queue": "stable",
        "rank": f"2027-01-01T00:00:{n:02d}.000Z|e{n:04d}",
        "pesel": f"p{n}",
        "criteria": crit,
        "gave_up": [],
    }
    if with_key:
        doc["loc_key"] = rules.location_key(crit)
    return doc


async def store_with(docs: list[dict[str, Any]]) -> MemoryStore:
    store = MemoryStore()
    await store.start(INDEXES)
    for d in docs:
        await store.insert(c.WAITING_ROOM, d)
    return store


async def test_the_best_ranked_taker_behind_many_who_want_another_place_r_wait_5() -> None:
    # 300 better-ranked entries want Gdańsk, or Kraków on Tuesdays: the first taker of a
    # Monday slot in Kraków is found, and an earlier one who takes it wins over a later.
    docs = [entry_doc(n, {"city": "Gdańsk"}) for n in range(0, 200)]
    docs += [entry_doc(n, {"city": "Kraków", "weekdays": [2]}) for n in range(200, 300)]
    docs += [entry_doc(300, {"postal_code": "31"}), entry_doc(301, {"facility": [None, "loc"]})]
    store = await store_with(docs)
    facts = rules.slot_facts(SLOT)
    found = await assign.find_best(store, facts, "cardiology")
    assert isinstance(found, dict) and found["_id"] == "e0300"
    found = await assign.find_best(store, facts, "cardiology", exclude={"e0300"})
    assert isinstance(found, dict) and found["_id"] == "e0301"
    assert await assign.find_best(store, facts, "cardiology", exclude={"e0300", "e0301"}) is None


async def test_entries_stored_without_a_location_key_get_one_at_start() -> None:
    docs = [
        entry_doc(1, {"city": "Kraków"}, with_key=False),
        entry_doc(2, {}, with_key=False),
        entry_doc(3, {"facility": ["p1", "loc"]}),
    ]
    store = await store_with(docs)
    facts = rules.slot_facts(SLOT)
    # Before: the entry without a key is not seen by the look (why the backfill exists).
    found = await assign.find_best(store, facts, "cardiology")
    assert isinstance(found, dict) and found["_id"] == "e0003"
    settings = Settings()
    clock = SandboxClock()
    bus = MemoryBus(clock, partitions=1, retry_delays=(), prefetch=1)  # never started
    service = WaitingRoomService(store, bus, clock, settings, Metrics())
    assert await service.backfill_location_keys() == 2
    assert await service.backfill_location_keys() == 0  # done once
    e1 = await store.get(c.WAITING_ROOM, "e0001")
    e2 = await store.get(c.WAITING_ROOM, "e0002")
    assert e1 is not None and e1["loc_key"] == "city|kraków"
    assert e2 is not None and e2["loc_key"] == ""
    found = await assign.find_best(store, facts, "cardiology")
    assert isinstance(found, dict) and found["_id"] == "e0001"


async def test_a_new_slot_the_waiting_room_cannot_take_now_is_not_read() -> None:
    """``resource.Slot.created`` carries the slot's facts (resources.SLOT_EVENT_FACTS): a
    slot beyond the booking window (or closed, or of a scope without a waiting room) is
    decided on the event alone; one it could take is read to check the stored version."""
    from gateway.events import event, event_envelope
    from gateway.resources import SLOT_EVENT_FACTS

    reads: list[str] = []

    class CountingStore(MemoryStore):
        async def get(
            self, coll: str, doc_id: str, fields: Any = None, *, shared: bool = False
        ) -> Any:
            reads.append(doc_id)
            return await super().get(coll, doc_id, fields, shared=shared)

    store = CountingStore()
    await store.start(INDEXES)
    clock = SandboxClock()
    bus = MemoryBus(clock, partitions=1, retry_delays=(), prefetch=1)  # never started
    service = WaitingRoomService(store, bus, clock, Settings(), Metrics())
    now = clock.now()

    def created(rid: str, start: datetime, **facts: Any) -> Any:
        central = {"scope": "cardiology", "category": "first-stable", "status": "free"}
        central.update(facts, start=to_store(start))
        body = {"type": "Slot", "id": rid, "version": 1, "channel": "provider"}
        body["slot"] = {k: central.get(k) for k in SLOT_EVENT_FACTS}
        ev = event("resource.Slot.created", body, tenant="p1", correlation_id="c", now=now)
        return event_envelope(ev)

    from datetime import timedelta

    await service.on_slot(created("far", now + timedelta(days=200)))
    await service.on_slot(created("busy", now + timedelta(days=5), status="busy"))
    await service.on_slot(created("other", now + timedelta(days=5), scope="no-such-scope"))
    assert reads == []
    await service.on_slot(created("near", now + timedelta(days=5)))
    assert reads == ["p1/Slot/near"]  # a maybe: read (absent here, so nothing follows)


def test_the_waiting_rooms_window_for_a_new_slot_is_the_rule_r_sched_6() -> None:
    """``_could_take`` compares a slot's start as store text against the horizon's end,
    kept until the horizon moves on: the same answers as the rule in datetimes (more than
    ``MIN_NOTICE`` ahead, on a day up to ``horizon_day``), on both sides of the unlock,
    across the DST changes and with a sandbox clock sent back."""
    store = MemoryStore()
    clock = SandboxClock()
    bus = MemoryBus(clock, partitions=1, retry_delays=(), prefetch=1)  # never started
    service = WaitingRoomService(store, bus, clock, Settings(), Metrics())
    info = codes.scopes()["cardiology"]
    warsaw = ZoneInfo("Europe/Warsaw")
    rng = random.Random(7)
    nows = [
        datetime(2027, m, d, 23, 49, 59, tzinfo=warsaw) + timedelta(seconds=k)
        for m, d in ((1, 4), (3, 27), (3, 28), (10, 30), (10, 31))
        for k in (0, 1, 2, 3600)
    ]
    nows += [nows[0] - timedelta(days=3), nows[5]]  # the clock sent back, then forth
    nows += [
        datetime(2027, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(365 * 86400))
        for _ in range(200)
    ]
    checked = 0
    for now in nows:
        last = rules.horizon_day(info.self_booking_days, now, service.lead)
        starts = [now + rules.MIN_NOTICE + timedelta(milliseconds=ms) for ms in (-1, 0, 1)]
        edge = datetime.combine(last + timedelta(days=1), datetime.min.time(), warsaw)
        starts += [edge + timedelta(milliseconds=ms) for ms in (-1, 0, 1)]
        starts += [now + timedelta(hours=rng.randrange(24 * 60)) for _ in range(10)]
        for start in starts:
            start = datetime.fromisoformat(to_store(start).replace("Z", "+00:00"))
            expected = start - now > rules.MIN_NOTICE and start.astimezone(warsaw).date() <= last
            central = {"scope": "cardiology", "category": "first-stable", "status": "free"}
            central["start"] = to_store(start)
            assert (service._could_take(central, now) is not None) == expected, (now, start)
            checked += 1
    assert checked > 2000


async def test_a_redelivered_claim_finds_its_own_claim_and_no_other_r_wait_3() -> None:
    """The claim is the lock of a booking (R-WAIT-3): a redelivered command (its first
    delivery claimed the entry, then died) gets the entry back by its own claim, with
    what the booking reads of it; another command gets nothing."""
    store = MemoryStore()
    await store.start(INDEXES)
    await store.insert(
        c.WAITING_ROOM,
        {
            **entry_doc(1, {"city": "Kraków"}),
            "referral": {"key": "k1", "code": "1234"},
            "contact": {"phone": "+48600100200", "email": None},
            "privileged": False,
            "criteria_input": {"city": "Kraków"},
        },
    )
    first = await assign._claim(store, "e0001", "m1", "p1~s1")
    assert first is not None and set(first) == {"_id", *assign.CLAIMED_FIELDS}
    assert first["referral"] == {"key": "k1", "code": "1234"}
    again = await assign._claim(store, "e0001", "m1", "p1~s1")  # the redelivery
    assert again == first
    assert await assign._claim(store, "e0001", "m2", "p1~s1") is None  # another command
    assert await assign._claim(store, "e0001", "m1", "p1~s2") is None  # another slot
    stored = await store.get(c.WAITING_ROOM, "e0001")
    assert stored is not None and stored["status"] == rules.ASSIGNING
    assert stored["claim"]["by"] == "m1"
