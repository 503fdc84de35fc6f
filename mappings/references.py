"""Element readers shared by the mappings: references, instants and periods.

References: ``Type/id``, an absolute ``https://host/fhir/Type/id`` (the base is
not checked: the gateway's own base differs between environments) and a
version-specific ``.../_history/n`` are accepted. ``urn:uuid:`` placeholders
belong to transaction Bundles: the transaction assigns ids and rewrites the
references (``rewrite_references``) before the resources are mapped, so a
mapping that still meets one reports it.

Instants: FHIR instants carry an offset; they are stored in UTC
(``gateway.timeutil``). A ``Period`` is made of ``dateTime`` s, which may be a
bare date (or year-month, or year): those are read as days in Europe/Warsaw,
the start at 00:00 and the end at the last millisecond of the day.
Instants and dates are accepted in the years 1900-2999 (in UTC for instants):
the store keeps instants as fixed-width text with a four-digit year, and the
booking rules compute with them; anything outside is an issue, not a crash.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from typing import Any

from gateway.errors import Issue
from gateway.timeutil import WARSAW, from_store, to_fhir, to_store, utc

ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}")
TYPE_RE = re.compile(r"[A-Z][A-Za-z]{1,63}")
URN_UUID = "urn:uuid:"
_PARTIAL_DATE = re.compile(r"(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?")
MIN_YEAR, MAX_YEAR = 1900, 2999
_RANGE = f"between the years {MIN_YEAR} and {MAX_YEAR}"


def is_placeholder(ref: str) -> bool:
    """``urn:uuid:...``: a transaction-local reference, resolved by the transaction."""
    return ref.startswith(URN_UUID)


def _split(ref: str) -> tuple[str, str]:
    """``(type, id)`` of a literal reference; ``ValueError`` saying what is wrong."""
    if not isinstance(ref, str) or not ref:
        raise ValueError("a reference must be a non-empty string")
    return _split_text(ref)


# The same few references come again and again (a Bundle's 500 Slots name one or two
# Schedules): their answers are kept (not the errors, which are raised again).
@lru_cache(maxsize=4096)
def _split_text(ref: str) -> tuple[str, str]:
    if ref.startswith("#"):
        raise ValueError(f"contained reference {ref!r} is not supported here")
    parts = ref.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) < 2:
        raise ValueError(f"{ref!r} is not a reference of the form Type/id")
    rtype, rid = parts[-2], parts[-1]
    prefix = "/".join(parts[:-2])
    if prefix and not re.match(r"https?://[^/]+", prefix):
        raise ValueError(f"{ref!r} is neither Type/id nor an absolute http(s) URL to Type/id")
    if not TYPE_RE.fullmatch(rtype):
        raise ValueError(f"{ref!r} does not name a resource type")
    if not ID_RE.fullmatch(rid):
        raise ValueError(f"{ref!r}: a resource id is 1-64 of A-Z a-z 0-9 - .")
    return rtype, rid


def reference_type(ref: str) -> str | None:
    """The resource type a literal reference names; ``None`` if it names none (or a placeholder)."""
    if not isinstance(ref, str) or is_placeholder(ref):
        return None
    try:
        return _split(ref)[0]
    except ValueError:
        return None


def reference_id(ref: str, rtype: str) -> str | None:
    """The id in a reference to ``rtype``: ``Slot/1``, ``https://x/fhir/Slot/1`` -> ``"1"``.

    ``urn:uuid:...`` -> ``None`` (a transaction resolves those). Anything else
    that is not a reference to ``rtype`` raises ``ValueError`` with a message.
    """
    if isinstance(ref, str) and is_placeholder(ref):
        return None
    found, rid = _split(ref)
    if found != rtype:
        raise ValueError(f"expected a reference to {rtype}, got one to {found} ({ref!r})")
    return rid


def read_reference(el: Any, rtype: str, path: str, issues: list[Issue]) -> str | None:
    """The id a ``Reference`` element (at ``path``) points to, with issues for bad ones."""
    if not isinstance(el, dict):
        issues.append(Issue("structure", "a Reference must be an object", [path]))
        return None
    ref = el.get("reference")
    if ref is None:
        issues.append(
            Issue("required", f"a reference {rtype}/<id> is required", [f"{path}.reference"])
        )
        return None
    try:
        rid = reference_id(ref, rtype)
    except ValueError as exc:
        issues.append(Issue("value", str(exc), [f"{path}.reference"]))
        return None
    if rid is None:
        issues.append(
            Issue(
                "value",
                f"{ref!r} is a transaction-local reference: it resolves only inside a "
                "transaction Bundle that has an entry with this fullUrl",
                [f"{path}.reference"],
            )
        )
    return rid


def rewrite_references(obj: Any, mapping: Mapping[str, str]) -> Any:
    """``obj`` with every ``reference`` found in ``mapping`` replaced: a copy, or ``obj``
    itself when none of its references is in ``mapping`` (so not to be changed in place).

    For transactions: ``{"urn:uuid:...": "Schedule/abc"}`` once ids are assigned.
    Most resources of a transaction name none of its entries (500 slots of existing
    schedules): looking first is cheaper than copying each. Both walks are iterative,
    so that a body nested deeper than Python's recursion limit (a client's junk,
    refused later by validation) cannot crash them.
    """
    if not mapping or not _names_any(obj, mapping):
        return obj
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any]] = [(obj, root, 0)]
    while stack:
        src, parent, key = stack.pop()
        if isinstance(src, dict):
            out: dict[str, Any] = {}
            parent[key] = out
            for k, v in src.items():
                if k == "reference" and isinstance(v, str) and v in mapping:
                    out[k] = mapping[v]
                else:
                    out[k] = None  # keeps the key order; filled from the stack
                    stack.append((v, out, k))
        elif isinstance(src, list):
            items: list[Any] = [None] * len(src)
            parent[key] = items
            stack.extend((v, items, i) for i, v in enumerate(src))
        else:
            parent[key] = src
    return root[0]


def _names_any(obj: Any, mapping: Mapping[str, str]) -> bool:
    """Does any ``reference`` in ``obj`` (at any depth) name a key of ``mapping``?"""
    level = [obj]
    while level:
        inner: list[Any] = []
        for value in level:
            if isinstance(value, dict):
                ref = value.get("reference")
                if isinstance(ref, str) and ref in mapping:
                    return True
                inner.extend(value.values())
            elif isinstance(value, list):
                inner.extend(value)
        level = inner
    return False


def read_instant(value: Any, path: str, issues: list[Issue]) -> datetime | None:
    """An instant with an offset (``Z`` or ``+01:00``) as an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        at = _utc_instant(value)
        if at is not None:
            return at
    else:
        issues.append(Issue("value", "an instant must be an ISO 8601 string", [path]))
        return None
    if "T" not in value:
        issues.append(
            Issue("value", f"{value!r} is a date; an instant needs a time and an offset", [path])
        )
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        issues.append(Issue("value", f"{value!r} is not an ISO 8601 date-time", [path]))
        return None
    if dt.tzinfo is None:
        issues.append(
            Issue("value", f"{value!r} has no time zone offset (add Z or e.g. +01:00)", [path])
        )
        return None
    try:
        at = utc(dt)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        at = None
    if at is None or not MIN_YEAR <= at.year <= MAX_YEAR:
        issues.append(
            Issue("value", f"{value!r} is outside the supported range ({_RANGE})", [path])
        )
        return None
    return at


