"""Code systems, concept maps and identifier systems, loaded once from ``mappings/data``.

The code lists are data, not code (R-SCOPE-2): adding a scope, a cancellation
reason or a cell-specialty mapping is an edit of a JSON file. The system URLs
are part of the external contract (ARCHITECTURE.md "Codes") and are constants
here; the loader checks that the data files agree with them.

Also here: the readers the resource mappings share for coded elements
(``CodeableConcept`` -> our code, with ``Issue`` s for bad codes) and the
``coding`` writer used by ``to_fhir``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date
from functools import cache
from importlib import resources
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import Issue

BASE = "http://cer-gateway.org/fhir"
SCOPE_SYSTEM = f"{BASE}/CodeSystem/scope"
SLOT_CATEGORY_SYSTEM = f"{BASE}/CodeSystem/slot-category"
CANCELLATION_REASON_SYSTEM = f"{BASE}/CodeSystem/cancellation-reason"
APPOINTMENT_CHANNEL_SYSTEM = f"{BASE}/CodeSystem/appointment-channel"
CELL_SPECIALTY_SCOPE_MAP = f"{BASE}/ConceptMap/cell-specialty-scope"
# Part VIII of the *kod resortowy*: the specialty of an organisational cell (e.g. 1100).
CELL_SPECIALTY_SYSTEM = "urn:oid:2.16.840.1.113883.3.4424.11.2.4"

PESEL_SYSTEM = "urn:oid:2.16.840.1.113883.3.4424.1.1.616"
E_REFERRAL_SYSTEM = f"{BASE}/sid/e-referral"
RPWDL_ENTITY_SYSTEM = "urn:oid:2.16.840.1.113883.3.4424.2.3.1"
RPWDL_UNIT_SYSTEM = "urn:oid:2.16.840.1.113883.3.4424.2.3.2"
RPWDL_CELL_SYSTEM = "urn:oid:2.16.840.1.113883.3.4424.2.3.3"
REGON9_SYSTEM = "urn:oid:2.16.840.1.113883.3.4424.2.2.1"
REGON14_SYSTEM = "urn:oid:2.16.840.1.113883.3.4424.2.2.2"
NPWZ_SYSTEM = "urn:oid:2.16.840.1.113883.3.4424.1.6.2"

# Extensions of our Appointment (documented in the README's FHIR section).
EXT_BOOKING_CHANNEL = f"{BASE}/StructureDefinition/booking-channel"  # valueCoding
EXT_PATIENT_CONTACT = f"{BASE}/StructureDefinition/patient-contact"  # valueContactPoint, 0..*
EXT_PRIVILEGED = f"{BASE}/StructureDefinition/privileged"  # valueBoolean (R-PAT-5)
# R4 has no Appointment.cancellationDate (R5 has): the cross-version extension carries it.
EXT_CANCELLATION_DATE = (
    "http://hl7.org/fhir/5.0/StructureDefinition/extension-Appointment.cancellationDate"
)


class _Data(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


M = TypeVar("M", bound=_Data)


class ScreeningRule(_Data):
    """Who a screening programme is for and how often (SIMP; R-PAT-3, R-PAT-4)."""

    sex: Literal["female", "male"]
    min_age: int
    max_age: int
    interval_years: int
    hpv_interval_years: int | None = None  # cytology with an HPV test: every 5 years
    high_risk_interval_years: int | None = None  # mammography with genetic risk: every year


class ScopeInfo(_Data):
    """One scope (*zakres*) of central e-registration and the rules that depend on it."""

    code: str
    display_pl: str
    display_en: str
    stage: int = Field(ge=1)
    rollout_from: date
    schedules_due: date  # R-SCOPE-3: schedules transmitted by (else NFZ withholds payment)
    central_only_payment_from: date  # R-SCOPE-3: NFZ pays only for centrally booked visits
    kind: Literal["specialist", "screening"]
    referral_required_first_time: bool  # R-PAT-2 / R-PAT-3
    self_booking_days: int  # R-WAIT-2 (40), R-PAT-4 (90)
    waiting_room: bool  # R-WAIT-1: the *Poczekalnia* covers this scope
    slot_category_required: bool = False  # R-SCHED-3: cardiology slots carry a category
    screening: ScreeningRule | None = None


class SlotCategoryInfo(_Data):
    """A slot category on ``Slot.appointmentType`` (R-SCHED-3)."""

    code: str
    display_pl: str
    display_en: str
    first_time: bool  # R-PAT-1
    patient_self_bookable: bool  # R-PAT-5, R-PAT-6, R-PAT-8
    medical_category: Literal["urgent", "stable", "privileged"] | None


class CancellationReasonInfo(_Data):
    """A reason from the fixed list a cancellation carries (R-CAN-1)."""

    code: str
    display_pl: str
    display_en: str
    by: Literal["patient", "provider", "system"]


class ChannelInfo(_Data):
    """Where a visit was booked (provider system, IKP, SMS, waiting room, manual page, import)."""

    code: str
    display_pl: str
    display_en: str
    group: Literal["central", "facility", "import"]  # for the reports (issue 9)


class IdentifierSystemInfo(_Data):
    key: str
    system: str
    display_pl: str
    display_en: str
    pattern: str | None = None
    used_on: list[str] = Field(default_factory=list)


def _load(name: str) -> dict[str, Any]:
    text = resources.files("mappings").joinpath("data", name).read_text(encoding="utf-8")
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"mappings/data/{name}: expected a JSON object")
    return data


def _code_system(name: str, url: str, model: type[M]) -> dict[str, M]:
    data = _load(name)
    if data.get("url") != url:
        raise ValueError(f"mappings/data/{name}: url is {data.get('url')!r}, expected {url!r}")
    out: dict[str, M] = {}
    for concept in data.get("concept") or []:
        item = model.model_validate(concept)
        code = concept["code"]
        if code in out:
            raise ValueError(f"mappings/data/{name}: code {code!r} appears twice")
        out[code] = item
    if not out:
        raise ValueError(f"mappings/data/{name}: no concepts")
    return out


@cache
def _scopes() -> dict[str, ScopeInfo]:
    return _code_system("scope.json", SCOPE_SYSTEM, ScopeInfo)


@cache
def _slot_categories() -> dict[str, SlotCategoryInfo]:
    return _code_system("slot-category.json", SLOT_CATEGORY_SYSTEM, SlotCategoryInfo)


@cache
def _cancellation_reasons() -> dict[str, CancellationReasonInfo]:
    return _code_system(
        "cancellation-reason.json", CANCELLATION_REASON_SYSTEM, CancellationReasonInfo
    )


@cache
def _channels() -> dict[str, ChannelInfo]:
    return _code_system("appointment-channel.json", APPOINTMENT_CHANNEL_SYSTEM, ChannelInfo)


@cache
def _cell_specialty_map() -> dict[str, str]:
    data = _load("cell-specialty-scope.json")
    if data.get("source") != CELL_SPECIALTY_SYSTEM or data.get("target") != SCOPE_SYSTEM:
        raise ValueError("mappings/data/cell-specialty-scope.json: wrong source or target system")
    known = _scopes()
    out: dict[str, str] = {}
    for el in data.get("element") or []:
        code, target = str(el["code"]), str(el["target"])
        if target not in known:
            raise ValueError(
                f"mappings/data/cell-specialty-scope.json: {code} maps to unknown scope {target!r}"
            )
        if code in out:
            raise ValueError(f"mappings/data/cell-specialty-scope.json: {code} appears twice")
        out[code] = target
    return out


@cache
def _identifier_systems() -> dict[str, IdentifierSystemInfo]:
    data = _load("identifier-systems.json")
    out: dict[str, IdentifierSystemInfo] = {}
    for item in data.get("system") or []:
        info = IdentifierSystemInfo.model_validate(item)
        out[info.key] = info
    return out


# Public accessors: each returns a fresh dict over the cached, frozen entries.


def scopes() -> dict[str, ScopeInfo]:
    """All scopes by code (``cardiology``, ``mammography``, ...)."""
    return dict(_scopes())


def slot_categories() -> dict[str, SlotCategoryInfo]:
    """All slot categories by code (``first-urgent``, ``first-stable``, ...)."""
    return dict(_slot_categories())


def cancellation_reasons() -> dict[str, CancellationReasonInfo]:
    """The fixed list of cancellation reasons by code (R-CAN-1)."""
    return dict(_cancellation_reasons())


def channels() -> dict[str, ChannelInfo]:
    """Booking channels by code (``provider``, ``portal``, ``sms``, ...)."""
    return dict(_channels())


def cell_specialty_map() -> dict[str, str]:
    """Cell-specialty code (kod resortowy part VIII) -> scope code."""
    return dict(_cell_specialty_map())


def identifier_systems() -> dict[str, IdentifierSystemInfo]:
    """Identifier systems by key (``pesel``, ``e-referral``, ``rpwdl-cell``, ``regon-9``, ...)."""
    return dict(_identifier_systems())


def scope_table() -> Mapping[str, ScopeInfo]:
    """``scopes()`` itself, not a copy, for readers that only look (once a Slot)."""
    return _scopes()


def slot_category_table() -> Mapping[str, SlotCategoryInfo]:
    """``slot_categories()`` itself, not a copy, for readers that only look."""
    return _slot_categories()


def scope_from_coding(system: str | None, code: str | None) -> str | None:
    """The scope a ``Coding`` names: our scope system directly, or a mapped cell specialty."""
    if code is None:
        return None
    if system == SCOPE_SYSTEM:
        return code if code in _scopes() else None
    if system == CELL_SPECIALTY_SYSTEM:
        return _cell_specialty_map().get(code)
    return None


def referral_required(scope: str, category: str | None) -> bool:
    """Does a visit of ``scope`` in slot ``category`` need an e-referral? (R-PAT-2, R-PAT-3)

    Only first-time visits need one; a visit without a category is not known to
    be first-time, so the question is left to the booking rules.
    """
    info = _scopes().get(scope)
    cat = _slot_categories().get(category) if category else None
    return bool(info and info.referral_required_first_time and cat and cat.first_time)


_DISPLAYS: dict[str, Any] = {
    SCOPE_SYSTEM: _scopes,
    SLOT_CATEGORY_SYSTEM: _slot_categories,
    CANCELLATION_REASON_SYSTEM: _cancellation_reasons,
    APPOINTMENT_CHANNEL_SYSTEM: _channels,
}


def coding(system: str, code: str) -> dict[str, str]:
    """A ``Coding`` of one of our code systems, with its Polish display."""
    out = {"system": system, "code": code}
    loader = _DISPLAYS.get(system)
    info = loader().get(code) if loader else None
    if info is not None:
        out["display"] = info.display_pl
    return out


# Readers shared by the resource mappings. Each appends Issues with FHIRPath
# expressions and returns what it could read.


def plain_scope(cc: Any) -> str | None:
    """The scope of a ``CodeableConcept`` of one coding: our scope system with a known
    code, or a mapped cell specialty; ``None`` for anything else (``read_scope`` reads
    that). What ``read_scope`` answers for it, without a word to say (a Slot each)."""
    if type(cc) is dict:
        codings = cc.get("coding")
        if type(codings) is list and len(codings) == 1:
            c = codings[0]
            if type(c) is dict:
                system, code = c.get("system"), c.get("code")
                if system == SCOPE_SYSTEM:
                    return code if type(code) is str and code in _scopes() else None
                if system == CELL_SPECIALTY_SYSTEM and type(code) is str:
                    return _cell_specialty_map().get(code) or None
    return None


def read_scope(cc: Any, path: str, issues: list[Issue]) -> str | None:
    """The scope one ``CodeableConcept`` (``serviceType[i]``) carries, directly or mapped.

    A coding of our scope system with an unknown code is always an error; a
    cell-specialty code that maps to no scope is an error only when no other
    coding of the concept names a scope.
    """
    if not isinstance(cc, dict):
        issues.append(Issue("structure", "a CodeableConcept must be an object", [path]))
        return None
    found: list[str] = []
    unmapped: list[Issue] = []
    before = len(issues)
    for j, c in enumerate(cc.get("coding") or []):
        if not isinstance(c, dict):
            continue
        system, code = c.get("system"), c.get("code")
        if system == SCOPE_SYSTEM:
            if code in _scopes():
                found.append(code)
            else:
                issues.append(
                    Issue(
                        "code-invalid",
                        f"unknown scope {code!r} in {SCOPE_SYSTEM}; known: " + ", ".join(_scopes()),
                        [f"{path}.coding[{j}].code"],
                    )
                )
        elif system == CELL_SPECIALTY_SYSTEM:
            mapped = _cell_specialty_map().get(code) if isinstance(code, str) else None
            if mapped:
                found.append(mapped)
            else:
                unmapped.append(
                    Issue(
                        "code-invalid",
                        f"cell specialty {code!r} (kod resortowy part VIII) maps to no "
                        f"central e-registration scope; send the scope code ({SCOPE_SYSTEM})",
                        [f"{path}.coding[{j}].code"],
                    )
                )
    distinct = list(dict.fromkeys(found))
    if len(distinct) > 1:
        issues.append(
            Issue(
                "code-invalid",
                f"the codings name different scopes: {', '.join(distinct)}",
                [f"{path}.coding"],
            )
        )
        return None
    if distinct:
        return distinct[0]
    if unmapped:
        issues.extend(unmapped)
    elif len(issues) == before:
        issues.append(
            Issue(
                "required",
                f"no scope: code it with {SCOPE_SYSTEM} or a mapped cell specialty "
                f"({CELL_SPECIALTY_SYSTEM})",
                [f"{path}.coding"],
            )
        )
    return None


def plain_code(cc: dict[str, Any], system: str, known: Mapping[str, Any]) -> str | None:
    """The code of a ``CodeableConcept`` of one coding, of ``system`` and known; ``None``
    for anything else: what ``read_code`` answers for it (a Slot's category each)."""
    codings = cc.get("coding")
    if type(codings) is list and len(codings) == 1 and type(codings[0]) is dict:
        c = codings[0]
        code = c.get("code")
        if c.get("system") == system and isinstance(code, str) and code in known:
            return code
    return None


def read_code(
    cc: Any, system: str, known: Mapping[str, Any], path: str, issues: list[Issue], what: str
) -> tuple[str | None, bool]:
    """The code of ``system`` in a ``CodeableConcept``: ``(code, system_seen)``.

    Codings of other systems are ignored (vendors may add their own). An unknown
    code of ``system`` is an issue at ``path.coding[j].code``; two different
    known codes of ``system`` are an issue at ``path.coding``.
    """
    if cc is None:
        return None, False
    if not isinstance(cc, dict):
        issues.append(Issue("structure", "a CodeableConcept must be an object", [path]))
        return None, True
    plain = plain_code(cc, system, known)
    if plain is not None:
        return plain, True
    seen = False
    codes: list[str] = []
    for j, c in enumerate(cc.get("coding") or []):
        if not isinstance(c, dict) or c.get("system") != system:
            continue
        seen = True
        code = c.get("code")
        if isinstance(code, str) and code in known:
            codes.append(code)
        else:
            issues.append(
                Issue(
                    "code-invalid",
                    f"unknown {what} {code!r} in {system}; known: {', '.join(known)}",
                    [f"{path}.coding[{j}].code"],
                )
            )
    distinct = list(dict.fromkeys(codes))
    if len(distinct) > 1:
        issues.append(
            Issue(
                "code-invalid", f"more than one {what}: {', '.join(distinct)}", [f"{path}.coding"]
            )
        )
        return None, seen
    return (distinct[0] if distinct else None), seen
