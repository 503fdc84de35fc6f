"""The waiting room's moving parts: its event consumer and its clock-following task.

**Consumer** (group ``waiting-room``): turns events into commands on the
slot's provider partition (``gateway.waiting_assign``), with ids derived from
the event's so a redelivered event is applied once:

- ``resource.Slot.created`` (and ``resource.Slot.updated`` by the provider's own
  system) of a free slot the waiting room may take now: ``waiting-room.offer``
  (R-WAIT-3: new capacity);
- ``slot.released`` (a cancellation): ``waiting-room.released`` (R-WAIT-6,
  R-CAN-2);
- ``waiting-room.waiting`` (an entry became waiting: entered, criteria changed,
  back after a cancellation or a declined proposal): the earliest free slot it
  may take, if any, is offered (``waiting-room.offer``);
- ``waiting-room.withdraw`` (an entry left with a proposal open): the proposal's
  provider withdraws it and asks the next candidate;
- ``booking.booked`` of a first-time visit booked another way with the
  e-referral of a waiting entry: the entry is closed (booked elsewhere);
- ``waiting-room.changed`` (an entry got its visit): its FHIR face follows.

**Clock task** (one per worker process, like the reminders; it sleeps until
the next thing is due or the sandbox clock moves):

- the nightly unlock (R-SCHED-6, ``waiting_rules.horizon_day``): the slots of
  the day that patients may book from the next midnight are given to the
  waiting room ``waiting_room_unlock_lead_seconds`` before it: one plan for all
  of them (``plan``: each slot, earliest first, to the best-ranked entry that
  takes it) sent as ``waiting-room.assign`` commands, one per provider and
  chunk. A lease on the scope's ``waiting_room_state`` document keeps two
  processes from planning the same night;
- proposals whose answer time is over: ``waiting-room.expire`` (R-CAN-2);
- entries left ``assigning`` by a command that died (wall-clock minutes):
  assigned if their visit exists, else waiting again.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import date, datetime, timedelta
from datetime import time as dtime
from typing import Any

import orjson
import structlog

from gateway import booking, patients, resources
from gateway import constants as c
from gateway import waiting_assign as assign
from gateway import waiting_room as entries
from gateway import waiting_rules as rules
from gateway.events import command
from gateway.logging import bind_correlation
from gateway.metrics import Metrics
from gateway.ports import Clock, Document, Envelope, MessageBus, Reject, Store
from gateway.settings import Settings
from gateway.timeutil import WARSAW, from_store, to_store, utc
from gateway.waiting_estimate import Estimator
from mappings import codes

log = structlog.get_logger("gateway.waiting_service")

PATTERNS = (
    "resource.Slot.created",
    "resource.Slot.updated",
    "slot.released",
    "booking.booked",
    "waiting-room.waiting",
    "waiting-room.withdraw",
    "waiting-room.changed",
)
CHUNK = 100  # pairs per waiting-room.assign command
PAGE = 2000  # entries read at a time while planning
LEASE_SECONDS = 120.0
STALE_CLAIM_SECONDS = 120.0
PROVIDER_CHANNELS = frozenset({"provider", "manual", "import"})
# What matching reads of entries and slots (rules.entry_facts / slot_facts): not the
# FHIR resource or the contact data, which a copy out of the store would carry.
ENTRY_FACTS = ("queue", "rank", "criteria", "gave_up")
SLOT_FACTS = ("tenant", "rid", "central")


# --------------------------------------------------------------------------- the plan (pure)


class _Free:
    """The untaken positions of one sorted slot list: ``find(p)`` is the first at or after
    ``p`` (``n`` when none), in near-constant time (union-find with path halving)."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n + 1))

    def find(self, p: int) -> int:
        parent = self.parent
        while parent[p] != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    def take(self, p: int) -> None:
        self.parent[p] = p + 1


