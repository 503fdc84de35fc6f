"""Reconciliation with the provider's AP-KOLCE-style export of booked visits (R-SCHED-5).

The facility compares what the gateway holds with its own list of booked
visits (the webinar: "porównać dane z przesłanego oświadczenia z AP-KOLCE"),
per scope and per day: counts on both sides, visits missing on either side,
visits that differ and in which field. The CSV is documented in
``docs/reconciliation.md``; in short:

- UTF-8 (a BOM is fine; Windows-1250 is accepted when the file is not UTF-8),
  delimiter ``;`` or ``,`` (taken from the header line), a header row;
- columns (any order, names case-insensitive, Polish aliases in brackets):
  ``visit_id`` (*id_wizyty*, required): the identifier the provider gave the
  Appointment (``Appointment.identifier.value``), or the gateway's
  Appointment id for visits booked in IKP; ``id_system`` (optional): the
  identifier's system, when values are not unique across systems;
  ``scope`` (*zakres*, required): a scope code or a cell-specialty code
  (``1100``); ``start`` (*termin*, required): the visit's start, Warsaw time
  (``2027-01-12 08:00``, ``2027-01-12T08:00``, ``12.01.2027 08:00``) or ISO 8601
  with an offset; ``category`` (*kategoria*): a slot-category code;
  ``status``: ``booked`` (default), ``cancelled``, ``fulfilled``... (Polish
  ``umówiona``, ``odwołana``, ``zrealizowana``); ``pesel`` or
  ``pesel_sha256`` (hex SHA-256 of the 11 digits): compared, never echoed;
  ``line``: the row's line in the original file (messages name it), for a
  file the command line split into parts.

Pure: parsing and comparing; ``gateway.report_service`` reads the store.
PESELs are compared and dropped: no output or log line carries one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from gateway.timeutil import WARSAW, from_store, to_store, warsaw_day
from mappings import codes

VISIT_STATUSES = frozenset({"pending", "booked", "arrived", "checked-in", "fulfilled", "noshow"})
STATUS_ALIASES = {
    "umówiona": "booked",
    "umowiona": "booked",
    "zarezerwowana": "booked",
    "odwołana": "cancelled",
    "odwolana": "cancelled",
    "anulowana": "cancelled",
    "zrealizowana": "fulfilled",
    "canceled": "cancelled",
}
KNOWN_STATUSES = VISIT_STATUSES | {"cancelled"}
COLUMNS = {
    "visit_id": ("visit_id", "id_wizyty", "identyfikator"),
    "id_system": ("id_system", "system"),
    "scope": ("scope", "zakres"),
    "start": ("start", "termin", "data_wizyty"),
    "category": ("category", "kategoria"),
    "status": ("status",),
    "pesel": ("pesel",),
    "pesel_sha256": ("pesel_sha256",),
    # the row's line in the original file, when the file was split (cer-gateway reconcile)
    "line": ("line", "nr_wiersza"),
}
REQUIRED = ("visit_id", "scope", "start")
MAX_REJECTED_SHOWN = 1000
_LOCAL_FORMATS = (
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%dT%H:%M:%S",
    "%d.%m.%Y %H:%M",
    "%d.%m.%Y %H:%M:%S",
)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ExportError(ValueError):
    """The file cannot be read as an export at all (no header, a required column missing)."""


@dataclass(frozen=True)
class ExportVisit:
    """One row of the provider's export, checked (no PESEL kept: only its hash)."""

    line: int
    visit_id: str
    id_system: str | None
    scope: str
    start: str  # store instant
    category: str | None
    status: str
    day: date  # the visit's Warsaw day
    patient_hash: str | None = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        return self.status in VISIT_STATUSES


@dataclass(frozen=True)
class HeldVisit:
    """A visit the gateway holds for the provider (from an Appointment's central model)."""

    appointment: str  # the resource id
    identifiers: tuple[tuple[str, str], ...]  # (system, value)
    scope: str | None
    start: str | None
    category: str | None
    status: str
    patient_hash: str | None = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        return self.status in VISIT_STATUSES

    @property
    def day(self) -> date | None:
        return warsaw_day(from_store(self.start)) if self.start else None


def pesel_hash(pesel: str) -> str:
    return hashlib.sha256(pesel.strip().encode()).hexdigest()


def held_visit(rid: str, central: dict[str, Any]) -> HeldVisit:
    pesel = central.get("patient_pesel")
    return HeldVisit(
        appointment=rid,
        identifiers=tuple(
            (str(i.get("system") or ""), str(i["value"]))
            for i in central.get("identifiers") or []
            if i.get("value")
        ),
        scope=central.get("scope"),
        start=central.get("start"),
        category=central.get("category"),
        status=central.get("status", ""),
        patient_hash=pesel_hash(pesel) if pesel else None,
    )


