"""FHIR search parameters -> a store filter, for one provider's resources.

Supported parameters are listed in ``PARAMS`` (the CapabilityStatement is
generated from it). An unknown parameter is an error (400), not silently
ignored: a vendor that filters on something we do not support must know.
Dates: a bare date is a whole day in Europe/Warsaw; an instant needs an offset.
Prefixes ``eq ne`` are not supported on dates; ``ge gt le lt eq`` are.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any

from gateway.errors import FhirError, Issue
from gateway.timeutil import WARSAW, parse_instant, to_store
from mappings import codes


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # FHIR search param type: token, reference, date, string
    path: str  # central field (or top-level field) it filters
    doc: str


COMMON = [
    Param("_id", "token", "rid", "logical id (comma-separated for several)"),
    Param("_lastUpdated", "date", "last_updated", "when the resource last changed"),
    Param("identifier", "token", "central.identifiers", "business identifier system|value"),
]

PARAMS: dict[str, list[Param]] = {
    "Location": [
        *COMMON,
        Param(
            "address-city",
            "string",
            "central.city",
            "city: the whole name, case-insensitive (no prefix match)",
        ),
        Param(
            "address-postalcode",
            "string",
            "central.postal_code",
            "postal code 00-000 (the whole code)",
        ),
        Param("status", "token", "central.status", "active | suspended | inactive"),
    ],
    "Schedule": [
        *COMMON,
        Param("actor", "reference", "central.location_id", "the facility: Location/<id>"),
        Param("service-type", "token", "central.scopes", "scope code (or system|code)"),
        Param("active", "token", "central.active", "true | false"),
    ],
    "Slot": [
        *COMMON,
        Param("schedule", "reference", "central.schedule_id", "Schedule/<id>"),
        Param("start", "date", "central.start", "slot start, with ge/gt/le/lt/eq prefixes"),
        Param("status", "token", "central.status", "free | busy | busy-unavailable | ..."),
        Param("service-type", "token", "central.scope", "scope code (or system|code)"),
        Param("appointment-type", "token", "central.category", "slot category code"),
    ],
    "Appointment": [
        *COMMON,
        Param("status", "token", "central.status", "booked | cancelled | waitlist | ..."),
        Param("date", "date", "central.start", "visit start, with ge/gt/le/lt/eq prefixes"),
        Param("slot", "reference", "central.slot_ids", "Slot/<id>"),
        Param(
            "patient:identifier",
            "token",
            "central.patient_pesel",
            f"the patient's PESEL: {codes.PESEL_SYSTEM}|<PESEL>; also finds the patient's "
            "waiting-room entries (provider-less, status waitlist, with the estimated date); "
            "every such search is audited",
        ),
        Param("service-type", "token", "central.scope", "scope code (or system|code)"),
    ],
}

CONTROL = ("_count", "_offset", "_format", "_total")
DEFAULT_COUNT = 50
MAX_COUNT = 1000
MAX_OFFSET = 10_000_000


@dataclass
class Query:
    filter: dict[str, Any]
    sort: list[tuple[str, int]]
    count: int
    offset: int


def bad(param: str, msg: str) -> FhirError:
    return FhirError(400, [Issue("invalid", f"search parameter {param}: {msg}")], code="invalid")


def date_range(param: str, value: str) -> tuple[str, str, str]:
    """``(prefix, low, high)``: the value covers ``[low, high)`` in store form."""
    # ``+01:00`` typed into a URL without encoding arrives as `` 01:00``.
    value = value.replace(" ", "+")
    prefix = "eq"
    if len(value) > 2 and value[:2] in ("eq", "ne", "gt", "ge", "lt", "le", "sa", "eb", "ap"):
        prefix, value = value[:2], value[2:]
    if prefix not in ("eq", "gt", "ge", "lt", "le"):
        raise bad(param, f"prefix {prefix!r} is not supported (use eq, ge, gt, le, lt)")
    try:
        if len(value) == 10:
            day = datetime.fromisoformat(value).date()
            lo = datetime.combine(day, time(0), WARSAW)
            hi = datetime.combine(day + timedelta(days=1), time(0), WARSAW)
        else:
            lo = parse_instant(value)
            hi = lo + timedelta(milliseconds=1)
    except (ValueError, OverflowError) as exc:  # e.g. 0001-01-01T00:00+01:00
        raise bad(param, "use a date YYYY-MM-DD or an instant with an offset") from exc
    return prefix, to_store(lo), to_store(hi)


def date_condition(param: str, values: list[str]) -> dict[str, Any]:
    cond: dict[str, Any] = {}
    for value in values:
        prefix, lo, hi = date_range(param, value)
        if prefix == "eq":
            cond["$gte"], cond["$lt"] = lo, hi
        elif prefix == "ge":
            cond["$gte"] = lo
        elif prefix == "gt":
            cond["$gte"] = hi
        elif prefix == "lt":
            cond["$lt"] = lo
        elif prefix == "le":
            cond["$lt"] = hi
    return cond


def token_value(param: Param, value: str) -> Any:
    system, sep, code = value.partition("|")
    if not sep:
        code = system
    if param.name == "service-type" and sep and system not in (codes.SCOPE_SYSTEM, ""):
        scope = codes.scope_from_coding(system, code)
        if scope is None:
            raise bad(param.name, f"{value!r} maps to no scope")
        return scope
    if param.name == "patient:identifier" and sep and system != codes.PESEL_SYSTEM:
        raise bad(param.name, f"the patient identifier system is {codes.PESEL_SYSTEM}")
    if param.name == "active":
        if code not in ("true", "false"):
            raise bad(param.name, "true or false")
        return code == "true"
    return code


def reference_value(param: Param, value: str) -> str:
    return value.rsplit("/", 1)[-1]


def parse(rtype: str, tenant: str, query: list[tuple[str, str]]) -> Query:
    params = {p.name: p for p in PARAMS[rtype]}
    flt: dict[str, Any] = {"tenant": tenant, "type": rtype, "deleted": False}
    count, offset = DEFAULT_COUNT, 0
    grouped: dict[str, list[str]] = {}
    for name, value in query:
        grouped.setdefault(name, []).append(value)
    for name, values in grouped.items():
        if name == "_count":
            try:
                count = max(0, min(MAX_COUNT, int(values[-1])))
            except ValueError as exc:
                raise bad(name, "an integer") from exc
            continue
        if name == "_offset":
            try:
                offset = max(0, min(MAX_OFFSET, int(values[-1])))
            except ValueError as exc:
                raise bad(name, "an integer") from exc
            continue
        if name in CONTROL:
            continue
        param = params.get(name)
        if param is None:
            known = ", ".join(sorted(params))
            raise bad(name, f"not supported on {rtype}; supported: {known}")
        if param.type == "date":
            flt[param.path] = date_condition(name, values)
            continue
        # several occurrences AND together; commas inside one OR together
        conds: list[dict[str, Any]] = []
        for value in values:
            alts = [v for v in value.split(",") if v != ""]
            if not alts:
                raise bad(name, "empty value")
            if name == "identifier":
                conds.append({"$or": [identifier_cond(a) for a in alts]})
                continue
            if param.type == "reference":
                vals = [reference_value(param, a) for a in alts]
            elif param.type == "string":
                vals = [a.casefold() for a in alts]
            else:
                vals = [token_value(param, a) for a in alts]
            path = f"{FOLDED}.{name}" if param.type == "string" else param.path
            conds.append({path: vals[0] if len(vals) == 1 else {"$in": vals}})
        for cond in conds:
            if "$or" in cond:
                flt.setdefault("$and", []).append(cond)
            else:
                ((path, cond_value),) = cond.items()
                if path in flt:
                    flt.setdefault("$and", []).append(cond)
                else:
                    flt[path] = cond_value
    sort = (
        [("central.start", 1), ("rid", 1)]
        if rtype in ("Slot", "Appointment")
        else [("last_updated", 1), ("rid", 1)]
    )
    return Query(flt, sort, count, offset)


# String parameters match case-insensitively on a case-folded copy of their values,
# kept on the stored document (``resources.apply_put``) under this key.
FOLDED = "folded"


def folded(rtype: str, central: dict[str, Any]) -> dict[str, str]:
    """``{parameter name: case-folded value}`` of the string parameters of ``rtype``."""
    out: dict[str, str] = {}
    for p in PARAMS.get(rtype, []):
        if p.type != "string":
            continue
        value = central.get(p.path.removeprefix("central."))
        if isinstance(value, str):
            out[p.name] = value.casefold()
    return out


def identifier_cond(value: str) -> dict[str, Any]:
    system, sep, val = value.partition("|")
    if not sep:
        return {"central.identifiers.value": system}
    if not system:
        return {"central.identifiers.value": val}
    if not val:
        return {"central.identifiers.system": system}
    return {"ident_keys": f"{system}|{val}"}
