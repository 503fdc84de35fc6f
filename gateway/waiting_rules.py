"""The waiting room's rules, pure (no I/O): criteria, matching, ranking, R-CAN-2, the window.

- **Criteria** (R-WAIT-4, R-CRIT-1) are the patient search's (``patients.Criteria``),
  kept on the entry in store form: ``from`` / ``to`` (instants, ``to`` exclusive),
  ``weekdays`` and ``hours`` (Europe/Warsaw), ``postal_code`` (exact or a prefix),
  ``city`` (any case), ``facility`` (``[provider or None, Location id]``).
- **Queues** (R-WAIT-5): an entry waits in the queue of its e-referral's medical
  category (``urgent`` / ``stable``); a slot of category ``first-urgent`` is for
  the urgent queue, ``first-stable`` for the stable one, a slot without a category
  (scopes where the provider need not send one) for both. ``first-privileged``
  slots are booked only at the facility (R-PAT-5) and ``control`` ones never
  here (R-PAT-6): the waiting room leaves them alone.
- **Rank** (R-WAIT-5): first come first served, with a bounded credit: an urgent
  case ranks as if it had joined ``urgent_credit`` earlier, an out-of-turn
  entitlement (privileged) ``privileged_credit`` earlier (both add up). So urgent
  before stable and privileges honoured, and still no entry waits forever behind
  later ones: anyone who joined more than the credits later ranks behind it.
- **R-CAN-2** (``release_rule``): a slot freed by a cancellation more than 72 h
  before the visit is assigned, 48-72 h (both ends included) proposed, under 48 h
  left to live search. Lead times are absolute hours (DOMAIN.md Time).
- **The window** (R-SCHED-6, R-WAIT-2): a day's slots become bookable for
  patients at 00:00 Europe/Warsaw ``self_booking_days`` days before (40 for
  cardiology); the waiting room takes them first, ``unlock_lead`` before that
  midnight (``horizon_day``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from gateway.timeutil import WARSAW, from_store, to_store, warsaw_day
from mappings import codes

if TYPE_CHECKING:
    from gateway.patients import Criteria

# R-CAN-2 thresholds, in hours before the visit (absolute hours).
ASSIGN_ABOVE_HOURS = 72.0
PROPOSE_FROM_HOURS = 48.0
# Automatic assignment (new and unlocked slots, an entry's first look) needs the
# same notice as a cancelled slot: more than 72 h.
MIN_NOTICE = timedelta(hours=ASSIGN_ABOVE_HOURS)

ReleaseRule = Literal["assign", "propose", "public"]

# Entry statuses. Active ones keep the referral's place (one active entry per referral).
WAITING = "waiting"
ASSIGNING = "assigning"  # a booking for it is being made (claimed by one command)
PROPOSED = "proposed"  # a 48-72 h slot is offered to it (R-CAN-2)
ASSIGNED = "assigned"  # a visit was booked for it
LEFT = "left"  # the patient left (DELETE, SMS REZYGNUJE)
CLOSED = "closed"  # the e-referral booked elsewhere, or can no longer book
ACTIVE = (WAITING, ASSIGNING, PROPOSED)


def release_rule(lead_hours: float) -> ReleaseRule:
    """R-CAN-2: what happens to a slot freed ``lead_hours`` before the visit."""
    if lead_hours > ASSIGN_ABOVE_HOURS:
        return "assign"
    if lead_hours >= PROPOSE_FROM_HOURS:
        return "propose"
    return "public"


def _midnight_after(day: date) -> datetime:
    return datetime.combine(day + timedelta(days=1), time(0), WARSAW).astimezone(UTC)


def horizon_day(self_booking_days: int, now: datetime, unlock_lead: timedelta) -> date:
    """The last Warsaw day whose slots the waiting room may take now (R-SCHED-6).

    Patients may book up to ``today + self_booking_days`` (``patients.check_window``);
    the next day is unlocked at midnight, and the waiting room gets it
    ``unlock_lead`` earlier, so it has the first pick.
    """
    today = warsaw_day(now)
    last = today + timedelta(days=self_booking_days)
    if now >= _midnight_after(today) - unlock_lead:
        last += timedelta(days=1)
    return last


def horizon_end(self_booking_days: int, now: datetime, unlock_lead: timedelta) -> datetime:
    """The Warsaw midnight that ends ``horizon_day``'s day: the first instant past it."""
    return _midnight_after(horizon_day(self_booking_days, now, unlock_lead))