# Slots come one after another: one's end is often the next one's start.
@lru_cache(maxsize=1024)
def _utc_instant(value: str) -> datetime | None:
    """``read_instant`` of text that is a good instant; ``None`` when it is not (for
    ``read_instant`` to say why)."""
    if "T" not in value:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    if dt.tzinfo is None:
        return None
    try:
        at = utc(dt)
    except OverflowError:
        return None
    return at if MIN_YEAR <= at.year <= MAX_YEAR else None


def read_bound(value: Any, path: str, issues: list[Issue], *, upper: bool) -> datetime | None:
    """A ``Period.start`` (``upper=False``) or ``Period.end`` (``upper=True``) as UTC.

    A bare date (``2027``, ``2027-01``, ``2027-01-11``) is the first (or last)
    moment of that period in Europe/Warsaw; a date-time needs an offset.
    """
    if isinstance(value, str) and "T" not in value:
        m = _PARTIAL_DATE.fullmatch(value)
        if m is None:
            issues.append(Issue("value", f"{value!r} is not a FHIR dateTime", [path]))
            return None
        year, month, day = int(m[1]), m[2], m[3]
        if not MIN_YEAR <= year <= MAX_YEAR:
            issues.append(
                Issue("value", f"{value!r} is outside the supported range ({_RANGE})", [path])
            )
            return None
        try:
            if upper:
                last_month = int(month) if month else 12
                last_day = int(day) if day else calendar.monthrange(year, last_month)[1]
                d = date(year, last_month, last_day)
            else:
                d = date(year, int(month) if month else 1, int(day) if day else 1)
        except ValueError:
            issues.append(Issue("value", f"{value!r} is not a calendar date", [path]))
            return None
        start = datetime.combine(d, time(0), tzinfo=WARSAW)
        if upper:
            nxt = datetime.combine(d + timedelta(days=1), time(0), tzinfo=WARSAW)
            return utc(nxt) - timedelta(milliseconds=1)
        return utc(start)
    return read_instant(value, path, issues)


def store_or_none(dt: datetime | None) -> str | None:
    return to_store(dt) if dt is not None else None


def fhir_instant(stored: str) -> str:
    """A stored instant (``to_store`` text) as FHIR ``instant`` text."""
    return to_fhir(from_store(stored))


def read_period(
    value: Any, path: str, issues: list[Issue]
) -> tuple[datetime | None, datetime | None]:
    """``Period`` -> ``(start, end)`` in UTC; ``end`` before ``start`` is an issue at ``.end``."""
    if value is None:
        return None, None
    if not isinstance(value, dict):
        issues.append(Issue("structure", "a Period must be an object", [path]))
        return None, None
    start = read_bound(value.get("start"), f"{path}.start", issues, upper=False)
    end = read_bound(value.get("end"), f"{path}.end", issues, upper=True)
    if start is not None and end is not None and end < start:
        issues.append(Issue("invariant", "the period ends before it starts", [f"{path}.end"]))
    return start, end


def read_identifiers(res: dict[str, Any]) -> list[dict[str, str | None]]:
    """Business identifiers as ``{system, value}`` pairs (as ``CentralLocation`` keeps them)."""
    return [
        {"system": i.get("system"), "value": i.get("value")}
        for i in res.get("identifier") or []
        if isinstance(i, dict) and i.get("value")
    ]


def write_identifiers(identifiers: list[dict[str, str | None]]) -> list[dict[str, str]]:
    return [{k: v for k, v in i.items() if v is not None} for i in identifiers]