# --------------------------------------------------------------------------- parsing


def decode(data: bytes) -> str:
    """UTF-8 (with or without BOM); Windows-1250, the other common Polish export encoding."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1250")


_ISO_LOCAL = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2})(?::(\d{2}))?$")
_PL_LOCAL = re.compile(r"^(\d{2})\.(\d{2})\.(\d{4}) (\d{2}):(\d{2})(?::(\d{2}))?$")


def parse_start(value: str) -> datetime:
    v = value.strip()
    # the common shapes without strptime (a third of the cost of a large export)
    m = _ISO_LOCAL.match(v)
    if m:
        y, mo, d, h, mi, sec = m.groups()
        return datetime(int(y), int(mo), int(d), int(h), int(mi), int(sec or 0), tzinfo=WARSAW)
    m = _PL_LOCAL.match(v)
    if m:
        d, mo, y, h, mi, sec = m.groups()
        return datetime(int(y), int(mo), int(d), int(h), int(mi), int(sec or 0), tzinfo=WARSAW)
    for fmt in _LOCAL_FORMATS:
        try:
            return datetime.strptime(v, fmt).replace(tzinfo=WARSAW)
        except ValueError:
            continue
    dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        return dt.replace(tzinfo=WARSAW)
    return dt


def delimiter_of(header_line: str) -> str:
    """``;`` or ``,``: whichever the header line uses (``;`` when both)."""
    return ";" if header_line.count(";") >= header_line.count(",") and ";" in header_line else ","


def columns(header: list[str]) -> dict[str, int]:
    names = [h.strip().lower() for h in header]
    found: dict[str, int] = {}
    for key, aliases in COLUMNS.items():
        for alias in aliases:
            if alias in names:
                found[key] = names.index(alias)
                break
    missing = [k for k in REQUIRED if k not in found]
    if missing:
        raise ExportError(
            f"the header lacks the column(s) {', '.join(missing)}; "
            f"required: {', '.join(REQUIRED)} (see docs/reconciliation.md)"
        )
    return found


def parse_export(text: str) -> tuple[list[ExportVisit], list[dict[str, Any]]]:
    """The export's visits and the rows rejected (``{line, error}``; never a PESEL)."""
    text = text.removeprefix("\ufeff")  # a BOM left by an editor that saved "UTF-8 with BOM"
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), None)
    if first is None:
        raise ExportError("the file is empty: a header row is required")
    delimiter = delimiter_of(first)
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header: list[str] | None = None
    cols: dict[str, int] = {}
    visits: list[ExportVisit] = []
    rejected: list[dict[str, Any]] = []
    seen: set[tuple[str | None, str]] = set()
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = row
            cols = columns(row)
            continue
        line = reader.line_num
        original = row[cols["line"]].strip() if "line" in cols and cols["line"] < len(row) else ""
        if original.isdigit():
            line = int(original)

        def cell(name: str, row: list[str] = row, cols: dict[str, int] = cols) -> str:
            i = cols.get(name)
            return row[i].strip() if i is not None and i < len(row) else ""

        try:
            visit = _visit(line, cell)
        except ValueError as exc:
            rejected.append({"line": line, "error": str(exc)})
            continue
        key = (visit.id_system, visit.visit_id)
        if key in seen:
            rejected.append({"line": line, "error": f"visit_id {visit.visit_id!r} repeats"})
            continue
        seen.add(key)
        visits.append(visit)
    if header is None:
        raise ExportError("the file is empty: a header row is required")
    return visits, rejected


def _visit(line: int, cell: Any) -> ExportVisit:
    visit_id = cell("visit_id")
    if not visit_id:
        raise ValueError("visit_id is empty")
    raw_scope = cell("scope")
    scope = raw_scope if raw_scope in codes.scopes() else codes.cell_specialty_map().get(raw_scope)
    if scope is None:
        raise ValueError(f"scope {raw_scope!r} is neither a scope code nor a cell-specialty code")
    try:
        start = parse_start(cell("start"))
    except ValueError:
        raise ValueError(
            f"start {cell('start')!r} is not a date-time (2027-01-12 08:00, Warsaw time)"
        ) from None
    category = cell("category") or None
    if category is not None and category not in codes.slot_categories():
        raise ValueError(f"category {category!r} is not a slot-category code")
    raw_status = cell("status").lower() or "booked"
    status = STATUS_ALIASES.get(raw_status, raw_status)
    if status not in KNOWN_STATUSES:
        raise ValueError(f"status {raw_status!r} is not a visit status")
    patient: str | None = None
    pesel = cell("pesel")
    if pesel:
        if not (len(pesel) == 11 and pesel.isdigit()):
            raise ValueError("pesel is not 11 digits")  # never echo it
        patient = pesel_hash(pesel)
    elif cell("pesel_sha256"):
        patient = cell("pesel_sha256").lower()
        if not _HEX64.match(patient):
            raise ValueError("pesel_sha256 is not 64 hexadecimal digits")
    return ExportVisit(
        line=line,
        visit_id=visit_id,
        id_system=cell("id_system") or None,
        scope=scope,
        start=to_store(start),
        category=category,
        status=status,
        day=start.astimezone(WARSAW).date(),
        patient_hash=patient,
    )


