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
import operator
import time
import uuid
from collections.abc import Sequence
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
# What matching reads of slots (rules.slot_facts): not the FHIR resource, which a copy
# out of the store would carry. (The plan reads whole entries, as the store keeps them:
# a new top level over the stored values costs less than picking five fields out.)
SLOT_FACTS = ("tenant", "rid", "central")


# --------------------------------------------------------------------------- the plan (pure)


_SLOT_ORDER = operator.attrgetter("start", "tenant", "rid")
_PLACE = operator.attrgetter("category", "tenant", "location_id", "city", "postal_code")


class Planner:
    """Each slot, earliest first, to the best-ranked entry left that takes it (R-WAIT-5).

    Computed the other way round, which gives the same pairs: each entry, in rank
    order, takes the earliest slot left that it may take (the earliest slot goes to
    the best-ranked entry that takes it; remove both and repeat). So entries can
    be streamed in rank order (``take``) and the stream stops once every slot is
    taken (``full``). Slots sit in lists per queue and location criterion (numbered:
    ``ids``), sorted by start; an entry looks in its list only within the days and
    hours it allows.

    A slot taken is only counted off its lists (``left``); each list skips its taken
    slots when it is next read, each once, in near-constant time (union-find with path
    halving over its positions). Most lists are never read: a plan took each slot out
    of all of them (ten bisections a slot), and built them all, at 10,000 slots.
    """

    def __init__(self, slots: Sequence[rules.SlotFacts]) -> None:
        self.slots = sorted(slots, key=_SLOT_ORDER)
        # Slots of one place (category and location) share their lists: each list is made
        # of whole places' slots (merged in slot order when first read), each place's keys
        # made once.
        by_place: dict[tuple[Any, ...], list[int]] = {}
        for i, place in enumerate(map(_PLACE, self.slots)):
            idx = by_place.get(place)
            if idx is None:
                by_place[place] = [i]
            else:
                idx.append(i)
        # (queue, location criterion) -> its list's number
        self.ids: dict[tuple[str, tuple[str, ...]], int] = {}
        self._places: list[list[list[int]]] = []  # each list's places (their slots)
        self._lists_of: list[tuple[int, ...]] = [()] * len(self.slots)  # each slot's lists
        for idx in by_place.values():
            s = self.slots[idx[0]]
            mine: dict[int, None] = {}
            for queue in rules.queues_for(s.category):
                for key in rules.slot_location_keys(s):
                    n = self.ids.setdefault((queue, key), len(self._places))
                    if n == len(self._places):
                        self._places.append([])
                    if n not in mine:
                        mine[n] = None
                        self._places[n].append(idx)
            lists = tuple(mine)
            for i in idx:
                self._lists_of[i] = lists
        # the untaken slots of each list: an entry whose list has none left takes nothing
        # (most of the entries a plan reads, once the popular lists are full)
        self.left = [sum(map(len, places)) for places in self._places]
        # each list (built when first read): its slots (positions in ``slots``), their
        # starts, the union-find over its positions (``find(p)``: the first at or after
        # ``p`` not known to be taken; ``len`` when none)
        self._idx: list[list[int] | None] = [None] * len(self._places)
        self._starts: list[list[str]] = [[] for _ in self._places]
        self._parent: list[list[int]] = [[] for _ in self._places]
        self._taken = bytearray(len(self.slots))
        self.taken = 0
        self.days = [(d, d.isoweekday()) for d in sorted({s.day for s in self.slots})]
        # per hours criterion: each day's (day, ISO weekday, first start, end) as store text
        self._windows: dict[tuple[int, int] | None, list[tuple[date, int, str, str]]] = {}

    @property
    def full(self) -> bool:
        return self.taken >= len(self.slots)

    def list_id(self, queue: str, location: tuple[str, ...]) -> int | None:
        """The number of the list of an entry of ``queue`` with this location criterion
        (None: no slot meets it)."""
        return self.ids.get((queue, location))

    def exhausted(self, queue: str, location: tuple[str, ...]) -> bool:
        """Whether an entry of ``queue`` with this location criterion can take nothing
        (``take`` would give None): no slot left in its list."""
        n = self.ids.get((queue, location))
        return n is None or not self.left[n]

    def _windows_for(self, hours: tuple[int, int] | None) -> list[tuple[date, int, str, str]]:
        lo_h, hi_h = hours or (0, 1440)
        out = []
        for day, weekday in self.days:
            midnight = datetime.combine(day, dtime(0), WARSAW)
            out.append(
                (
                    day,
                    weekday,
                    to_store(midnight + timedelta(minutes=lo_h)),
                    to_store(midnight + timedelta(minutes=hi_h)),
                )
            )
        self._windows[hours] = out
        return out

    def _build(self, n: int) -> list[int]:
        places = self._places[n]
        idx = list(places[0]) if len(places) == 1 else sorted(itertools.chain(*places))
        self._idx[n] = idx
        self._starts[n] = [self.slots[i].start for i in idx]
        self._parent[n] = list(range(len(idx) + 1))
        return idx

    def take(self, e: rules.EntryFacts) -> rules.SlotFacts | None:
        """The earliest slot left that ``e`` takes, now taken by it (None: none left)."""
        n = self.ids.get((e.queue, e.location))
        return None if n is None else self.take_in(n, e)

    def take_in(self, n: int, e: rules.EntryFacts) -> rules.SlotFacts | None:
        """``take`` in list ``n`` (``list_id`` of the entry's queue and location)."""
        if not self.left[n]:
            return None
        idx = self._idx[n]
        if idx is None:
            idx = self._build(n)
        st, parent, taken = self._starts[n], self._parent[n], self._taken
        end = len(idx)
        windows = self._windows.get(e.hours)
        if windows is None:
            windows = self._windows_for(e.hours)
        weekdays, start, until = e.weekdays, e.start, e.end
        for _day, weekday, lo, hi in windows:
            if weekdays and weekday not in weekdays:
                continue
            if start is not None and start > lo:
                lo = start
            if until is not None and until < hi:
                hi = until
            if lo >= hi:
                continue
            p = bisect.bisect_left(st, lo)
            while parent[p] != p:  # find(p), path halving
                parent[p] = parent[parent[p]]
                p = parent[p]
            while p < end and st[p] < hi:
                i = idx[p]
                if taken[i]:  # taken through another list: skipped from now on
                    parent[p] = p + 1
                else:
                    s = self.slots[i]
                    if rules.takes(e, s):
                        taken[i] = 1
                        parent[p] = p + 1
                        left = self.left
                        for m in self._lists_of[i]:
                            left[m] -= 1
                        self.taken += 1
                        return s
                p += 1
                while parent[p] != p:
                    parent[p] = parent[parent[p]]
                    p = parent[p]
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
    out.sort(key=lambda pair: _SLOT_ORDER(pair[0]))
    return out


