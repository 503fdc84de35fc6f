"""The provider's and the payer's reports (issue 9): pure tallies over stored documents.

Each report is a small accumulator: the caller (``gateway.report_service``)
streams documents from the store into ``add_*`` and asks for the rows. No I/O
here, so the rules are unit-tested on plain dicts.

- :class:`Activity`, per provider, scope and day (days in Europe/Warsaw):
  slots published by category and status (by the visit's day); bookings by
  channel (by the day they were made) with the channel groups of
  ``mappings/data/appointment-channel.json`` (``central``: IKP / mojeIKP,
  SMS, the waiting room; ``facility``: the provider's system or the manual
  page; ``import``); cancellations by reason and channel (by the day they
  were made; the pilot counted SMS vs portal, R-CAN-4); visits the waiting
  room assigned to the provider and how long those patients waited. Beside
  the rows, per scope and day, the waiting room itself (R-WAIT-1..3): entries
  in, out, assigned, and how many wait at the end of the day.
- :class:`Compliance`, per provider and scope, against the scope calendar
  (R-SCOPE-3, ``mappings/data/scope.json``): when the provider's first slots
  of the scope reached the gateway vs ``schedules_due`` (art. 154a(1)), and of
  the visits on or after ``central_only_payment_from`` the share booked in
  central e-registration (art. 154a(2)).
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

from gateway.timeutil import WARSAW, from_store, to_store, utc, warsaw_day
from mappings import codes

# Appointment statuses of a visit that takes (or took) place: they hold their slot.
VISIT_STATUSES = frozenset({"pending", "booked", "arrived", "checked-in", "fulfilled", "noshow"})
# Waiting-room entry statuses of a patient still waiting (gateway.waiting_rules.ACTIVE).
WAITING_STATUSES = frozenset({"waiting", "assigning", "proposed"})
NO_CATEGORY = "-"  # a slot or visit without a slot category (allowed outside cardiology)


def day_range(first: date, last: date) -> tuple[str, str]:
    """Store instants bounding the Warsaw days ``first``..``last`` (both included)."""
    return (
        to_store(datetime.combine(first, time(), WARSAW)),
        to_store(datetime.combine(last + timedelta(days=1), time(), WARSAW)),
    )


def store_day(instant: str | None) -> date | None:
    """The Warsaw day of a stored instant."""
    return warsaw_day(from_store(instant)) if instant else None


def slot_state(status: str) -> str | None:
    """The report's word for a slot status: free, booked, held (by the waiting room), ..."""
    return {
        "free": "free",
        "busy": "booked",
        "busy-tentative": "held",
        "busy-unavailable": "unavailable",
    }.get(status)


def channel_group(channel: str | None) -> str:
    info = codes.channels().get(channel or "provider")
    return info.group if info is not None else "facility"


# --------------------------------------------------------------------------- activity


@dataclass
class ActivityRow:
    provider: str
    scope: str
    day: date
    slots: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    bookings: Counter[str] = field(default_factory=Counter)  # by channel
    cancellations: Counter[tuple[str, str]] = field(default_factory=Counter)  # (reason, channel)
    waits: list[float] = field(default_factory=list)  # days waited, of visits assigned

    def to_json(self) -> dict[str, Any]:
        groups: Counter[str] = Counter()
        for ch, n in self.bookings.items():
            groups[channel_group(ch)] += n
        by_reason: dict[str, dict[str, int]] = defaultdict(dict)
        for (reason, ch), n in sorted(self.cancellations.items()):
            by_reason[reason][ch] = n
        by_channel: Counter[str] = Counter()
        for (_reason, ch), n in self.cancellations.items():
            by_channel[ch] += n
        return {
            "provider": self.provider,
            "scope": self.scope,
            "day": self.day.isoformat(),
            "slots": {cat: dict(sorted(c.items())) for cat, c in sorted(self.slots.items())},
            "bookings": {
                "total": sum(self.bookings.values()),
                "by_channel": dict(sorted(self.bookings.items())),
                "by_group": {g: groups.get(g, 0) for g in ("central", "facility", "import")},
            },
            "cancellations": {
                "total": sum(self.cancellations.values()),
                "by_reason": dict(by_reason),
                "by_channel": dict(sorted(by_channel.items())),
            },
            "waiting_room": {
                "assigned": len(self.waits),
                "wait_days_median": _median(self.waits),
                "wait_days_max": round(max(self.waits), 2) if self.waits else None,
            },
        }