def next_unlock(now: datetime, unlock_lead: timedelta) -> datetime:
    """The next instant ``horizon_day`` moves on (a little before a Warsaw midnight)."""
    day = warsaw_day(now)
    for _ in range(3):
        at = _midnight_after(day) - unlock_lead
        if at > now:
            return at
        day += timedelta(days=1)
    return now + timedelta(days=1)  # pragma: no cover - unreachable with a sane lead


def unlock_day(slot_day: date, self_booking_days: int) -> date:
    """The Warsaw day on which the waiting room gets a slot of ``slot_day`` (its eve's
    ``unlock_lead``): the day before the slot enters the patients' window."""
    return slot_day - timedelta(days=self_booking_days + 1)


# --------------------------------------------------------------------------- queues and rank


# Every queue an entry can be in (``queue_of``'s answers): a query of the active entries
# of a scope names them, so that the (scope, status, queue, rank) index serves it.
QUEUES = ("stable", "urgent")


def queue_of(medical: str | None) -> str:
    """The queue of an e-referral's medical category (urgent / stable; stable by default)."""
    return "urgent" if medical == "urgent" else "stable"


@cache
def queues_for(category: str | None) -> tuple[str, ...]:
    """The queues that may take a slot of ``category`` (see the module docstring)."""
    cats = codes.slot_categories()
    if category is None:
        return tuple(
            sorted(
                {
                    c.medical_category
                    for c in cats.values()
                    if c.first_time and c.patient_self_bookable and c.medical_category
                }
            )
        )
    info = cats.get(category)
    if info is None or not info.first_time or not info.patient_self_bookable:
        return ()
    return (info.medical_category,) if info.medical_category else ()


def slot_category_for(queue: str) -> str:
    """The slot category a queue books in a scope whose slots carry one."""
    for code, info in codes.slot_categories().items():
        if info.first_time and info.patient_self_bookable and info.medical_category == queue:
            return code
    return f"first-{queue}"  # pragma: no cover - the data file has both


def rank_of(
    entry_id: str,
    queued_at: datetime,
    queue: str,
    privileged: bool,
    *,
    urgent_credit: timedelta,
    privileged_credit: timedelta,
) -> str:
    """The sort key of an entry in its queue(s): lower is served first (R-WAIT-5).

    ``queued_at`` less the credits of its class, then the id: unique and stable.
    """
    at = queued_at
    if queue == "urgent":
        at -= urgent_credit
    if privileged:
        at -= privileged_credit
    return f"{to_store(at)}|{entry_id}"


# --------------------------------------------------------------------------- criteria


def criteria_to_store(crit: Criteria) -> dict[str, Any]:
    """``patients.Criteria`` -> the entry's ``criteria`` (store form, JSON)."""
    return {
        "from": to_store(crit.start) if crit.start else None,
        "to": to_store(crit.end) if crit.end else None,
        "weekdays": sorted(crit.weekdays),
        "hours": list(crit.hours) if crit.hours else None,
        "postal_code": crit.postal_code,
        "city": crit.city,
        "facility": list(crit.facility) if crit.facility else None,
    }


CRITERIA_FIELDS = ("from", "to", "weekdays", "hours", "postal_code", "city", "facility")