# --------------------------------------------------------------------------- comparing


@dataclass
class DayResult:
    scope: str
    day: date
    provider_count: int = 0
    gateway_count: int = 0
    matching: int = 0
    missing_in_gateway: list[dict[str, Any]] = field(default_factory=list)
    missing_in_export: list[dict[str, Any]] = field(default_factory=list)
    differing: list[dict[str, Any]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return (
            self.provider_count == self.gateway_count
            and not self.missing_in_gateway
            and not self.missing_in_export
            and not self.differing
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "day": self.day.isoformat(),
            "provider_count": self.provider_count,
            "gateway_count": self.gateway_count,
            "matching": self.matching,
            "missing_in_gateway": self.missing_in_gateway,
            "missing_in_export": self.missing_in_export,
            "differing": self.differing,
        }


def _local(instant: str | None) -> str | None:
    """Warsaw wall time with its offset: what the facility's staff see in their system."""
    return from_store(instant).astimezone(WARSAW).isoformat(timespec="seconds") if instant else None


def _differences(e: ExportVisit, h: HeldVisit) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if e.start != h.start:
        out.append({"field": "start", "export": _local(e.start), "gateway": _local(h.start)})
    if e.scope != h.scope:
        out.append({"field": "scope", "export": e.scope, "gateway": h.scope})
    if e.category is not None and e.category != h.category:
        out.append({"field": "category", "export": e.category, "gateway": h.category})
    if e.active != h.active:
        out.append({"field": "status", "export": e.status, "gateway": h.status})
    if e.patient_hash is not None and e.patient_hash != h.patient_hash:
        # which patient is not said: PESELs are never echoed
        out.append({"field": "patient", "export": None, "gateway": None})
    return out


def reconcile(
    provider: str, export: Iterable[ExportVisit], held: Iterable[HeldVisit]
) -> dict[str, Any]:
    """Compare the export with the gateway's visits; per scope and day (R-SCHED-5).

    Visits are matched by the identifier the provider gave the Appointment
    (with ``id_system`` when given), else by the Appointment's id. A matched
    visit counts on its own day on each side; what differs is listed under the
    export's scope and day, a gateway visit missing from the export under the
    gateway's. Cancelled visits count on neither side, but a visit cancelled on
    one side only is a status difference.
    """
    held_list = list(held)
    by_pair: dict[tuple[str, str], list[HeldVisit]] = defaultdict(list)
    by_value: dict[str, list[HeldVisit]] = defaultdict(list)
    by_id: dict[str, HeldVisit] = {}
    for h in held_list:
        by_id[h.appointment] = h
        for system, value in h.identifiers:
            by_pair[(system, value)].append(h)
            by_value[value].append(h)
    days: dict[tuple[str, date], DayResult] = {}

    def day_of(scope: str | None, day: date | None) -> DayResult:
        key = (scope or "-", day or date.min)
        if key not in days:
            days[key] = DayResult(*key)
        return days[key]

    matched: set[str] = set()
    ambiguous: list[dict[str, Any]] = []
    for e in export:
        cands = by_pair[(e.id_system, e.visit_id)] if e.id_system else by_value[e.visit_id]
        if not cands and e.visit_id in by_id:
            cands = [by_id[e.visit_id]]
        cands = [h for h in cands if h.appointment not in matched]
        if len(cands) > 1:
            # the same value under two identifier systems: a cancelled copy and a live one
            live = [h for h in cands if h.active]
            cands = live if len(live) == 1 else cands
        here = day_of(e.scope, e.day)
        if e.active:
            here.provider_count += 1
        if len(cands) > 1:
            ambiguous.append(
                {
                    "line": e.line,
                    "error": f"visit_id {e.visit_id!r} matches {len(cands)} "
                    "visits under different identifier systems: add id_system",
                }
            )
            continue
        if not cands:
            if e.active:
                here.missing_in_gateway.append(
                    {
                        "visit_id": e.visit_id,
                        "line": e.line,
                        "start": _local(e.start),
                        "category": e.category,
                    }
                )
            continue
        h = cands[0]
        matched.add(h.appointment)
        diffs = _differences(e, h)
        if diffs:
            here.differing.append(
                {
                    "visit_id": e.visit_id,
                    "line": e.line,
                    "appointment": h.appointment,
                    "fields": diffs,
                }
            )
        elif e.active:
            here.matching += 1
    for h in held_list:
        if not h.active:
            continue
        there = day_of(h.scope, h.day)
        there.gateway_count += 1
        if h.appointment not in matched:
            there.missing_in_export.append(
                {
                    "appointment": h.appointment,
                    "identifier": h.identifiers[0][1] if h.identifiers else None,
                    "start": _local(h.start),
                    "category": h.category,
                    "status": h.status,
                }
            )
    rows = [days[k] for k in sorted(days)]
    totals = {
        "provider_count": sum(d.provider_count for d in rows),
        "gateway_count": sum(d.gateway_count for d in rows),
        "matching": sum(d.matching for d in rows),
        "missing_in_gateway": sum(len(d.missing_in_gateway) for d in rows),
        "missing_in_export": sum(len(d.missing_in_export) for d in rows),
        "differing": sum(len(d.differing) for d in rows),
    }
    return {
        "report": "reconciliation",
        "provider": provider,
        "matches": all(d.clean for d in rows) and not ambiguous,
        "totals": totals,
        "days": [d.to_json() for d in rows],
        "unmatched_rows": ambiguous,
    }


CSV_COLUMNS = (
    "scope",
    "day",
    "kind",
    "provider_count",
    "gateway_count",
    "visit_id",
    "appointment",
    "field",
    "export_value",
    "gateway_value",
)


def csv_rows(result: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One ``counts`` line per scope and day, then one line per finding (and per field)."""
    for d in result["days"]:
        base = {"scope": d["scope"], "day": d["day"]}
        yield {
            **base,
            "kind": "counts",
            "provider_count": d["provider_count"],
            "gateway_count": d["gateway_count"],
        }
        for m in d["missing_in_gateway"]:
            yield {
                **base,
                "kind": "missing-in-gateway",
                "visit_id": m["visit_id"],
                "export_value": m["start"],
            }
        for m in d["missing_in_export"]:
            yield {
                **base,
                "kind": "missing-in-export",
                "visit_id": m["identifier"],
                "appointment": m["appointment"],
                "gateway_value": m["start"],
            }
        for x in d["differing"]:
            for f in x["fields"]:
                yield {
                    **base,
                    "kind": "differs",
                    "visit_id": x["visit_id"],
                    "appointment": x["appointment"],
                    "field": f["field"],
                    "export_value": f["export"],
                    "gateway_value": f["gateway"],
                }
    for r in result.get("rejected_rows", []) + result.get("unmatched_rows", []):
        yield {"kind": "rejected-row", "visit_id": f"line {r['line']}", "field": r["error"]}


def summary(result: dict[str, Any]) -> str:
    """A readable summary for the command line."""
    t = result["totals"]
    out = [
        f"Reconciliation for {result['provider']} ({result.get('from')} .. {result.get('to')}): "
        + ("MATCHES" if result["matches"] else "DIFFERENCES"),
        f"  export: {t['provider_count']} booked visits   gateway: {t['gateway_count']}   "
        f"matching: {t['matching']}",
        f"  missing in gateway: {t['missing_in_gateway']}   missing in export: "
        f"{t['missing_in_export']}   differing: {t['differing']}",
        "",
        f"  {'scope':<16}{'day':<12}{'export':>8}{'gateway':>9}{'missing gw':>12}"
        f"{'missing exp':>13}{'differ':>8}",
    ]
    for d in result["days"]:
        mark = "" if _day_clean(d) else "  <--"
        out.append(
            f"  {d['scope']:<16}{d['day']:<12}{d['provider_count']:>8}{d['gateway_count']:>9}"
            f"{len(d['missing_in_gateway']):>12}{len(d['missing_in_export']):>13}"
            f"{len(d['differing']):>8}{mark}"
        )
    details = []
    for d in result["days"]:
        for m in d["missing_in_gateway"]:
            details.append(
                f"  missing in gateway: {m['visit_id']} at {m['start']} (line {m['line']})"
            )
        for m in d["missing_in_export"]:
            who = m["identifier"] or f"Appointment/{m['appointment']}"
            details.append(f"  missing in export:  {who} at {m['start']}")
        for x in d["differing"]:
            fields = ", ".join(
                f"{f['field']}" + (f" {f['export']} vs {f['gateway']}" if f["export"] else "")
                for f in x["fields"]
            )
            details.append(f"  differs:            {x['visit_id']}: {fields}")
    for r in result.get("rejected_rows", []) + result.get("unmatched_rows", []):
        details.append(f"  rejected row:       line {r['line']}: {r['error']}")
    if details:
        out += ["", *details]
    return "\n".join(out) + "\n"


def _day_clean(d: dict[str, Any]) -> bool:
    return (
        d["provider_count"] == d["gateway_count"]
        and not d["missing_in_gateway"]
        and not d["missing_in_export"]
        and not d["differing"]
    )