@dataclass
class WaitingDay:
    """The waiting room of one scope on one day (R-WAIT-1..3)."""

    entered: int = 0
    left: int = 0
    assigned: int = 0
    waiting_at_end: int = 0
    waits: list[float] = field(default_factory=list)


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 2) if xs else None


class Activity:
    """Slots, bookings, cancellations and the waiting room, per provider, scope and day."""

    def __init__(self, first: date, last: date) -> None:
        if last < first:
            raise ValueError("the report's last day is before its first")
        self.first, self.last = first, last
        self.rows: dict[tuple[str, str, date], ActivityRow] = {}
        self.waiting: dict[tuple[str, date], WaitingDay] = {}

    def _in(self, day: date | None) -> bool:
        return day is not None and self.first <= day <= self.last

    def _row(self, provider: str, scope: str | None, day: date) -> ActivityRow:
        key = (provider, scope or NO_CATEGORY, day)
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = ActivityRow(provider, scope or NO_CATEGORY, day)
        return row

    def add_slot(self, provider: str, slot: dict[str, Any]) -> None:
        """A slot (central model) counts on its visit's day."""
        day = store_day(slot.get("start"))
        state = slot_state(slot.get("status", ""))
        if state is None or not self._in(day):
            return
        assert day is not None
        row = self._row(provider, slot.get("scope"), day)
        row.slots[slot.get("category") or NO_CATEGORY][state] += 1

    def add_appointment(self, provider: str, appt: dict[str, Any], created: str | None) -> None:
        """A visit counts as a booking on the day it was booked, and as a cancellation
        on the day it was cancelled (``created`` stands in for a missing booking time)."""
        scope = appt.get("scope")
        booked = appt.get("booked_at") or (
            created if appt.get("status") in VISIT_STATUSES else None
        )
        day = store_day(booked)
        if self._in(day):
            assert day is not None
            self._row(provider, scope, day).bookings[appt.get("channel") or "provider"] += 1
        if appt.get("status") == "cancelled":
            cday = store_day(appt.get("cancelled_at"))
            if self._in(cday):
                assert cday is not None
                key = (
                    appt.get("cancel_reason") or "unknown",
                    appt.get("cancel_channel") or "unknown",
                )
                self._row(provider, scope, cday).cancellations[key] += 1

    def add_waiting_entry(self, entry: dict[str, Any], assigned_to: str | None) -> None:
        """A waiting-room entry; ``assigned_to`` is the provider of its assigned visit."""
        scope = entry.get("scope") or NO_CATEGORY
        entered = entry.get("entered_at")
        status = entry.get("status")
        assigned_at = entry.get("assigned_at") if status == "assigned" else None
        ended = assigned_at
        if status == "left":
            ended = entry.get("left_at") or entry.get("updated_at")
        elif status == "closed":
            ended = entry.get("updated_at")
        if not entered:
            return
        eday = store_day(entered)
        if self._in(eday):
            assert eday is not None
            self._wday(scope, eday).entered += 1
        if ended:
            xday = store_day(ended)
            if self._in(xday):
                assert xday is not None
                if status == "assigned":
                    wait = (from_store(ended) - from_store(entered)).total_seconds() / 86400
                    w = self._wday(scope, xday)
                    w.assigned += 1
                    w.waits.append(wait)
                    if assigned_to:
                        self._row(assigned_to, scope, xday).waits.append(wait)
                else:
                    self._wday(scope, xday).left += 1
        # waiting at the end of each day from the day of entering to the day before leaving
        end_day = store_day(ended)
        start = max(self.first, eday) if eday else self.first
        stop = self.last if end_day is None else min(self.last, end_day - timedelta(days=1))
        d = start
        while d <= stop:
            self._wday(scope, d).waiting_at_end += 1
            d += timedelta(days=1)

    def _wday(self, scope: str, day: date) -> WaitingDay:
        key = (scope, day)
        w = self.waiting.get(key)
        if w is None:
            w = self.waiting[key] = WaitingDay()
        return w

    def to_json(self) -> dict[str, Any]:
        return {
            "report": "activity",
            "from": self.first.isoformat(),
            "to": self.last.isoformat(),
            "rows": [self.rows[k].to_json() for k in sorted(self.rows)],
            "waiting_room": [
                {
                    "scope": scope,
                    "day": day.isoformat(),
                    "entered": w.entered,
                    "left": w.left,
                    "assigned": w.assigned,
                    "waiting_at_end_of_day": w.waiting_at_end,
                    "wait_days_median": _median(w.waits),
                }
                for (scope, day), w in sorted(self.waiting.items())
            ],
        }