def criteria_query(scope: str, given: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The JSON ``criteria`` of an entry as search parameters for ``patients.parse_criteria``.

    ``weekdays`` may be a list of numbers or ``"1,2"``; the other fields are text.
    Unknown fields and wrong types raise ``ValueError`` saying which.
    """
    unknown = sorted(set(given) - set(CRITERIA_FIELDS))
    if unknown:
        raise ValueError(
            f"unknown criteria field(s) {', '.join(unknown)}; known: {', '.join(CRITERIA_FIELDS)}"
        )
    out: list[tuple[str, str]] = [("scope", scope)]
    for name in CRITERIA_FIELDS:
        value = given.get(name)
        if value is None or value == "" or value == []:
            continue
        if name == "weekdays" and isinstance(value, list):
            if not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
                raise ValueError("criteria.weekdays: numbers 1 (Monday) to 7 (Sunday)")
            value = ",".join(str(d) for d in value)
        if not isinstance(value, str):
            raise ValueError(f"criteria.{name} must be a string")
        out.append((name, value))
    return out


def criteria_view(stored: Mapping[str, Any]) -> dict[str, Any]:
    """The entry's criteria as the patient sees them (local times, global facility id)."""

    def local(v: str | None) -> str | None:
        return from_store(v).astimezone(WARSAW).isoformat() if v else None

    hours = stored.get("hours")
    fac = stored.get("facility")
    return {
        "from": local(stored.get("from")),
        "to": local(stored.get("to")),
        "weekdays": list(stored.get("weekdays") or []),
        "hours": (
            f"{hours[0] // 60:02d}:{hours[0] % 60:02d}-{hours[1] // 60:02d}:{hours[1] % 60:02d}"
            if hours
            else None
        ),
        "postal_code": stored.get("postal_code"),
        "city": stored.get("city"),
        "facility": (f"{fac[0]}~{fac[1]}" if fac[0] else fac[1]) if fac else None,
    }


# --------------------------------------------------------------------------- matching


_new = tuple.__new__  # a named tuple made without its generated ``__new__`` (a Python call)
_NONE: frozenset[Any] = frozenset()


class SlotFacts(NamedTuple):
    """What matching needs of a slot, computed once (local weekday and minute in Warsaw).

    A named tuple, as ``EntryFacts``: made by the thousand in a plan (a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``: 2.6 against 1.0 us)."""

    tenant: str
    rid: str
    start: str  # store instant
    day: date  # Warsaw day
    weekday: int  # ISO, Warsaw
    minute: int  # minutes after local midnight
    category: str | None
    location_id: str | None
    city: str  # case-folded
    postal_code: str
    free: bool = True

    @property
    def gid(self) -> str:
        return f"{self.tenant}~{self.rid}"


@lru_cache(maxsize=4096)
def _local_start(start: str) -> tuple[date, int, int]:
    """A slot start's Warsaw day, weekday and minute of the day (slots share their starts:
    the time-zone conversion is most of ``slot_facts``)."""
    local = from_store(start).astimezone(WARSAW)
    return local.date(), local.isoweekday(), local.hour * 60 + local.minute


def slot_facts(doc: Mapping[str, Any]) -> SlotFacts:
    s = doc["central"]
    get = s.get
    start = s["start"]
    day, weekday, minute = _local_start(start)
    status = get("status")
    # The tuple made directly, positionally (a plan makes one per slot): the fields'
    # order is ``SlotFacts``'.
    return _new(
        SlotFacts,
        (
            doc["tenant"],
            doc["rid"],
            start,
            day,
            weekday,
            minute,
            get("category"),
            get("location_id"),
            (get("city") or "").casefold(),
            get("postal_code") or "",
            get("appointment_id") is None
            and (status == "free" or (status == "busy-tentative" and bool(get("hold")))),
        ),
    )


class EntryFacts(NamedTuple):
    """An entry as matching and estimating need it (a named tuple: the nightly plan makes
    one per waiting entry it reads, up to every entry of the scope)."""

    id: str
    queue: str
    rank: str
    start: str | None
    end: str | None
    weekdays: frozenset[int]
    hours: tuple[int, int] | None
    postal_code: str | None
    city: str | None  # case-folded
    facility: tuple[str | None, str] | None
    gave_up: frozenset[str] = frozenset()

    @property
    def location(self) -> tuple[str, ...]:
        """The location criterion as a hashable signature."""
        if self.facility is not None:
            return ("facility", self.facility[0] or "", self.facility[1])
        if self.postal_code:
            return ("postal", self.postal_code)
        if self.city:
            return ("city", self.city)
        return ()

    @property
    def signature(self) -> tuple[Any, ...]:
        return (self.start, self.end, self.weekdays, self.hours, self.location)


def entry_facts(doc: Mapping[str, Any], criteria: Mapping[str, Any] | None = None) -> EntryFacts:
    crit = criteria if criteria is not None else doc.get("criteria") or {}
    get = crit.get
    weekdays = get("weekdays")
    hours = get("hours")
    city = get("city")
    fac = get("facility")
    gave_up = doc.get("gave_up")
    # Made directly, positionally (the nightly plan makes one per entry it looks at): the
    # fields' order is ``EntryFacts``'.
    return _new(
        EntryFacts,
        (
            doc["_id"],
            doc["queue"],
            doc["rank"],
            get("from"),
            get("to"),
            frozenset(weekdays) if weekdays else _NONE,
            (int(hours[0]), int(hours[1])) if hours else None,
            get("postal_code"),
            city.casefold() if city else None,
            (fac[0], fac[1]) if fac else None,
            frozenset(gave_up) if gave_up else _NONE,
        ),
    )


def location_of(criteria: Mapping[str, Any]) -> tuple[str, ...]:
    """``entry_facts(doc, criteria).location`` without making the facts (``location_key``
    is it as text)."""
    fac = criteria.get("facility")
    if fac:
        return ("facility", fac[0] or "", fac[1])
    if criteria.get("postal_code"):
        return ("postal", criteria["postal_code"])
    if criteria.get("city"):
        return ("city", criteria["city"].casefold())
    return ()


def slot_location_keys(s: SlotFacts) -> list[tuple[str, ...]]:
    """Every location criterion a slot meets, as ``EntryFacts.location`` signatures:
    anywhere, its facility (with and without the provider), its city, each prefix of
    its postal code."""
    keys: list[tuple[str, ...]] = [
        (),
        ("facility", "", s.location_id or ""),
        ("facility", s.tenant, s.location_id or ""),
        ("city", s.city),
    ]
    keys += [("postal", s.postal_code[:n]) for n in range(1, len(s.postal_code) + 1)]
    return keys


def location_key(criteria: Mapping[str, Any]) -> str:
    """The entry's ``loc_key`` (stored with it, indexed): its location signature as text.

    An entry's location criterion is one of facility, postal code, city (the most
    specific it has) or none; a slot that meets every criterion of the entry meets
    that one, so the entries that may take a slot are among those whose key is one
    of ``slot_location_key_values``. The look for a taker reads only those, in rank
    order, instead of every waiting entry ahead of the first match (R-WAIT-5).
    """
    return "|".join(map(str, location_of(criteria)))


def slot_location_key_values(s: SlotFacts) -> list[str]:
    """The ``loc_key`` values of the entries whose location criterion ``s`` meets."""
    return ["|".join(k) for k in slot_location_keys(s)]


def location_matches(e: EntryFacts, s: SlotFacts) -> bool:
    if e.facility is not None:
        tenant, loc = e.facility
        if loc != s.location_id or (tenant is not None and tenant != s.tenant):
            return False
    if e.postal_code:
        if len(e.postal_code) == 6:
            if s.postal_code != e.postal_code:
                return False
        elif not s.postal_code.startswith(e.postal_code):
            return False
    return not (e.city and s.city != e.city)


def matches(e: EntryFacts, s: SlotFacts) -> bool:
    """Does slot ``s`` meet entry ``e``'s criteria (R-WAIT-4, R-CRIT-1)? Queue not checked."""
    if e.start is not None and s.start < e.start:
        return False
    if e.end is not None and s.start >= e.end:
        return False
    if e.weekdays and s.weekday not in e.weekdays:
        return False
    if e.hours is not None and not e.hours[0] <= s.minute < e.hours[1]:
        return False
    if not location_matches(e, s):
        return False
    return not e.gave_up or s.gid not in e.gave_up


def takes(e: EntryFacts, s: SlotFacts) -> bool:
    """``matches`` and the entry's queue may take the slot's category."""
    return e.queue in queues_for(s.category) and matches(e, s)


def best_candidate(entries: Iterable[EntryFacts], s: SlotFacts) -> EntryFacts | None:
    """The best-ranked entry (``entries`` in rank order) that takes ``s``."""
    for e in entries:
        if takes(e, s):
            return e
    return None
