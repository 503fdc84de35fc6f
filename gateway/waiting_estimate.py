"""Estimated visit date of a waiting-room entry (R-WAIT-5, R-CRIT-2), and why.

The forecast (``forecast``, pure) answers: when will this entry's turn come,
given the slots that may still come its way, the entries ahead of it, and how
often cancellations free a matching slot? Its inputs, from a ``Snapshot`` of
one scope:

- **slots that will come**: free matching slots already in the waiting room's
  window (available now), free matching slots further ahead (each arrives on its
  unlock day, R-SCHED-6), and, after the last day providers have sent, more of
  the same at the rate of the known schedule (its matching capacity per week,
  times the share of it that is free);
- **releases**: matching cancellations seen in the last ``RELEASE_DAYS`` days
  (``waiting_room_releases``), as a rate, each giving a visit about the median
  lead time of those releases later;
- **entries ahead** in the queues that compete for the same slots (R-WAIT-5:
  rank), each counted with the share of *its* matching slots that also match
  this entry (weekdays and hours by the schedule's own distribution, location
  by the slots per facility, dates overlapping or not), so a narrow entry ahead
  weighs less on a wide one.

The entry gets the ``n + 1``-th slot to arrive, ``n`` the weighted number ahead;
the estimate is that slot's visit date. Each estimate explains itself
(position, matching capacity per week, releases per week) and says which
criterion, dropped, would gain how many days (``relax``: "drop the weekday
limit: about 12 days earlier"). It is a forecast, not a promise: it assumes
the schedule's pattern goes on and the queue ahead does not change.
"""

from __future__ import annotations

import bisect
import math
import statistics
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from gateway import constants as c
from gateway import waiting_rules as rules
from gateway.ports import Store
from gateway.timeutil import from_store, to_store, warsaw_day
from mappings import codes

HORIZON_DAYS = 730  # no estimate beyond two years
RELEASE_DAYS = 28  # the window of observed releases
CAPACITY_WEEKS = 8  # the schedule's capacity per week is measured over at most this
DEFAULT_RELEASE_LEAD_DAYS = 7.0
SLOT_STATUSES = ("free", "busy", "busy-tentative")
RELAX_LABELS = {
    "weekdays": "drop the weekday limit",
    "hours": "drop the hours limit",
    "location": "drop the location limit",
    "from": "drop the earliest date",
    "to": "drop the latest date",
}