def _msg_id(prefix: str, *parts: Any) -> str:
    digest = hashlib.sha1(orjson.dumps(parts)).hexdigest()[:32]
    return f"{prefix}-{digest}"


_rank = operator.itemgetter("rank")


class RankedEntries:
    """The waiting entries a plan reads, in rank order, a batch at a time (``next_batch``):
    pages per queue, merged. A page holds only the entries whose list in the plan still
    has slots (by their ``loc_key``, the location criterion the index holds them by):
    most of a night's entries wait for places whose slots are gone by then, and were
    read only to be passed over (32,700 entries read for 10,000 slots, at the bench's
    default, against 13,000 looked at). ``list_of`` tells, for an entry of a batch,
    its list in the plan, or None if that was used up since its page was read.

    The entries are the store's values (``shared``): read them, change nothing.
    """

    PAGE = PAGE

    def __init__(self, store: Store, scope: str, queues: Sequence[str], planner: Planner) -> None:
        self.store = store
        self.scope = scope
        self.queues = list(queues)
        self.left = planner.left
        # per queue: loc_key -> the number of its list in the plan
        self.keys: dict[str, dict[str, int]] = {q: {} for q in self.queues}
        for (queue, location), n in planner.ids.items():
            if queue in self.keys:
                self.keys[queue]["|".join(location)] = n
        self.pages: dict[str, list[Document]] = {q: [] for q in self.queues}
        self.pos = dict.fromkeys(self.queues, 0)
        self.last: dict[str, str | None] = dict.fromkeys(self.queues)
        self.done: set[str] = set()
        self.read = 0

    def list_of(self, d: Document) -> int | None:
        n = self.keys[d["queue"]].get(d["loc_key"])
        return n if n is not None and self.left[n] else None

    async def _refill(self, q: str) -> None:
        left = self.left
        live = [key for key, n in self.keys[q].items() if left[n]]
        if not live:
            self.pages[q], self.pos[q] = [], 0
            self.done.add(q)
            return
        flt: dict[str, Any] = {
            "scope": self.scope,
            "status": rules.WAITING,
            "queue": q,
            "loc_key": live[0] if len(live) == 1 else {"$in": live},
        }
        if self.last[q] is not None:
            flt["rank"] = {"$gt": self.last[q]}
        # Whole entries, not the fields matching reads: on the embedded store a copy of the
        # top level (``shared``: the stored values under it) is made in C, a projection
        # field by field (about 3 us an entry read more). With more keys than the embedded
        # store walks an index for (256), the look falls back to the queue's rank order.
        found = await self.store.find(
            c.WAITING_ROOM, flt, sort=[("rank", 1)], limit=self.PAGE, shared=True
        )
        self.pages[q], self.pos[q] = found, 0
        self.read += len(found)
        if found:
            self.last[q] = found[-1]["rank"]
        if len(found) < self.PAGE:
            self.done.add(q)
        # The embedded store never suspends: a plan over 100,000 entries would hold
        # the event loop for a second. Between pages the API, and the commands already
        # sent, run.
        await asyncio.sleep(0)

    async def next_batch(self) -> list[Document]:
        """The next entries in rank order (none: no more). Every entry not read yet ranks
        after the batch's: each queue's pages go up to the lowest last rank of those whose
        entries are not all read."""
        pages, pos = self.pages, self.pos
        for q in self.queues:
            if pos[q] >= len(pages[q]) and q not in self.done:
                await self._refill(q)
        live = [q for q in self.queues if pos[q] < len(pages[q])]
        if not live:
            return []
        open_ends = [pages[q][-1]["rank"] for q in live if q not in self.done]
        bound = min(open_ends) if open_ends else None
        batch: list[Document] = []
        for q in live:
            page, p = pages[q], pos[q]
            j = len(page) if bound is None else bisect.bisect_right(page, bound, p, key=_rank)
            batch += page[p:j]
            pos[q] = j
        if len(live) > 1:
            batch.sort(key=_rank)
        return batch


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
        slots = []
        for d in docs:
            central = d["central"]
            if (
                not central.get("hold")
                and central.get("appointment_id") is None
                and rules.queues_for(central.get("category"))
            ):
                slots.append(rules.slot_facts(d))
        if not slots:
            return 0
        queues = sorted({q for cat in {s.category for s in slots} for q in rules.queues_for(cat)})
        # The embedded store never suspends: between the slots' read (and their facts) and
        # building the lists, let the API run (each page of entries yields likewise).
        await asyncio.sleep(0)
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

        # Entries come in rank order (pages per queue, merged) until every slot is taken;
        # each provider's pairs go out in chunks as they come, so booking starts at once.
        # Only entries whose list of slots has some left are read (``RankedEntries``).
        reader = RankedEntries(self.store, info.code, queues, planner)
        while not planner.full:
            batch = await reader.next_batch()
            if not batch:
                break
            for d in batch:
                n = reader.list_of(d)
                if n is None:
                    continue  # its list was used up since its page was read
                seen += 1
                s = planner.take_in(n, rules.entry_facts(d))
                if s is None:
                    continue
                planned += 1
                part = by_tenant.setdefault(s.tenant, [])
                part.append([s.rid, d["_id"]])
                if len(part) >= CHUNK:
                    await flush(s.tenant)
                if planner.full:
                    break
        for tenant in list(by_tenant):
            await flush(tenant)
        log.info(
            "waiting_room.unlocked",
            scope=info.code,
            first=first.isoformat(),
            last=last.isoformat(),
            slots=len(slots),
            entries=seen,
            read=reader.read,
            planned=planned,
        )
        return planned

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
