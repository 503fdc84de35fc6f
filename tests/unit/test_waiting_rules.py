"""Unit tests of the waiting room's rules (issue 5), pure: R-CAN-2 boundaries, the
R-SCHED-6 window in Warsaw days across DST, queues and rank (R-WAIT-5, no entry waits
forever behind later ones), criteria matching (R-WAIT-4, R-CRIT-1), the unlock plan
(R-WAIT-3) and the estimate (R-WAIT-5, R-CRIT-2)."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway import waiting_estimate as est
from gateway import waiting_rules as rules
from gateway.timeutil import to_store
from gateway.waiting_service import plan

WARSAW = ZoneInfo("Europe/Warsaw")
LEAD = timedelta(minutes=10)
URGENT = timedelta(days=60)
PRIVILEGED = timedelta(days=30)
T0 = datetime(2027, 1, 4, 9, 0, tzinfo=WARSAW)


def w(y: int, m: int, d: int, hh: int = 0, mm: int = 0, ss: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, ss, tzinfo=WARSAW)


# --------------------------------------------------------------------------- R-CAN-2


@pytest.mark.parametrize(
    ("lead", "rule"),
    [
        (240.0, "assign"),
        (72.001, "assign"),  # just over 72 h: assigned
        (72.0, "propose"),  # exactly 72 h: 48-72 h includes 72
        (60.0, "propose"),
        (48.0, "propose"),  # exactly 48 h: proposed
        (47.999, "public"),  # just under 48 h: live search only
        (1.0, "public"),
        (-5.0, "public"),
    ],
)
def test_release_rule_r_can_2_boundaries(lead: float, rule: str) -> None:
    assert rules.release_rule(lead) == rule


# --------------------------------------------------------------------------- R-SCHED-6


def test_horizon_moves_ten_minutes_before_warsaw_midnight_r_sched_6() -> None:
    before = w(2027, 1, 4, 23, 49, 59)
    at = w(2027, 1, 4, 23, 50)
    assert rules.horizon_day(40, before, LEAD) == date(2027, 2, 13)  # today + 40
    assert rules.horizon_day(40, at, LEAD) == date(2027, 2, 14)  # the waiting room first
    assert rules.horizon_day(40, w(2027, 1, 5, 0, 0, 1), LEAD) == date(2027, 2, 14)
    assert rules.next_unlock(w(2027, 1, 4, 12), LEAD) == at.astimezone(UTC)
    assert rules.next_unlock(at, LEAD) == w(2027, 1, 5, 23, 50).astimezone(UTC)
    # The waiting room gets a day's slots the evening before they enter the window.
    assert rules.unlock_day(date(2027, 2, 14), 40) == date(2027, 1, 4)


@pytest.mark.parametrize(
    ("evening", "next_day"),
    [
        (w(2027, 3, 27, 23, 50), date(2027, 5, 7)),  # the night of the spring change
        (w(2027, 10, 30, 23, 50), date(2027, 12, 10)),  # the night of the autumn change
    ],
)
def test_horizon_across_dst_is_in_warsaw_days(evening: datetime, next_day: date) -> None:
    assert rules.horizon_day(40, evening - timedelta(seconds=1), LEAD) == next_day - timedelta(
        days=1
    )
    assert rules.horizon_day(40, evening, LEAD) == next_day
    utc_instant = evening.astimezone(UTC)
    assert rules.horizon_day(40, utc_instant, LEAD) == next_day


# --------------------------------------------------------------------------- R-WAIT-5


def test_queues_follow_slot_categories_r_pat_5_r_pat_6() -> None:
    assert rules.queues_for("first-urgent") == ("urgent",)
    assert rules.queues_for("first-stable") == ("stable",)
    assert rules.queues_for(None) == ("stable", "urgent")  # a scope without categories
    assert rules.queues_for("first-privileged") == ()  # booked at the facility (R-PAT-5)
    assert rules.queues_for("control") == ()  # continuation: at the facility (R-PAT-6)


def rank(eid: str, at: datetime, queue: str = "stable", privileged: bool = False) -> str:
    return rules.rank_of(
        eid, at, queue, privileged, urgent_credit=URGENT, privileged_credit=PRIVILEGED
    )


def test_rank_fcfs_urgent_and_privileged_first_with_bounded_credit_r_wait_5() -> None:
    first, later = rank("a", T0), rank("b", T0 + timedelta(minutes=1))
    assert first < later  # first come first served
    assert rank("u", T0 + timedelta(days=59), "urgent") < first  # urgent before stable
    assert rank("u", T0 + timedelta(days=61), "urgent") > first  # ... within its credit
    assert rank("p", T0 + timedelta(days=29), privileged=True) < first  # out of turn
    assert rank("p", T0 + timedelta(days=31), privileged=True) > first
    assert rank("up", T0 + timedelta(days=89), "urgent", True) < first  # both credits
    # Ties on time: the id decides, so the order is total and stable.
    assert rank("a", T0) < rank("b", T0)


# --------------------------------------------------------------------------- matching


def slot(
    start: datetime,
    category: str | None = "first-stable",
    *,
    tenant: str = "p1",
    rid: str = "s",
    location: str = "loc",
    city: str = "Kraków",
    postal: str = "31-147",
    status: str = "free",
) -> rules.SlotFacts:
    return rules.slot_facts(
        {
            "tenant": tenant,
            "rid": rid,
            "central": {
                "start": to_store(start),
                "category": category,
                "location_id": location,
                "city": city,
                "postal_code": postal,
                "status": status,
            },
        }
    )


def entry(
    eid: str = "e",
    *,
    queued: datetime = T0,
    queue: str = "stable",
    privileged: bool = False,
    gave_up: tuple[str, ...] = (),
    **criteria: Any,
) -> rules.EntryFacts:
    crit: dict[str, Any] = {}
    for name in ("weekdays", "postal_code", "city", "facility", "hours"):
        if name in criteria:
            crit[name] = criteria[name]
    if "start" in criteria:
        crit["from"] = to_store(criteria["start"])
    if "end" in criteria:
        crit["to"] = to_store(criteria["end"])
    return rules.entry_facts(
        {
            "_id": eid,
            "queue": queue,
            "rank": rank(eid, queued, queue, privileged),
            "criteria": crit,
            "gave_up": list(gave_up),
        }
    )


def test_criteria_match_in_warsaw_local_time_across_dst_r_crit_1() -> None:
    # Monday 2027-03-29 08:00 in Warsaw is 06:00 UTC (summer time since Sunday).
    monday8 = slot(w(2027, 3, 29, 8))
    assert rules.matches(entry(weekdays=[1], hours=[480, 720]), monday8)
    assert not rules.matches(entry(weekdays=[2]), monday8)
    assert not rules.matches(entry(hours=[540, 720]), monday8)
    # Friday 2027-03-26 08:00 is 07:00 UTC (winter time): still 08:00 local.
    assert rules.matches(entry(weekdays=[5], hours=[480, 540]), slot(w(2027, 3, 26, 8)))


def test_criteria_match_location_dates_and_slots_given_up_r_wait_4() -> None:
    s = slot(w(2027, 2, 1, 10))
    assert rules.matches(entry(city="KRAKÓW"), s)
    assert not rules.matches(entry(city="Gdańsk"), s)
    assert rules.matches(entry(postal_code="31"), s)
    assert rules.matches(entry(postal_code="31-1"), s)
    assert rules.matches(entry(postal_code="31-147"), s)
    assert not rules.matches(entry(postal_code="31-148"), s)
    assert not rules.matches(entry(postal_code="30"), s)
    assert rules.matches(entry(facility=["p1", "loc"]), s)
    assert rules.matches(entry(facility=[None, "loc"]), s)
    assert not rules.matches(entry(facility=["p2", "loc"]), s)
    assert rules.matches(entry(start=w(2027, 2, 1), end=w(2027, 2, 2)), s)
    assert not rules.matches(entry(start=w(2027, 2, 2)), s)
    assert not rules.matches(entry(end=w(2027, 2, 1, 10)), s)  # ``to`` is exclusive
    assert not rules.matches(entry(gave_up=("p1~s",)), s)  # R-WAIT-6: not offered again
    # The queue: a stable entry does not take an urgent slot (R-PAT-2 category).
    assert not rules.takes(entry(), slot(w(2027, 2, 1, 10), "first-urgent"))
    assert rules.takes(entry(queue="urgent"), slot(w(2027, 2, 1, 10), "first-urgent"))


def test_location_key_keeps_every_entry_that_matches_a_slot_r_wait_5() -> None:
    # The look for a taker reads only entries whose loc_key the slot offers: an entry
    # that matches must be among them, whatever its other criteria (and one whose key
    # is offered may still not match: its other criteria are checked after).
    rng = random.Random(7)
    cities = [("Kraków", "31-147", "loc"), ("Gdańsk", "80-001", "g1"), ("Łódź", "90-001", "l1")]
    for n in range(2000):
        city, postal, loc = rng.choice(cities)
        s = slot(
            w(2027, 2, 1, 10),
            tenant=rng.choice(["p1", "p2"]),
            location=loc,
            city=city,
            postal=postal,
        )
        crit: dict[str, Any] = {}
        pick = rng.random()
        c2, p2, l2 = rng.choice(cities)
        if pick < 0.25:
            crit["city"] = rng.choice([c2, c2.upper()])
        elif pick < 0.5:
            crit["postal_code"] = p2[: rng.randint(1, 6)]
        elif pick < 0.75:
            crit["facility"] = [rng.choice([None, "p1", "p2"]), l2]
        if rng.random() < 0.3:
            crit["city"] = c2  # a second criterion: the key is the most specific one
        e = entry(f"e{n}", **crit)
        key = rules.location_key(
            {**crit, "facility": crit.get("facility"), "postal_code": crit.get("postal_code")}
        )
        offered = rules.slot_location_key_values(s)
        if rules.matches(e, s):
            assert key in offered, (crit, s)
        assert ("|".join(e.location)) == key
        # the plan passes over an entry of a used-up list by its criteria alone
        assert rules.location_of(crit) == e.location


# --------------------------------------------------------------------------- the plan


def test_plan_gives_each_slot_earliest_first_to_the_best_ranked_taker_r_wait_3() -> None:
    narrow = entry("narrow", queued=T0, weekdays=[2])  # Tuesdays only, first in line
    loose = entry("loose", queued=T0 + timedelta(hours=1))
    urgent = entry("urgent", queued=T0 + timedelta(days=2), queue="urgent")
    gdansk = entry("gdansk", queued=T0 - timedelta(days=1), city="Gdańsk")
    monday = slot(w(2027, 2, 15, 8), rid="mon")
    tuesday = slot(w(2027, 2, 16, 8), rid="tue")
    urgent_slot = slot(w(2027, 2, 15, 9), "first-urgent", rid="urg")
    ranked = sorted([narrow, loose, urgent, gdansk], key=lambda e: e.rank)
    got = {s.rid: e.id for s, e in plan([tuesday, urgent_slot, monday], ranked)}
    assert got == {"mon": "loose", "urg": "urgent", "tue": "narrow"}


def test_plan_assigns_each_slot_and_each_entry_at_most_once() -> None:
    slots = [slot(w(2027, 2, 15, 8) + timedelta(minutes=20 * i), rid=f"s{i}") for i in range(30)]
    ranked = [entry(f"e{i}", queued=T0 + timedelta(minutes=i)) for i in range(20)]
    pairs = plan(slots, ranked)
    assert len(pairs) == 20
    assert len({s.rid for s, _ in pairs}) == 20 and len({e.id for _, e in pairs}) == 20
    # Earliest slots to the first in line.
    assert [(s.rid, e.id) for s, e in pairs[:3]] == [("s0", "e0"), ("s1", "e1"), ("s2", "e2")]


@pytest.mark.parametrize("seed", range(8))
def test_plan_is_each_slot_earliest_first_to_the_best_ranked_taker_left(seed: int) -> None:
    """``Planner`` works entry by entry (and passes over entries whose lists are used up):
    the same pairs as the rule read slot by slot (R-WAIT-5)."""
    rng = random.Random(seed)
    places = [
        ("p1", "loc", "Kraków", "31-147"),
        ("p1", "loc2", "Kraków", "31-200"),
        ("p2", "g1", "Gdańsk", "80-001"),
    ]
    slots = []
    for i in range(60):
        tenant, loc, city, postal = rng.choice(places)
        start = w(2027, 2, 15 + rng.randint(0, 4), rng.randint(7, 18), rng.choice([0, 30]))
        slots.append(
            slot(
                start,
                rng.choice(["first-stable", "first-urgent", None]),
                tenant=tenant,
                rid=f"s{i}",
                location=loc,
                city=city,
                postal=postal,
            )
        )
    ranked = []
    for i in range(120):
        crit: dict[str, Any] = {}
        tenant, loc, city, postal = rng.choice(places)
        pick = rng.random()
        if pick < 0.2:
            crit["city"] = city
        elif pick < 0.4:
            crit["postal_code"] = postal[: rng.randint(1, 6)]
        elif pick < 0.6:
            crit["facility"] = [rng.choice([None, tenant]), loc]
        if rng.random() < 0.3:
            crit["weekdays"] = sorted(rng.sample(range(1, 8), rng.randint(1, 3)))
        if rng.random() < 0.3:
            crit["hours"] = [8 * 60, rng.choice([10, 12, 16]) * 60]
        ranked.append(
            entry(
                f"e{i}",
                queued=T0 + timedelta(minutes=i),
                queue=rng.choice(["stable", "urgent"]),
                **crit,
            )
        )
    ranked.sort(key=lambda e: e.rank)
    expected = []
    left = list(ranked)
    for s in sorted(slots, key=lambda s: (s.start, s.tenant, s.rid)):
        e = rules.best_candidate(left, s)
        if e is not None:
            expected.append((s.rid, e.id))
            left.remove(e)
    assert [(s.rid, e.id) for s, e in plan(slots, ranked)] == expected


def test_no_entry_waits_forever_behind_later_ones_with_the_same_or_looser_criteria() -> None:
    """R-WAIT-5: every day one matching slot, and every day a later entry with the same or
    looser criteria joins out of turn (privileged): the worst case for the old entry. With
    strict priority it would wait forever; with the bounded credit it is served once the
    newcomers joined more than the credit after it, and never overtaken after that."""
    old = entry("old", queued=T0, city="Kraków", weekdays=[1, 2, 3, 4, 5])
    waiting = [old]
    served: dict[str, int] = {}
    for day in range(1, 120):
        now = T0 + timedelta(days=day)
        looser = day % 3 == 0
        newcomer = entry(
            f"n{day}",
            queued=now,
            privileged=True,
            **({} if looser else {"city": "Kraków", "weekdays": [1, 2, 3, 4, 5]}),
        )
        waiting.append(newcomer)
        waiting.sort(key=lambda e: e.rank)
        later = now + timedelta(days=41)
        monday = later + timedelta(days=(7 - later.weekday()) % 7)
        pairs = plan([slot(monday, rid=f"s{day}")], waiting)
        for _, e in pairs:
            served[e.id] = day
            waiting.remove(e)
    assert served["old"] == PRIVILEGED.days + 1
    # Everyone who joined after it is served after it, as first come first served says.
    assert all(served[f"n{d}"] > served["old"] for d in range(31, 119) if f"n{d}" in served)
    # Without privileges later entries never go first: served on day 1.
    plain = [entry("old", queued=T0), entry("new", queued=T0 + timedelta(hours=1))]
    assert plan([slot(w(2027, 2, 15, 8))], plain)[0][1].id == "old"


# --------------------------------------------------------------------------- estimates


def snapshot(
    slots: list[rules.SlotFacts],
    entries: list[rules.EntryFacts],
    releases: list[tuple[rules.SlotFacts, float]] = (),  # type: ignore[assignment]
    release_days: float = 0.0,
) -> est.Snapshot:
    queues: dict[str, list[rules.EntryFacts]] = {}
    for e in sorted(entries, key=lambda e: e.rank):
        queues.setdefault(e.queue, []).append(e)
    return est.Snapshot(
        scope="cardiology",
        now=T0,
        self_booking_days=40,
        horizon=rules.horizon_day(40, T0, LEAD),
        slots=slots,
        queues=queues,
        releases=list(releases),
        release_days=release_days,
    )


def weekly(weeks: int = 12) -> list[rules.SlotFacts]:
    """Beyond the window: Mondays and Thursdays at 10:00 from 2027-02-15 (day 42)."""
    out = []
    for k in range(weeks):
        monday = w(2027, 2, 15, 10) + timedelta(weeks=k)
        out += [slot(monday, rid=f"m{k}"), slot(monday + timedelta(days=3), rid=f"t{k}")]
    return out


def test_estimate_from_slots_and_entries_ahead_r_wait_5() -> None:
    me = entry("me", queued=T0 + timedelta(days=1))
    alone = est.forecast(snapshot(weekly(), [me]), me)
    assert alone.estimated_date == date(2027, 2, 15)  # the first matching slot to come
    assert alone.position == 0 and alone.capacity_per_week == pytest.approx(2.0, abs=0.3)
    ahead = [entry(f"a{i}", queued=T0 - timedelta(days=i + 1)) for i in range(4)]
    behind = [entry(f"b{i}", queued=T0 + timedelta(days=5 + i)) for i in range(4)]
    queued = est.forecast(snapshot(weekly(), [me, *ahead, *behind]), me)
    assert queued.position == 4 and queued.ahead == 4
    assert queued.estimated_date == date(2027, 3, 1)  # the fifth slot: Mon of week 3
    # Entries ahead that want other days weigh less (R-WAIT-5: their criteria).
    mondays = [entry(f"a{i}", queued=T0 - timedelta(days=i + 1), weekdays=[1]) for i in range(4)]
    thursday = entry("me", queued=T0 + timedelta(days=1), weekdays=[4])
    f = est.forecast(snapshot(weekly(), [thursday, *mondays]), thursday)
    assert f.position == 4 and f.ahead == 0
    assert f.estimated_date == date(2027, 2, 18)


def test_estimate_counts_released_slots_and_has_none_without_capacity() -> None:
    me = entry("me", queued=T0)
    ahead = [entry(f"a{i}", queued=T0 - timedelta(days=i + 1)) for i in range(6)]
    base = est.forecast(snapshot(weekly(), [me, *ahead]), me)
    # Two matching cancellations a day lately: turns come sooner.
    freed = [(slot(w(2026, 12, 20 + i % 10, 10), rid=f"r{i}"), 120.0) for i in range(56)]
    faster = est.forecast(snapshot(weekly(), [me, *ahead], freed, 28.0), me)
    assert faster.releases_per_week == pytest.approx(14.0)
    assert faster.estimated_date is not None and base.estimated_date is not None
    assert faster.estimated_date < base.estimated_date
    nothing = est.forecast(snapshot([], [me]), me)
    assert nothing.estimated_date is None
    assert "no estimate" in nothing.explanation("stable")


def test_estimate_explains_itself_and_what_relaxing_would_gain_r_crit_2() -> None:
    ahead = [entry(f"a{i}", queued=T0 - timedelta(days=i + 1)) for i in range(4)]
    me = entry("me", queued=T0 + timedelta(days=1), weekdays=[4], hours=[600, 660])
    out = est.estimate(snapshot(weekly(), [me, *ahead]), me)
    assert out["position"] == 4
    assert "4 waiting ahead of you in the stable queue" in out["explanation"]
    assert "matching visits a week" in out["explanation"]
    tip = next(t for t in out["relax"] if t["criterion"] == "weekdays")
    assert tip["days_earlier"] > 0
    assert tip["text"] == f"drop the weekday limit: about {tip['days_earlier']} days earlier"
    assert date.fromisoformat(tip["estimated_date"]) < date.fromisoformat(out["estimated_date"])
    # Hours do not matter here (every slot is at 10:00): no tip for them.
    assert all(t["criterion"] != "hours" for t in out["relax"])
    # Tips come with the biggest gain first.
    gains = [t["days_earlier"] for t in out["relax"]]
    assert gains == sorted(gains, reverse=True)


# --------------------------------------------------------------------------- facts


def _slot_facts_reference(doc: dict[str, Any]) -> rules.SlotFacts:
    """``slot_facts`` as it was written first (keywords, the named tuple's own ``__new__``)."""
    s = doc["central"]
    local = datetime.fromisoformat(s["start"].replace("Z", "+00:00")).astimezone(WARSAW)
    status = s.get("status")
    return rules.SlotFacts(
        tenant=doc["tenant"],
        rid=doc["rid"],
        start=s["start"],
        day=local.date(),
        weekday=local.isoweekday(),
        minute=local.hour * 60 + local.minute,
        category=s.get("category"),
        location_id=s.get("location_id"),
        city=(s.get("city") or "").casefold(),
        postal_code=s.get("postal_code") or "",
        free=s.get("appointment_id") is None
        and (status == "free" or (status == "busy-tentative" and bool(s.get("hold")))),
    )


def _entry_facts_reference(doc: dict[str, Any]) -> rules.EntryFacts:
    """``entry_facts`` as it was written first."""
    crit = doc.get("criteria") or {}
    fac = crit.get("facility")
    hours = crit.get("hours")
    return rules.EntryFacts(
        id=doc["_id"],
        queue=doc["queue"],
        rank=doc["rank"],
        start=crit.get("from"),
        end=crit.get("to"),
        weekdays=frozenset(crit.get("weekdays") or ()),
        hours=(int(hours[0]), int(hours[1])) if hours else None,
        postal_code=crit.get("postal_code"),
        city=crit["city"].casefold() if crit.get("city") else None,
        facility=(fac[0], fac[1]) if fac else None,
        gave_up=frozenset(doc.get("gave_up") or ()),
    )


def test_slot_and_entry_facts_are_made_as_the_named_tuples_say() -> None:
    """``slot_facts`` / ``entry_facts`` make their tuples positionally: every field in its
    place, on generated documents with fields missing, empty or None."""
    rng = random.Random(3)
    for n in range(3000):
        central: dict[str, Any] = {
            "start": to_store(
                datetime(2027, 1, 1, tzinfo=UTC) + timedelta(minutes=rng.randrange(600_000))
            )
        }
        for name, values in (
            ("category", ["first-stable", "first-urgent", None]),
            ("location_id", ["loc", None]),
            ("city", ["Kraków", "ŁÓDŹ", "", None]),
            ("postal_code", ["31-147", "", None]),
            ("status", ["free", "busy", "busy-tentative", None]),
            ("hold", [{"entry": "e"}, None, {}]),
            ("appointment_id", ["a1", None]),
        ):
            if rng.random() < 0.8:
                central[name] = rng.choice(values)
        sdoc = {"tenant": f"p{n % 3}", "rid": f"s{n}", "central": central}
        got = rules.slot_facts(sdoc)
        assert type(got) is rules.SlotFacts
        assert got == _slot_facts_reference(sdoc) and got._asdict() == (
            _slot_facts_reference(sdoc)._asdict()
        )
        crit: dict[str, Any] = {}
        for name, values in (
            ("from", [to_store(T0), None]),
            ("to", [to_store(T0 + timedelta(days=9)), None]),
            ("weekdays", [[1, 3], [], None, [7]]),
            ("hours", [[480, 720], (0, 60), None]),
            ("postal_code", ["31", "31-147", "", None]),
            ("city", ["KRAKÓW", "Gdańsk", "", None]),
            ("facility", [["p1", "loc"], [None, "loc"], None]),
        ):
            if rng.random() < 0.8:
                crit[name] = rng.choice(values)
        edoc: dict[str, Any] = {"_id": f"e{n}", "queue": "stable", "rank": f"r{n}"}
        if rng.random() < 0.9:
            edoc["criteria"] = crit if rng.random() < 0.9 else None
        if rng.random() < 0.7:
            edoc["gave_up"] = rng.choice([[], ["p1~s1", "p2~s2"], None])
        got_e = rules.entry_facts(edoc)
        assert type(got_e) is rules.EntryFacts
        assert got_e._asdict() == _entry_facts_reference(edoc)._asdict()
        assert type(got_e.weekdays) is frozenset and type(got_e.gave_up) is frozenset
        # with the criteria given apart (the plan's and the estimate's way)
        assert rules.entry_facts(edoc, crit) == _entry_facts_reference({**edoc, "criteria": crit})