@dataclass
class Snapshot:
    """What one scope's forecasts read: future slots, active entries, recent releases."""

    scope: str
    now: datetime
    self_booking_days: int
    horizon: date
    slots: list[rules.SlotFacts]
    queues: dict[str, list[rules.EntryFacts]]
    releases: list[tuple[rules.SlotFacts, float]]
    release_days: float
    built: float = field(default_factory=time.monotonic)
    ranks: dict[str, list[str]] = field(default_factory=dict)
    weekday_mass: list[float] = field(default_factory=list)
    minute_mass: list[float] = field(default_factory=list)  # per 15 minutes
    locations: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.ranks = {q: [e.rank for e in es] for q, es in self.queues.items()}
        self.weekday_mass = [0.0] * 8
        self.minute_mass = [0.0] * 96
        for s in self.slots:
            self.weekday_mass[s.weekday] += 1
            self.minute_mass[min(s.minute // 15, 95)] += 1
            self.locations[(s.tenant, s.location_id or "", s.city, s.postal_code)] += 1
        if not self.slots:  # nothing known: a uniform week
            self.weekday_mass = [0.0] + [1.0] * 7
            self.minute_mass = [1.0] * 96

    @property
    def today(self) -> date:
        return warsaw_day(self.now)


@dataclass(frozen=True)
class Forecast:
    estimated_date: date | None
    position: int  # entries ahead of this one in the queues it competes in
    ahead: float  # of them, weighted by how much they want the same slots
    capacity_per_week: float  # matching slots a week in providers' schedules
    releases_per_week: float  # matching slots a week freed by cancellations
    free_now: int  # matching free slots the waiting room may assign now

    def explanation(self, queue: str) -> str:
        when = (
            f"estimated visit around {self.estimated_date.isoformat()}"
            if self.estimated_date
            else "no estimate: no matching visits are known in providers' schedules"
        )
        return (
            f"{self.position} waiting ahead of you in the {queue} queue, about "
            f"{self.ahead:.0f} of them for visits like yours; providers' schedules have about "
            f"{self.capacity_per_week:.1f} matching visits a week and cancellations free about "
            f"{self.releases_per_week:.1f} a week: {when}"
        )


# --------------------------------------------------------------------------- the model


def _share(mass: list[float], mine: Iterable[int], theirs: Iterable[int]) -> float:
    t = set(theirs)
    total = sum(mass[i] for i in t)
    if total <= 0:
        return 1.0
    return sum(mass[i] for i in t & set(mine)) / total


def _weekdays(e: rules.EntryFacts) -> frozenset[int]:
    return e.weekdays or frozenset(range(1, 8))


def _quarters(e: rules.EntryFacts) -> range:
    lo, hi = e.hours or (0, 1440)
    return range(lo // 15, max(lo // 15 + 1, math.ceil(hi / 15)))


def _loc_match(loc: tuple[str, ...], row: tuple[str, str, str, str]) -> bool:
    if not loc:
        return True
    kind = loc[0]
    tenant, location_id, city, postal = row
    if kind == "facility":
        return location_id == loc[2] and (not loc[1] or loc[1] == tenant)
    if kind == "postal":
        code = loc[1]
        return postal == code if len(code) == 6 else postal.startswith(code)
    return city == loc[1]


class _Weights:
    """How much an entry ahead competes with ``me`` for slots (memoised by its criteria)."""

    def __init__(self, snap: Snapshot, me: rules.EntryFacts) -> None:
        self.snap = snap
        self.me = me
        self.memo: dict[tuple[Any, ...], float] = {}
        self.loc_memo: dict[tuple[str, ...], float] = {}

    def location(self, theirs: tuple[str, ...]) -> float:
        if theirs not in self.loc_memo:
            both = mine = 0
            for row, n in self.snap.locations.items():
                if _loc_match(theirs, row):
                    mine += n
                    if _loc_match(self.me.location, row):
                        both += n
            self.loc_memo[theirs] = (
                both / mine if mine else (1.0 if theirs == self.me.location else 0.0)
            )
        return self.loc_memo[theirs]

    def of(self, other: rules.EntryFacts) -> float:
        key = other.signature
        if key not in self.memo:
            me = self.me
            w = 1.0
            lo = max(other.start or "", me.start or "")
            hi = min(other.end or "~", me.end or "~")
            if lo >= hi:
                w = 0.0
            if w:
                w *= _share(self.snap.weekday_mass, _weekdays(me), _weekdays(other))
            if w:
                w *= _share(self.snap.minute_mass, _quarters(me), _quarters(other))
            if w:
                w *= self.location(other.location)
            self.memo[key] = w
        return self.memo[key]


def competing_queues(queue: str) -> list[str]:
    """Queues whose entries may take a slot this queue may take (R-WAIT-5)."""
    out: set[str] = set()
    for cat in [*codes.slot_categories(), None]:
        qs = rules.queues_for(cat)
        if queue in qs:
            out.update(qs)
    return sorted(out)


def ahead(snap: Snapshot, me: rules.EntryFacts) -> tuple[int, float]:
    """(entries ahead of ``me``, weighted by how much they compete)."""
    weights = _Weights(snap, me)
    position = 0
    sigs: Counter[tuple[Any, ...]] = Counter()
    examples: dict[tuple[Any, ...], rules.EntryFacts] = {}
    for q in competing_queues(me.queue):
        es = snap.queues.get(q, [])
        n = bisect.bisect_left(snap.ranks.get(q, []), me.rank)
        position += n
        for e in es[:n]:
            sig = e.signature
            sigs[sig] += 1
            examples.setdefault(sig, e)
    eff = sum(weights.of(examples[sig]) * n for sig, n in sigs.items())
    return position, eff


def _undated(e: rules.EntryFacts) -> rules.EntryFacts:
    return e._replace(start=None, end=None)


def forecast(snap: Snapshot, me: rules.EntryFacts) -> Forecast:
    """The estimated visit date of ``me`` (see the module docstring)."""
    today = snap.today
    undated = _undated(me)
    compatible = {
        cat for cat in {s.category for s in snap.slots} if me.queue in rules.queues_for(cat)
    }
    shape = [s for s in snap.slots if s.category in compatible and rules.matches(undated, s)]

    first_day = warsaw_day(from_store(me.start)) if me.start else None
    end_day = (
        warsaw_day(from_store(me.end) - timedelta(microseconds=1)) + timedelta(days=1)
        if me.end
        else None
    )

    def in_dates(day: date) -> bool:
        """A visit on ``day`` (a synthetic one: no time of day) within from / to."""
        return (first_day is None or day >= first_day) and (end_day is None or day < end_day)

    matching = [
        s
        for s in shape
        if (me.start is None or s.start >= me.start) and (me.end is None or s.start < me.end)
    ]
    # The schedule's matching capacity per week, over the first weeks providers have sent.
    sched_first = min((s.day for s in snap.slots), default=today)
    last_day = max((s.day for s in snap.slots), default=today)
    span = min(max((last_day - sched_first).days + 1, 7), CAPACITY_WEEKS * 7)
    cap_week = sum(1 for s in shape if s.day < sched_first + timedelta(days=span)) * 7 / span

    notice = to_store(snap.now + rules.MIN_NOTICE)
    arrivals: list[tuple[float, date]] = []
    free_now = 0
    far_all = far_free = 0
    for s in matching:
        if s.day > snap.horizon:
            far_all += 1
        if not s.free:
            continue
        if s.day <= snap.horizon:
            if s.start > notice:
                free_now += 1
                arrivals.append((0.0, s.day))
        else:
            far_free += 1
            unlock = rules.unlock_day(s.day, snap.self_booking_days)
            arrivals.append((max(0, (unlock - today).days), s.day))

    rel = [
        (s, lead)
        for s, lead in snap.releases
        if s.category in compatible and rules.matches(undated, s)
    ]
    per_day = len(rel) / snap.release_days if snap.release_days > 0 else 0.0
    lead_days = (
        statistics.median(lead for _, lead in rel) / 24 if rel else DEFAULT_RELEASE_LEAD_DAYS
    )

    position, eff = ahead(snap, me)
    need = int(eff) + 1
    known = len(arrivals)
    if per_day > 0:
        k = 1
        while k <= need and k / per_day <= HORIZON_DAYS:
            t = k / per_day
            visit = today + timedelta(days=t + lead_days)
            if in_dates(visit):
                arrivals.append((t, visit))
            k += 1
    share_free = far_free / far_all if far_all else 1.0
    rate = share_free * cap_week / 7
    if rate > 0:
        acc = 0.0
        day = last_day + timedelta(days=1)
        end = today + timedelta(days=HORIZON_DAYS + snap.self_booking_days)
        added = 0
        while day <= end and added + known <= need:
            acc += rate
            while acc >= 1 and in_dates(day):
                acc -= 1
                added += 1
                unlock = rules.unlock_day(day, snap.self_booking_days)
                arrivals.append((max(0, (unlock - today).days), day))
            day += timedelta(days=1)
    arrivals.sort()
    estimate = arrivals[need - 1][1] if len(arrivals) >= need else None
    return Forecast(
        estimated_date=estimate,
        position=position,
        ahead=round(eff, 1),
        capacity_per_week=round(cap_week, 1),
        releases_per_week=round(per_day * 7, 1),
        free_now=free_now,
    )


def relaxed(me: rules.EntryFacts, criterion: str) -> rules.EntryFacts | None:
    """``me`` without ``criterion`` (None when it is not set)."""
    if criterion == "weekdays":
        return me._replace(weekdays=frozenset()) if me.weekdays else None
    if criterion == "hours":
        return me._replace(hours=None) if me.hours else None
    if criterion == "location":
        return me._replace(facility=None, city=None, postal_code=None) if me.location else None
    if criterion == "from":
        return me._replace(start=None) if me.start else None
    if criterion == "to":
        return me._replace(end=None) if me.end else None
    return None


def estimate(snap: Snapshot, me: rules.EntryFacts) -> dict[str, Any]:
    """The estimate a patient and a provider see: date, explanation, what would help."""
    base = forecast(snap, me)
    tips: list[dict[str, Any]] = []
    for criterion, label in RELAX_LABELS.items():
        other = relaxed(me, criterion)
        if other is None:
            continue
        alt = forecast(snap, other)
        if alt.estimated_date is None:
            continue
        if base.estimated_date is None:
            tips.append(
                {
                    "criterion": criterion,
                    "estimated_date": alt.estimated_date.isoformat(),
                    "days_earlier": None,
                    "text": f"{label}: a visit around {alt.estimated_date.isoformat()}",
                }
            )
            continue
        gain = (base.estimated_date - alt.estimated_date).days
        if gain >= 1:
            tips.append(
                {
                    "criterion": criterion,
                    "estimated_date": alt.estimated_date.isoformat(),
                    "days_earlier": gain,
                    "text": f"{label}: about {gain} days earlier",
                }
            )
    tips.sort(key=lambda t: -(t["days_earlier"] or 10**6))
    return {
        "estimated_date": base.estimated_date.isoformat() if base.estimated_date else None,
        "position": base.position,
        "competing_ahead": base.ahead,
        "matching_capacity_per_week": base.capacity_per_week,
        "releases_per_week": base.releases_per_week,
        "free_now": base.free_now,
        "explanation": base.explanation(me.queue),
        "relax": tips,
    }


# --------------------------------------------------------------------------- snapshots


async def load_snapshot(
    store: Store, scope: str, now: datetime, unlock_lead: timedelta
) -> Snapshot:
    info = codes.scopes()[scope]
    slot_docs = await store.find(
        c.RESOURCES,
        {
            "type": "Slot",
            "central.status": {"$in": list(SLOT_STATUSES)},
            "central.scope": scope,
            "central.start": {"$gte": to_store(now)},
            "deleted": False,
        },
    )
    slots = [
        rules.slot_facts(d) for d in slot_docs if rules.queues_for(d["central"].get("category"))
    ]
    queues: dict[str, list[rules.EntryFacts]] = {}
    # Every queue named: the (scope, status, queue, rank) index serves the query, which
    # then reads the active entries only, not the assigned and closed ones that pile up.
    entry_docs = await store.find(
        c.WAITING_ROOM,
        {
            "scope": scope,
            "status": {"$in": list(rules.ACTIVE)},
            "queue": {"$in": list(rules.QUEUES)},
        },
        sort=[("rank", 1)],
    )
    for d in entry_docs:
        queues.setdefault(d["queue"], []).append(rules.entry_facts(d))
    since = now - timedelta(days=RELEASE_DAYS)
    rel_docs = await store.find(
        c.WAITING_ROOM_RELEASES, {"scope": scope, "at": {"$gte": to_store(since)}}, sort=[("at", 1)]
    )
    releases: list[tuple[rules.SlotFacts, float]] = []
    for r in rel_docs:
        if not r.get("start") or r.get("lead_time_hours") is None:
            continue
        fake = {
            "tenant": r["tenant"],
            "rid": r["slot"],
            "central": {
                "start": r["start"],
                "category": r.get("category"),
                "location_id": r.get("location_id"),
                "city": r.get("city"),
                "postal_code": r.get("postal_code"),
                "status": "free",
            },
        }
        releases.append((rules.slot_facts(fake), float(r["lead_time_hours"])))
    first = from_store(rel_docs[0]["at"]) if rel_docs else now
    observed = max((now - first).total_seconds() / 86400, 7.0) if rel_docs else 0.0
    return Snapshot(
        scope=scope,
        now=now,
        self_booking_days=info.self_booking_days,
        horizon=rules.horizon_day(info.self_booking_days, now, unlock_lead),
        slots=slots,
        queues=queues,
        releases=releases,
        release_days=min(observed, float(RELEASE_DAYS)) if rel_docs else 0.0,
    )


class Estimator:
    """Estimates for entries, over per-scope snapshots reused for ``ttl`` seconds."""

    def __init__(self, store: Store, ttl: float, unlock_lead: timedelta) -> None:
        self.store = store
        self.ttl = ttl
        self.unlock_lead = unlock_lead
        self._snaps: dict[str, Snapshot] = {}

    async def snapshot(self, scope: str, now: datetime) -> Snapshot:
        snap = self._snaps.get(scope)
        fresh = (
            snap is not None
            and self.ttl > 0
            and time.monotonic() - snap.built < self.ttl
            and abs((snap.now - now).total_seconds()) < 3600
        )
        if not fresh or snap is None:
            snap = await load_snapshot(self.store, scope, now, self.unlock_lead)
            self._snaps[scope] = snap
        return snap

    async def of(self, entry: Mapping[str, Any], now: datetime) -> dict[str, Any] | None:
        """The estimate of an active entry (None for one that is no longer waiting)."""
        if entry.get("status") not in rules.ACTIVE:
            return None
        snap = await self.snapshot(entry["scope"], now)
        return estimate(snap, rules.entry_facts(entry))