class Planner:
    """Each slot, earliest first, to the best-ranked entry left that takes it (R-WAIT-5).

    Computed the other way round, which gives the same pairs: each entry, in rank
    order, takes the earliest slot left that it may take (the earliest slot goes to
    the best-ranked entry that takes it; remove both and repeat). So entries can
    be streamed in rank order (``take``) and the stream stops once every slot is
    taken (``full``). Slots sit in lists per queue and location criterion, sorted
    by start, the taken ones skipped in near-constant time (``_Free``); an entry
    looks in its list only within the days and hours it allows.
    """

    def __init__(self, slots: Sequence[rules.SlotFacts]) -> None:
        self.slots = sorted(slots, key=lambda s: (s.start, s.tenant, s.rid))
        # Slots of one place (category and location) share their lists: each list is made
        # of whole places' slots (merged in slot order), each place's keys made once
        # (10,000 slots one by one into their lists took 150 ms, the event loop held).
        by_place: dict[tuple[Any, ...], list[int]] = {}
        place_of: list[tuple[Any, ...]] = []
        for i, s in enumerate(self.slots):
            place = (s.category, s.tenant, s.location_id, s.city, s.postal_code)
            place_of.append(place)
            idx = by_place.get(place)
            if idx is None:
                by_place[place] = [i]
            else:
                idx.append(i)
        keys_of: dict[tuple[Any, ...], list[tuple[str, tuple[str, ...]]]] = {}
        places_of: dict[tuple[str, tuple[str, ...]], list[tuple[Any, ...]]] = {}
        for place, idx in by_place.items():
            s = self.slots[idx[0]]
            keys = keys_of[place] = [
                (queue, key)
                for queue in rules.queues_for(s.category)
                for key in rules.slot_location_keys(s)
            ]
            for k in keys:
                places_of.setdefault(k, []).append(place)
        lists: dict[tuple[str, tuple[str, ...]], list[int]] = {}
        for k, places in places_of.items():
            if len(places) == 1:
                lists[k] = list(by_place[places[0]])
            else:
                lists[k] = sorted(itertools.chain.from_iterable(by_place[p] for p in places))
        self.lists = lists
        self.starts = {k: [self.slots[i].start for i in v] for k, v in lists.items()}
        self.free = {k: _Free(len(v)) for k, v in lists.items()}
        # the lists each slot is in (its place's keys; its position there by bisection: a
        # list is in slot order)
        self.keys_of = keys_of
        self.place_of = place_of
        self.days = sorted({s.day for s in self.slots})
        self.bounds: dict[tuple[date, int], str] = {}
        self.taken = 0
        # the untaken slots of each list: an entry whose list has none left takes nothing
        # (most of the entries a plan reads, once the popular lists are full)
        self.left = {k: len(v) for k, v in lists.items()}

    @property
    def full(self) -> bool:
        return self.taken >= len(self.slots)

    def exhausted(self, queue: str, location: tuple[str, ...]) -> bool:
        """Whether an entry of ``queue`` with this location criterion can take nothing
        (``take`` would give None): no slot left in its list."""
        return not self.left.get((queue, location))

    def _at(self, day: date, minute: int) -> str:
        key = (day, minute)
        if key not in self.bounds:
            moment = datetime.combine(day, dtime(0), WARSAW) + timedelta(minutes=minute)
            self.bounds[key] = to_store(moment)
        return self.bounds[key]

    def take(self, e: rules.EntryFacts) -> rules.SlotFacts | None:
        """The earliest slot left that ``e`` takes, now taken by it (None: none left)."""
        k = (e.queue, e.location)
        idx = self.lists.get(k)
        if idx is None or self.full:
            return None
        st, fr = self.starts[k], self.free[k]
        lo_h, hi_h = e.hours or (0, 1440)
        for day in self.days:
            if e.weekdays and day.isoweekday() not in e.weekdays:
                continue
            lo, hi = self._at(day, lo_h), self._at(day, hi_h)
            if e.start is not None and e.start > lo:
                lo = e.start
            if e.end is not None and e.end < hi:
                hi = e.end
            if lo >= hi:
                continue
            q = fr.find(bisect.bisect_left(st, lo))
            while q < len(idx) and st[q] < hi:
                s = self.slots[idx[q]]
                if rules.takes(e, s):
                    i = idx[q]
                    for lk in self.keys_of[self.place_of[i]]:
                        self.free[lk].take(bisect.bisect_left(self.lists[lk], i))
                        self.left[lk] -= 1
                    self.taken += 1
                    return s
                q = fr.find(q + 1)
        return None