ACTIVITY_CSV_COLUMNS = (
    "provider",
    "scope",
    "day",
    "measure",
    "category",
    "channel",
    "reason",
    "status",
    "value",
)


def activity_csv_rows(report: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The activity report in long form: one measure per line (spreadsheet-friendly)."""
    for row in report["rows"]:
        base = {"provider": row["provider"], "scope": row["scope"], "day": row["day"]}
        for cat, states in row["slots"].items():
            for state, n in states.items():
                yield {**base, "measure": "slots", "category": cat, "status": state, "value": n}
        for ch, n in row["bookings"]["by_channel"].items():
            yield {**base, "measure": "bookings", "channel": ch, "value": n}
        for reason, chans in row["cancellations"]["by_reason"].items():
            for ch, n in chans.items():
                yield {
                    **base,
                    "measure": "cancellations",
                    "reason": reason,
                    "channel": ch,
                    "value": n,
                }
        wr = row["waiting_room"]
        if wr["assigned"]:
            yield {**base, "measure": "waiting_room_assigned", "value": wr["assigned"]}
            yield {
                **base,
                "measure": "waiting_room_wait_days_median",
                "value": wr["wait_days_median"],
            }
    for w in report["waiting_room"]:
        base = {"provider": "", "scope": w["scope"], "day": w["day"]}
        for name in ("entered", "left", "assigned", "waiting_at_end_of_day"):
            yield {**base, "measure": f"waiting_room_{name}", "value": w[name]}


# --------------------------------------------------------------------------- compliance


@dataclass
class PairTally:
    """One provider's data for one scope, as the compliance report needs it."""

    schedules: int = 0
    slots: int = 0
    first_slot_at: str | None = None
    visits_after_payment_date: int = 0
    booked_in_cer: int = 0  # through a live channel, before the visit began
    by_channel: Counter[str] = field(default_factory=Counter)


class Compliance:
    """Per provider and scope, against the scope calendar (R-SCOPE-3)."""

    def __init__(self, as_of: datetime) -> None:
        self.as_of = utc(as_of)
        self.pairs: dict[tuple[str, str], PairTally] = defaultdict(PairTally)
        self.providers: dict[str, str] = {}  # id -> name: known providers, with or without data

    def add_provider(self, provider: str, name: str | None) -> None:
        self.providers[provider] = name or ""

    def add_schedule(self, provider: str, schedule: dict[str, Any]) -> None:
        for scope in schedule.get("scopes") or []:
            self.pairs[(provider, scope)].schedules += 1
        self.providers.setdefault(provider, "")

    def add_slot(self, provider: str, slot: dict[str, Any], created: str | None) -> None:
        if slot.get("scope"):
            self.add_slots(provider, slot["scope"], 1, created)

    def add_slots(self, provider: str, scope: str, count: int, first_created: str | None) -> None:
        """``count`` slots of ``scope``, the first of which reached the gateway at
        ``first_created`` (deleted slots count for the first, not for ``count``)."""
        t = self.pairs[(provider, scope)]
        t.slots += count
        if first_created and (t.first_slot_at is None or first_created < t.first_slot_at):
            t.first_slot_at = first_created
        self.providers.setdefault(provider, "")

    def add_appointment(self, provider: str, appt: dict[str, Any], created: str | None) -> None:
        scope = appt.get("scope")
        info = codes.scopes().get(scope or "")
        start = appt.get("start")
        if info is None or not start or appt.get("status") not in VISIT_STATUSES:
            return
        day = store_day(start)
        if day is None or day < info.central_only_payment_from:
            return
        t = self.pairs[(provider, info.code)]
        t.visits_after_payment_date += 1
        channel = appt.get("channel") or "provider"
        t.by_channel[channel] += 1
        booked = appt.get("booked_at") or created
        if channel_group(channel) != "import" and booked is not None and booked <= start:
            t.booked_in_cer += 1

    def to_json(self) -> dict[str, Any]:
        rows = []
        with_data = {p for p, _ in self.pairs}
        for (provider, scope), t in sorted(self.pairs.items()):
            rows.append(self._row(provider, scope, t))
        for provider in sorted(set(self.providers) - with_data):
            rows.append(
                {
                    "provider": provider,
                    "provider_name": self.providers[provider],
                    "scope": None,
                    "schedules_status": "no-schedules",
                    "schedules": 0,
                    "slots": 0,
                }
            )
        return {"report": "compliance", "as_of": to_store(self.as_of), "rows": rows}

    def _row(self, provider: str, scope: str, t: PairTally) -> dict[str, Any]:
        info = codes.scopes().get(scope)
        due = info.schedules_due if info else None
        pay_from = info.central_only_payment_from if info else None
        first_day = store_day(t.first_slot_at)
        today = warsaw_day(self.as_of)
        if first_day is not None and due is not None:
            status = "on-time" if first_day <= due else "late"
        elif due is not None and today > due:
            status = "missing"
        else:
            status = "not-yet-due"
        n = t.visits_after_payment_date
        groups: Counter[str] = Counter()
        for ch, k in t.by_channel.items():
            groups[channel_group(ch)] += k
        return {
            "provider": provider,
            "provider_name": self.providers.get(provider, ""),
            "scope": scope,
            "stage": info.stage if info else None,
            "schedules_due": due.isoformat() if due else None,
            "schedules": t.schedules,
            "slots": t.slots,
            "first_slots_transmitted": t.first_slot_at,
            "schedules_status": status,
            "payment_withheld_risk": status in ("late", "missing"),
            "central_only_payment_from": pay_from.isoformat() if pay_from else None,
            "visits_after_payment_date": n,
            "booked_in_cer": t.booked_in_cer,
            "share_booked_in_cer": round(t.booked_in_cer / n, 4) if n else None,
            "booked_by_patient_channels": groups.get("central", 0),
            "by_channel": dict(sorted(t.by_channel.items())),
        }


COMPLIANCE_CSV_COLUMNS = (
    "provider",
    "provider_name",
    "scope",
    "stage",
    "schedules_due",
    "schedules",
    "slots",
    "first_slots_transmitted",
    "schedules_status",
    "payment_withheld_risk",
    "central_only_payment_from",
    "visits_after_payment_date",
    "booked_in_cer",
    "share_booked_in_cer",
    "booked_by_patient_channels",
)


# --------------------------------------------------------------------------- CSV


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    """A value safe to open in a spreadsheet: text that would start a formula (a provider's
    name, a visit id from its file) is prefixed with ``'`` (CSV injection, OWASP)."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and value != NO_CATEGORY:
        return "'" + value
    return value


def to_csv(rows: Iterable[dict[str, Any]], columns: Iterable[str], delimiter: str = ",") -> str:
    """Rows as CSV text (UTF-8; the caller picks ``;`` for Polish spreadsheets)."""
    buf = io.StringIO()
    w = csv.DictWriter(
        buf,
        fieldnames=list(columns),
        delimiter=delimiter,
        extrasaction="ignore",
        lineterminator="\r\n",
    )
    w.writeheader()
    for row in rows:
        w.writerow({k: _cell(v) for k, v in row.items()})
    return buf.getvalue()
