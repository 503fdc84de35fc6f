"""A weekly pattern of slots, as a facility types it by hand (the manual-entry page).

"Mondays and Thursdays 8:00-12:00, 20-minute slots, for 6 weeks from 11 January;
each day 1 urgent, 9 stable, 1 privileged and 1 control": the facility decides
how many slots of each category a day gets (R-SCHED-3). Times are wall-clock
times in Europe/Warsaw (DOMAIN.md Time): 8:00 is 8:00 in winter and in summer.
A local time the clock skips when DST starts does not exist and is left out
(counted in ``skipped``); one that happens twice when DST ends is its first
occurrence.

Pure code: no I/O. The web page turns each planned slot into a FHIR ``Slot`` and
sends them through the same transaction path as ``POST /fhir``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from gateway.timeutil import WARSAW

MAX_WEEKS = 52
MIN_MINUTES = 5
MAX_MINUTES = 480


@dataclass(frozen=True)
class PlannedSlot:
    start: datetime  # aware, Europe/Warsaw
    end: datetime
    category: str | None


@dataclass(frozen=True)
class WeeklyPattern:
    """``weekdays``: 0 = Monday ... 6 = Sunday. ``counts``: slots per day of each
    category, in the order they fill the day (``None`` = no category)."""

    first_day: date
    weeks: int
    weekdays: frozenset[int]
    day_start: time
    day_end: time
    minutes: int
    counts: tuple[tuple[str | None, int], ...]

    @property
    def slots_per_day(self) -> int:
        return slots_per_day(self.day_start, self.day_end, self.minutes)

    def days(self) -> list[date]:
        """The dates the pattern covers, in order."""
        return [
            d
            for d in (self.first_day + timedelta(days=i) for i in range(self.weeks * 7))
            if d.weekday() in self.weekdays
        ]


def slots_per_day(day_start: time, day_end: time, minutes: int) -> int:
    """How many whole slots of ``minutes`` fit between the two times (0 if none)."""
    if minutes <= 0:
        return 0
    span = (day_end.hour * 60 + day_end.minute) - (day_start.hour * 60 + day_start.minute)
    return max(0, span // minutes)


def _exists(naive: datetime) -> datetime | None:
    """The Warsaw instant of a wall-clock time, or None if the clock skips it (DST)."""
    aware = naive.replace(tzinfo=WARSAW, fold=0)
    back = aware.astimezone(UTC).astimezone(WARSAW).replace(tzinfo=None)
    return aware if back == naive else None


@dataclass(frozen=True)
class Expansion:
    slots: list[PlannedSlot]
    skipped: int  # wall-clock times that do not exist (the DST gap)


def expand(pattern: WeeklyPattern) -> Expansion:
    """Every slot of the pattern, day by day; categories fill each day in order."""
    if not 1 <= pattern.weeks <= MAX_WEEKS:
        raise ValueError(f"weeks must be 1-{MAX_WEEKS}")
    if not MIN_MINUTES <= pattern.minutes <= MAX_MINUTES:
        raise ValueError(f"a slot lasts {MIN_MINUTES}-{MAX_MINUTES} minutes")
    per_day = pattern.slots_per_day
    if sum(n for _, n in pattern.counts) != per_day:
        raise ValueError(f"the category counts must add up to the {per_day} slots of a day")
    categories = [cat for cat, n in pattern.counts for _ in range(n)]
    out: list[PlannedSlot] = []
    skipped = 0
    step = timedelta(minutes=pattern.minutes)
    for day in pattern.days():
        wall = datetime.combine(day, pattern.day_start)
        for category in categories:
            begin, finish = _exists(wall), _exists(wall + step)
            if begin is None or finish is None:
                skipped += 1
            else:
                out.append(PlannedSlot(begin, finish, category))
            wall += step
    return Expansion(out, skipped)