def plan(
    slots: Sequence[rules.SlotFacts], ranked: Sequence[rules.EntryFacts]
) -> list[tuple[rules.SlotFacts, rules.EntryFacts]]:
    """``Planner`` over entries in rank order: the pairs, earliest slot first."""
    planner = Planner(slots)
    out: list[tuple[rules.SlotFacts, rules.EntryFacts]] = []
    for e in ranked:
        if planner.full:
            break
        if planner.exhausted(e.queue, e.location):
            continue
        s = planner.take(e)
        if s is not None:
            out.append((s, e))
    out.sort(key=lambda pair: (pair[0].start, pair[0].tenant, pair[0].rid))
    return out


def _msg_id(prefix: str, *parts: Any) -> str:
    digest = hashlib.sha1(orjson.dumps(parts)).hexdigest()[:32]
    return f"{prefix}-{digest}"


# --------------------------------------------------------------------------- the service


class WaitingRoomService:
    """The waiting room's consumer and clock task (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        bus: MessageBus,
        clock: Clock,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self.store = store
        self.bus = bus
        self.clock = clock
        self.settings = settings
        self.metrics = metrics
        self.lead = timedelta(seconds=settings.waiting_room_unlock_lead_seconds)
        # per self-booking window: (since, until, the horizon's end as store text)
        self._horizon_ends: dict[int, tuple[datetime, datetime, str]] = {}
        self.estimator = Estimator(store, settings.waiting_room_estimate_cache_seconds, self.lead)
        self.retry_tiers = len(settings.retry_delays)
        self.wake = asyncio.Event()
        self.token = uuid.uuid4().hex
        # The "ok" count, looked up once (labels() costs as much as a small read).

    async def start(self) -> None:
        await self.backfill_location_keys()
        await self.bus.consume_events(c.WAITING_ROOM_GROUP, PATTERNS, self.handle)

    async def backfill_location_keys(self) -> int:
        """Entries stored before ``loc_key`` existed get it (the look for a taker reads
        entries by it: one without it would never be found). Idempotent; a no-op once done."""
        done = 0
        while True:
            missing = await self.store.find(
                c.WAITING_ROOM,
                {"loc_key": {"$exists": False}},
                limit=500,
                fields=("criteria",),
            )
            for d in missing:
                await self.store.update_one(
                    c.WAITING_ROOM,
                    {"_id": d["_id"], "loc_key": {"$exists": False}},
                    {"$set": {"loc_key": rules.location_key(d.get("criteria") or {})}},
                )
            done += len(missing)
            if len(missing) < 500:
                return done

    def horizon(self, info: codes.ScopeInfo, now: datetime) -> date:
        return rules.horizon_day(info.self_booking_days, now, self.lead)

    async def send(
        self, kind: str, body: dict[str, Any], tenant: str, msg_id: str, corr: str
    ) -> None:
        await self.bus.send(
            command(
                kind,
                body,
                tenant=tenant,
                correlation_id=corr or msg_id,
                now=self.clock.now(),
                msg_id=msg_id,
            )
        )
        self.metrics.published("command")

    # ------------------------------------------------------------------ events

    async def handle(self, msg: Envelope) -> None:
        if self.ignored(msg):
            # Most events of an assignment (its slot's update, its booking.booked): nothing
            # to do, decided on the event alone, without a log context.
            self.metrics.consumed("waiting-room", "ok")
            return
        bind_correlation(msg.correlation_id or msg.id, message_id=msg.id, event=msg.type)
        try:
            if msg.type.startswith("resource.Slot."):
                await self.on_slot(msg)
            elif msg.type == "slot.released":
                await self.on_released(msg)
            elif msg.type == "booking.booked":
                await self.on_booked(msg)
            elif msg.type == "waiting-room.waiting":
                await self.on_waiting(msg)
            elif msg.type == "waiting-room.withdraw":
                await self.on_withdraw(msg)
            elif msg.type == "waiting-room.changed":
                await entries.sync_mirror(
                    self.store, self.clock.now(), msg.body.get("entry", ""), msg.correlation_id
                )
        except Exception as exc:
            last = isinstance(exc, Reject) or msg.attempt >= self.retry_tiers
            self.metrics.consumed("waiting-room", "dead_lettered" if last else "retried")
            log.warning("waiting_room.event_failed", error=repr(exc), attempt=msg.attempt)
            if last and not isinstance(exc, Reject):
                raise Reject(f"retries exhausted: {exc!r}") from exc
            raise
        self.metrics.consumed("waiting-room", "ok")

    @staticmethod
    def ignored(msg: Envelope) -> bool:
        """Events ``on_slot`` and ``on_booked`` leave alone, told by the event itself."""
        b = msg.body
        if msg.type.startswith("resource.Slot."):
            return (
                msg.tenant is None
                or msg.tenant == c.WAITING_ROOM_TENANT
                or msg.type.endswith(".deleted")
                # bookings, cancellations and holds have their own events
                or (msg.type.endswith(".updated") and b.get("channel") not in PROVIDER_CHANNELS)
            )
        if msg.type == "booking.booked":
            info = codes.scopes().get(b.get("scope") or "")
            return (
                msg.tenant is None
                or info is None
                or not info.waiting_room
                or b.get("channel") == entries.CHANNEL
            )
        return False

    def _takes_now(self, doc: Document, now: datetime) -> codes.ScopeInfo | None:
        """The scope, when the waiting room could assign this free slot right now."""
        return self._could_take(doc["central"], now)

    def _could_take(self, s: Document, now: datetime) -> codes.ScopeInfo | None:
        """``_takes_now`` on a slot's central model, or on the facts its event carries
        (``resources.SLOT_EVENT_FACTS``: no holder or hold there, so a "no" is sure, a
        "maybe" is checked on the stored slot)."""
        info = codes.scopes().get(s.get("scope") or "")
        if info is None or not info.waiting_room or not rules.queues_for(s.get("category")):
            return None
        if s.get("status") != "free" or s.get("appointment_id") or s.get("hold"):
            return None
        # More than MIN_NOTICE ahead, and on a day the waiting room may take now: compared
        # as store text (fixed-width UTC), every new Slot's event is one.
        start = s["start"]
        if start <= to_store(utc(now) + rules.MIN_NOTICE) or start >= self.horizon_end(info, now):
            return None
        return info

    def horizon_end(self, info: codes.ScopeInfo, now: datetime) -> str:
        """``rules.horizon_end`` as store text, kept until the horizon moves on
        (``rules.next_unlock``; a sandbox clock sent back makes it anew): each was
        three time-zone conversions."""
        hit = self._horizon_ends.get(info.self_booking_days)
        if hit is None or not hit[0] <= now < hit[1]:
            end = rules.horizon_end(info.self_booking_days, now, self.lead)
            hit = (now, rules.next_unlock(now, self.lead), to_store(end))
            self._horizon_ends[info.self_booking_days] = hit
        return hit[2]

    async def on_slot(self, msg: Envelope) -> None:
        b = msg.body
        if msg.tenant is None or self.ignored(msg):
            return
        facts = b.get("slot")
        if (
            isinstance(facts, dict)
            and facts.get("start")
            and self._could_take(facts, self.clock.now()) is None
        ):
            return  # this version cannot be assigned now; a later one has its own event
        doc = await self.store.get(
            c.RESOURCES,
            resources.doc_id(msg.tenant, "Slot", b["id"]),
            fields=("deleted", "version", "central"),  # not the FHIR body: one per new slot
        )
        if doc is None or doc.get("deleted") or doc.get("version") != b.get("version"):
            return  # changed since: its own event follows
        info = self._takes_now(doc, self.clock.now())
        if info is None:
            return
        queues = rules.queues_for(doc["central"].get("category"))
        anyone = await self.store.find_one(
            c.WAITING_ROOM,
            {"scope": info.code, "status": rules.WAITING, "queue": {"$in": list(queues)}},
        )
        if anyone is None:
            return
        await self.send(
            "waiting-room.offer",
            {"slot": b["id"], "reason": "new"},
            msg.tenant,
            f"wro-{msg.id}",
            msg.correlation_id,
        )

    async def on_released(self, msg: Envelope) -> None:
        b = msg.body
        info = codes.scopes().get(b.get("scope") or "")
        if msg.tenant is None or info is None or not info.waiting_room:
            return
        await self.send(
            "waiting-room.released",
            {
                "slot": b["slot_id"],
                "appointment": b.get("appointment_id"),
                "lead": b.get("lead_time_hours"),
                "held": bool(b.get("held")),
                "reason": b.get("reason"),
                "release": msg.id,
            },
            msg.tenant,
            f"wrr-{msg.id}",
            msg.correlation_id,
        )

    async def on_booked(self, msg: Envelope) -> None:
        b = msg.body
        if msg.tenant is None or self.ignored(msg):
            return
        appt = await self.store.get(
            c.RESOURCES, resources.doc_id(msg.tenant, "Appointment", b["appointment_id"])
        )
        ref = (appt or {}).get("central", {}).get("referral")
        if ref:
            await entries.close_for_referral(
                self.store,
                self.clock.now(),
                ref["key"],
                patients.global_id(msg.tenant, b["appointment_id"]),
                msg.correlation_id or msg.id,
            )

    async def on_waiting(self, msg: Envelope) -> None:
        entry = await self.store.get(c.WAITING_ROOM, msg.body.get("entry", ""))
        if entry is None or entry["status"] != rules.WAITING:
            return
        slot = await self.first_free_slot(entry, self.clock.now())
        if slot is None:
            return
        await self.send(
            "waiting-room.offer",
            {"slot": slot["rid"], "reason": "entry", "entry": entry["_id"]},
            slot["tenant"],
            f"wre-{msg.id}",
            msg.correlation_id,
        )

    async def on_withdraw(self, msg: Envelope) -> None:
        gid = msg.body.get("proposal") or ""
        parts = patients.split_id(gid)
        if parts is None:
            return
        await self.send(
            "waiting-room.withdraw",
            {"proposal": gid},
            parts[0],
            f"wrw-{msg.id}",
            msg.correlation_id,
        )

    async def first_free_slot(self, entry: Document, now: datetime) -> Document | None:
        """The earliest free slot the entry may take now (more than 72 h ahead, in the window)."""
        info = codes.scopes()[entry["scope"]]
        crit = entry["criteria"]
        me = rules.entry_facts(entry)
        fac = crit.get("facility")
        criteria = patients.Criteria(
            scope=entry["scope"],
            start=from_store(crit["from"]) if crit.get("from") else None,
            end=from_store(crit["to"]) if crit.get("to") else None,
            weekdays=frozenset(crit.get("weekdays") or ()),
            hours=(crit["hours"][0], crit["hours"][1]) if crit.get("hours") else None,
            postal_code=crit.get("postal_code"),
            city=crit.get("city"),
            facility=(fac[0], fac[1]) if fac else None,
        )
        lo = now + rules.MIN_NOTICE + timedelta(seconds=1)
        if criteria.start and criteria.start > lo:
            lo = criteria.start
        hi = datetime.combine(self.horizon(info, now) + timedelta(days=1), dtime(0), WARSAW)
        if criteria.end and criteria.end < hi:
            hi = criteria.end
        categories = [
            cat for cat in [*codes.slot_categories(), None] if me.queue in rules.queues_for(cat)
        ]
        for a, b in patients.start_ranges(criteria, lo, hi):
            docs = await self.store.find(
                c.RESOURCES,
                patients.slot_filter(criteria, categories, to_store(a), to_store(b)),
                sort=[("central.start", 1), ("_id", 1)],
                limit=50,
                fields=SLOT_FACTS,
            )
            for d in docs:
                if d["central"].get("appointment_id") is None and rules.takes(
                    me, rules.slot_facts(d)
                ):
                    return d
        return None

    # ------------------------------------------------------------------ the clock task

    async def run(self) -> None:
        """Forever: unlock, expire proposals, recover claims; sleep until the next is due."""
        poll = self.settings.waiting_room_poll_seconds
        while True:
            clock_changed = asyncio.ensure_future(self.clock.wait_changed(poll))
            timeout = poll
            try:
                await asyncio.sleep(0)
                self.wake.clear()
                await self.unlock_due()
                await self.expire_due()
                await self.recover_claims()
                now = self.clock.now()
                due = [rules.next_unlock(now, self.lead)]
                nxt = await self.store.find_one(
                    c.WAITING_ROOM_PROPOSALS, {"status": "open"}, sort=[("expires_at", 1)]
                )
                if nxt is not None:
                    due.append(from_store(nxt["expires_at"]))
                wait = (min(due) - now).total_seconds()
                timeout = min(max(wait, 0.01), poll)
            except asyncio.CancelledError:
                clock_changed.cancel()
                raise
            except Exception as exc:
                log.warning("waiting_room.task_failed", error=repr(exc))
                timeout = min(poll, 2.0)
            woken = asyncio.ensure_future(self.wake.wait())
            try:
                await asyncio.wait(
                    {clock_changed, woken}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                clock_changed.cancel()
                woken.cancel()

    async def unlock_due(self) -> int:
        """R-SCHED-6: plan and send the assignments of every day unlocked since the last run."""
        sent = 0
        for scope, info in codes.scopes().items():
            if not info.waiting_room:
                continue
            now = self.clock.now()
            horizon = self.horizon(info, now)
            key = f"unlock:{scope}"
            state = await self.store.get(c.WAITING_ROOM_STATE, key)
            if state is None:
                # First run: the days already open were open before the waiting room ran.
                await self.store.update_one(
                    c.WAITING_ROOM_STATE,
                    {"_id": key},
                    {"$setOnInsert": {"through": horizon.isoformat(), "lease": None}},
                    upsert=True,
                )
                continue
            through = date.fromisoformat(state["through"])
            if through > horizon + timedelta(days=1):
                # The sandbox clock went back: start again from here.
                await self.store.update_one(
                    c.WAITING_ROOM_STATE,
                    {"_id": key, "through": state["through"]},
                    {"$set": {"through": horizon.isoformat()}},
                )
                continue
            if through >= horizon:
                continue
            leased = await self.store.update_one(
                c.WAITING_ROOM_STATE,
                {
                    "_id": key,
                    "through": state["through"],
                    "$or": [{"lease": None}, {"lease_until": {"$lt": time.time()}}],
                },
                {"$set": {"lease": self.token, "lease_until": time.time() + LEASE_SECONDS}},
            )
            if leased is None:
                continue
            try:
                sent += await self.plan_days(info, through + timedelta(days=1), horizon, now)
            finally:
                await self.store.update_one(
                    c.WAITING_ROOM_STATE,
                    {"_id": key, "lease": self.token},
                    {"$set": {"through": horizon.isoformat(), "lease": None}},
                )
        return sent

    async def plan_days(self, info: codes.ScopeInfo, first: date, last: date, now: datetime) -> int:
        """Plan the free slots of ``first``..``last`` over the waiting entries; send the plan."""
        lo = max(datetime.combine(first, dtime(0), WARSAW), now + rules.MIN_NOTICE)
        hi = datetime.combine(last + timedelta(days=1), dtime(0), WARSAW)
        if lo >= hi:
            return 0
        docs = await self.store.find(
            c.RESOURCES,
            {
                "type": "Slot",
                "central.status": "free",
                "central.scope": info.code,
                "central.start": {"$gt": to_store(lo), "$lt": to_store(hi)},
                "deleted": False,
            },
            sort=[("central.start", 1)],
            fields=SLOT_FACTS,
            shared=True,  # only read (their facts): no copy of each slot's central model
        )
        slots = [
            rules.slot_facts(d)
            for d in docs
            if not d["central"].get("hold")
            and d["central"].get("appointment_id") is None
            and rules.queues_for(d["central"].get("category"))
        ]
        if not slots:
            return 0
        queues = sorted({q for s in slots for q in rules.queues_for(s.category)})
        planner = Planner(slots)
        corr = f"unlock-{info.code}-{last.isoformat()}"
        by_tenant: dict[str, list[list[str]]] = {}
        planned = seen = 0

        async def flush(tenant: str) -> None:
            part = by_tenant.pop(tenant, [])
            if part:
                await self.send(
                    "waiting-room.assign",
                    {"pairs": part, "reason": "unlock"},
                    tenant,
                    _msg_id("wru", tenant, part),
                    corr,
                )

        # Entries stream in rank order (pages per queue, merged) until every slot is taken;
        # each provider's pairs go out in chunks as they come, so booking starts at once.
        # An entry whose list of slots is used up is passed over before its facts are made.
        async for d in self.ranked_entries(info.code, queues):
            if planner.full:
                break
            seen += 1
            if planner.exhausted(d["queue"], rules.location_of(d.get("criteria") or {})):
                continue
            e = rules.entry_facts(d)
            s = planner.take(e)
            if s is None:
                continue
            planned += 1
            by_tenant.setdefault(s.tenant, []).append([s.rid, e.id])
            if len(by_tenant[s.tenant]) >= CHUNK:
                await flush(s.tenant)
        for tenant in list(by_tenant):
            await flush(tenant)
        log.info(
            "waiting_room.unlocked",
            scope=info.code,
            first=first.isoformat(),
            last=last.isoformat(),
            slots=len(slots),
            entries=seen,
            planned=planned,
        )
        return planned

    async def ranked_entries(self, scope: str, queues: Sequence[str]) -> AsyncIterator[Document]:
        """The waiting entries of ``queues`` in rank order, read a page at a time: their
        ``ENTRY_FACTS`` (the store's values: read them, change nothing)."""
        pages: dict[str, list[Document]] = {}
        last: dict[str, str | None] = dict.fromkeys(queues)
        done: set[str] = set()

        async def refill(q: str) -> None:
            flt: dict[str, Any] = {"scope": scope, "status": rules.WAITING, "queue": q}
            if last[q] is not None:
                flt["rank"] = {"$gt": last[q]}
            # Each entry is only read (its facts, by the plan): no copy needed (``shared``).
            found = await self.store.find(
                c.WAITING_ROOM,
                flt,
                sort=[("rank", 1)],
                limit=PAGE,
                fields=ENTRY_FACTS,
                shared=True,
            )
            pages[q] = found
            if found:
                last[q] = found[-1]["rank"]
            if len(found) < PAGE:
                done.add(q)
            # The embedded store never suspends: a plan over 100,000 entries would hold
            # the event loop for a second. Between pages the API, and the commands already
            # sent, run.
            await asyncio.sleep(0)

        for q in queues:
            await refill(q)
        cursor = dict.fromkeys(queues, 0)
        while True:
            best: str | None = None
            for q in queues:
                if cursor[q] >= len(pages[q]):
                    if q in done:
                        continue
                    await refill(q)
                    cursor[q] = 0
                    if not pages[q]:
                        continue
                if best is None or pages[q][cursor[q]]["rank"] < pages[best][cursor[best]]["rank"]:
                    best = q
            if best is None:
                return
            yield pages[best][cursor[best]]
            cursor[best] += 1

    async def expire_due(self) -> int:
        """R-CAN-2: proposals not answered in time go to the next candidate."""
        now = self.clock.now()
        due = await self.store.find(
            c.WAITING_ROOM_PROPOSALS,
            {"status": "open", "expires_at": {"$lte": to_store(now)}},
            sort=[("expires_at", 1)],
            limit=200,
        )
        for p in due:
            await self.send(
                "waiting-room.expire",
                {"proposal": p["_id"]},
                p["tenant"],
                f"wrx-{p['_id']}-{p['expires_at']}",
                f"expire-{p['_id']}",
            )
        return len(due)

    async def recover_claims(self) -> int:
        """Entries a dead command left ``assigning`` (wall-clock minutes ago)."""
        stale: list[Document] = []
        for scope, info in codes.scopes().items():
            if info.waiting_room:
                stale += await self.store.find(
                    c.WAITING_ROOM,
                    {
                        "scope": scope,
                        "status": rules.ASSIGNING,
                        "queue": {"$in": ["stable", "urgent"]},
                        "claim.real": {"$lt": time.time() - STALE_CLAIM_SECONDS},
                    },
                    limit=100,
                )
        now = self.clock.now()
        for e in stale:
            claim = e.get("claim") or {}
            parts = patients.split_id(claim.get("slot") or "")
            booked: Document | None = None
            if parts is not None:
                rid = assign.assignment_rid(e["_id"], claim["slot"])
                booked = await self.store.get(
                    c.RESOURCES, resources.doc_id(parts[0], "Appointment", rid)
                )
            if booked is not None and booked["central"].get("status") in booking.HOLDING:
                await assign._assigned(
                    self.store,
                    now,
                    e["_id"],
                    claim["by"],
                    patients.global_id(parts[0], booked["rid"]) if parts else "",
                    claim["slot"],
                    "recover",
                )
            else:
                await assign._unclaim(self.store, now, e["_id"], claim.get("by", ""))
        return len(stale)
