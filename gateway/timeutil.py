"""Instants: UTC in the store, offsets honoured on input, days in Europe/Warsaw."""

from __future__ import annotations

from datetime import UTC, date, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

WARSAW = ZoneInfo("Europe/Warsaw")


def utc(dt: datetime) -> datetime:
    """An aware datetime in UTC. A naive one is refused: FHIR instants carry offsets."""
    if dt.tzinfo is None:
        raise ValueError("naive datetime: an instant needs a time zone offset")
    return dt.astimezone(UTC)


# A command's writes all carry its one instant (a transaction of 500 slots formats it
# some 1,500 times): the text of recent instants is kept.
@lru_cache(maxsize=1024)
def to_store(dt: datetime) -> str:
    """Fixed-width ISO UTC with milliseconds: sorts lexicographically in every store."""
    return store_text(dt)


def store_text(dt: datetime) -> str:
    """``to_store`` without its cache: for instants each seen once (a Bundle's slots).

    The fields are put together from ready-made digits: ``strftime``, an f-string of
    the fields or ``%`` took two to four times as long. The same text as ``strftime``
    (whose ``%Y`` is not zero-padded either).
    """
    d = dt if dt.tzinfo is UTC else utc(dt)
    two = _TWO_DIGITS
    return (
        f"{d.year}-{two[d.month]}-{two[d.day]}T{two[d.hour]}:{two[d.minute]}:{two[d.second]}"
        f".{_THREE_DIGITS[d.microsecond // 1000]}Z"
    )


_TWO_DIGITS = [f"{i:02d}" for i in range(100)]
_THREE_DIGITS = [f"{i:03d}" for i in range(1000)]


def from_store(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def parse_instant(s: str) -> datetime:
    """Parse an ISO 8601 instant with an offset (``Z`` or ``+01:00``)."""
    return utc(datetime.fromisoformat(s.replace("Z", "+00:00")))


@lru_cache(maxsize=1024)
def to_fhir(dt: datetime) -> str:
    """FHIR ``instant`` text in UTC, e.g. ``2026-11-25T08:00:00Z`` (ms kept when present).

    ``store_text``'s digits, without ``.000`` when the instant has no fraction: a
    command's instant is new to the cache (the clock moves between commands), and
    ``strftime`` took 4 of its 5 us (each assignment of the nightly unlock formats one).
    The same text as ``strftime`` (tests/unit/test_write_fast_paths.py keeps the two in
    step).
    """
    text = store_text(dt)  # with milliseconds, always
    return text if dt.microsecond else f"{text[:-5]}Z"


def warsaw_day(dt: datetime) -> date:
    """The calendar day in Europe/Warsaw (day boundaries follow DST)."""
    return utc(dt).astimezone(WARSAW).date()
