"""The patient channel (IKP-like): search criteria, booking rules and the patient commands.

Pure rules first (no I/O), then the store reads the API answers from, then
the command handlers the workers run. No adapter is imported: SIMP is the
``Eligibility`` port, the store the ``Store`` port.

Rules and the stable problem ``code`` each answers with (ARCHITECTURE.md,
"Patient channel"):

=====================================================  ===========================  ======
rule                                                   code                         status
=====================================================  ===========================  ======
slot no longer free (one conditional update wins)      ``slot-taken``               409
R-PAT-8 IKP books first-time visits only; R-PAT-6      ``not-first-time``           422
R-PAT-5 first-privileged slots only at the facility    ``not-self-bookable``        422
R-PAT-7 contact data (phone or e-mail)                 ``contact-required``         422
R-WAIT-2 / R-PAT-4 booking window (self_booking_days)  ``outside-booking-window``   422
R-PAT-2 a valid, unused e-referral of the scope        ``referral-required``        422
R-PAT-3 / R-PAT-4 screening sex and age                ``not-eligible``             422
R-PAT-3 screening interval, or an exam already booked  ``screening-interval``       422
reschedule into another scope                          ``scope-mismatch``           422
cancel / reschedule a visit that is not booked         ``not-active``               409
bad input (R-CAN-1: a reason of the patient list)      ``invalid``                  400
=====================================================  ===========================  ======

``outside-booking-window`` carries ``window_end`` (the last bookable day) and,
for a scope with a waiting room (R-WAIT-1), ``waiting_room`` (its path);
``referral-required`` carries ``reason`` (``missing``, ``unknown``,
``other-scope``, ``in-use``, ``used``, ``category``); ``screening-interval``
carries ``next_eligible_date`` when known.

Ids the patient sees are global: ``<provider id>~<resource id>`` for slots,
appointments and facilities (``~`` is not allowed in a FHIR id, so the split
is unambiguous).

Commands (``patient.book``, ``patient.reschedule``, ``patient.cancel``) go to
the partition of the slot's provider (tenant = the provider), so they are
applied in order with that provider's own FHIR writes; the writes reuse
``operations.run_write`` with channel ``portal``: the same checks, slot holds
and events as a provider's write (``resource.Appointment.*``,
``booking.booked``, ``slot.released`` with ``lead_time_hours``, R-CAN-3).
What lives outside the provider's partition is guarded by conditional
updates: the e-referral document (one active booking per referral) and the
patient's booked screening exam (one per programme).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

import orjson

from gateway import constants as c
from gateway import operations, resources
from gateway import pesel as pesel_rules
from gateway.errors import FhirError, Issue
from gateway.model import CentralAppointment, CentralContact, CentralReferral
from gateway.ports import (
    Clock,
    Document,
    Eligibility,
    EligibilityVerdict,
    Envelope,
    Reject,
    Store,
)
from gateway.timeutil import WARSAW, from_store, parse_instant, to_fhir, to_store, warsaw_day
from mappings import appointment as appointment_map
from mappings import codes

SEP = "~"
CHANNEL = "portal"
WAITING_ROOM_PATH = "/patient/v1/waiting-room"
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
# Appointment statuses a patient may still cancel or move (a visit not yet under way).
CANCELLABLE = frozenset({"pending", "booked"})
# Appointments a patient lists (waiting-room entries and proposals have their own endpoints).
LISTED = ("pending", "booked", "arrived", "checked-in", "fulfilled", "noshow", "cancelled")
# e-referral statuses (the ``referrals`` collection): issued = valid and unused,
# booked = holds one active booking; realized / cancelled / expired cannot book.
REFERRAL_ISSUED = "issued"
REFERRAL_BOOKED = "booked"
REFERRAL_STATUSES = ("issued", "booked", "realized", "cancelled", "expired")

_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_KEY_RE = re.compile(r"^[A-Za-z0-9]{1,44}$")
_HOURS_RE = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")
_POSTAL_RE = re.compile(r"^\d{2}-\d{3}$|^\d{5}$")
_POSTAL_PREFIX_RE = re.compile(r"^\d{1,2}$|^\d{2}-\d{0,2}$")
_PHONE_SEPARATORS = re.compile(r"[\s\-().]")


# --------------------------------------------------------------------------- errors, ids


def problem(
    status: int, code: str, detail: str, issue: str = "business-rule", **extra: Any
) -> FhirError:
    """A patient-channel error: rendered as problem+json with ``code`` and ``extra``."""
    return FhirError(status, [Issue(issue, detail)], code=code, extra=extra)


def invalid(detail: str) -> FhirError:
    return problem(400, "invalid", detail, "invalid")


def not_found(what: str) -> FhirError:
    return problem(404, "not-found", f"{what} not found", "not-found")


def slot_taken() -> FhirError:
    return problem(409, "slot-taken", "this slot is no longer free; search again", "conflict")


def global_id(tenant: str, rid: str) -> str:
    """The id a patient sees: ``<provider id>~<resource id>``."""
    return f"{tenant}{SEP}{rid}"


def split_id(gid: str) -> tuple[str, str] | None:
    """``(provider id, resource id)`` of a global id; None if it is not one."""
    tenant, sep, rid = gid.partition(SEP)
    if not sep or not tenant or SEP in rid or not _ID_RE.match(rid) or len(tenant) > 64:
        return None
    return tenant, rid


# --------------------------------------------------------------------------- search criteria


@dataclass(frozen=True)
class Criteria:
    """A patient's search (R-CRIT-1). Times of day and weekdays are Europe/Warsaw local."""

    scope: str
    start: datetime | None = None  # ``from``: visits starting at or after
    end: datetime | None = None  # ``to``: visits starting before (a date covers its whole day)
    weekdays: frozenset[int] = frozenset()  # ISO 1 = Monday .. 7 = Sunday; empty = any
    hours: tuple[int, int] | None = None  # local start time in [lo, hi) minutes after midnight
    postal_code: str | None = None  # "31-147" exactly, or a prefix ("31", "31-1")
    city: str | None = None  # case-insensitive
    facility: tuple[str | None, str] | None = None  # (provider or None, Location id)
    referral: str | None = None  # narrow to one e-referral's medical category
    limit: int = DEFAULT_LIMIT
    after: tuple[str, str] | None = None  # the cursor: (start, slot document id) last seen

    @property
    def postal_exact(self) -> bool:
        return self.postal_code is not None and len(self.postal_code) == 6


SEARCH_PARAMS = (
    "scope",
    "from",
    "to",
    "weekdays",
    "hours",
    "postal_code",
    "city",
    "facility",
    "referral",
    "limit",
    "cursor",
)


def _day_or_instant(name: str, value: str, *, upper: bool) -> datetime:
    """A date is a whole day in Europe/Warsaw; an instant needs its offset."""
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            if upper:
                day += timedelta(days=1)
            return datetime.combine(day, time(0), WARSAW)
        instant = parse_instant(value)
    except ValueError as exc:
        raise invalid(f"{name}: a date YYYY-MM-DD or an instant with an offset") from exc
    return instant + timedelta(milliseconds=1) if upper else instant


def parse_criteria(query: Iterable[tuple[str, str]]) -> Criteria:
    """The query of ``GET /patient/v1/slots`` -> ``Criteria``; 400 ``invalid`` saying what."""
    params: dict[str, str] = {}
    for name, value in query:
        if name not in SEARCH_PARAMS:
            raise invalid(f"unknown parameter {name!r}; known: {', '.join(SEARCH_PARAMS)}")
        if name in params:
            raise invalid(f"give {name} once (weekdays takes a comma-separated list)")
        params[name] = value.strip()
    scope = params.get("scope")
    known = codes.scopes()
    if not scope:
        raise invalid(f"scope is required: one of {', '.join(known)}")
    if scope not in known:
        raise invalid(f"unknown scope {scope!r}; known: {', '.join(known)}")
    out: dict[str, Any] = {"scope": scope}
    if params.get("from"):
        out["start"] = _day_or_instant("from", params["from"], upper=False)
    if params.get("to"):
        out["end"] = _day_or_instant("to", params["to"], upper=True)
    if "start" in out and "end" in out and out["start"] >= out["end"]:
        raise invalid("from must be before to")
    if params.get("weekdays"):
        try:
            days = frozenset(int(d) for d in params["weekdays"].split(",") if d.strip())
        except ValueError as exc:
            raise invalid("weekdays: numbers 1 (Monday) to 7 (Sunday), comma-separated") from exc
        if not days or not days <= set(range(1, 8)):
            raise invalid("weekdays: numbers 1 (Monday) to 7 (Sunday), comma-separated")
        out["weekdays"] = days
    if params.get("hours"):
        out["hours"] = parse_hours(params["hours"])
    if params.get("postal_code"):
        pc = params["postal_code"]
        if _POSTAL_RE.match(pc):
            out["postal_code"] = pc if "-" in pc else f"{pc[:2]}-{pc[2:]}"
        elif _POSTAL_PREFIX_RE.match(pc):
            out["postal_code"] = pc
        else:
            raise invalid("postal_code: 00-000, or its beginning (e.g. 31 or 31-1)")
    if params.get("city"):
        if len(params["city"]) > 100:
            raise invalid("city: at most 100 characters")
        out["city"] = params["city"]
    if params.get("facility"):
        fac = params["facility"]
        parts = split_id(fac)
        if parts is not None:
            out["facility"] = parts
        elif _ID_RE.match(fac):
            out["facility"] = (None, fac)
        else:
            raise invalid("facility: a facility id (<provider>~<location>, or the location id)")
    if params.get("referral"):
        if not _KEY_RE.match(params["referral"]):
            raise invalid("referral: the e-referral key (letters and digits)")
        out["referral"] = params["referral"]
    if params.get("limit"):
        try:
            limit = int(params["limit"])
        except ValueError as exc:
            raise invalid(f"limit: a number from 1 to {MAX_LIMIT}") from exc
        if not 1 <= limit <= MAX_LIMIT:
            raise invalid(f"limit: a number from 1 to {MAX_LIMIT}")
        out["limit"] = limit
    if params.get("cursor"):
        out["after"] = decode_cursor(params["cursor"])
    return Criteria(**out)


def parse_hours(value: str) -> tuple[int, int]:
    """``08:00-12:00`` -> minutes ``(480, 720)``: visits starting from 08:00, before 12:00."""
    m = _HOURS_RE.match(value)
    if not m:
        raise invalid("hours: HH:MM-HH:MM in Polish time, e.g. 08:00-12:00")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2):
        raise invalid("hours: HH:MM-HH:MM in Polish time, e.g. 08:00-12:00")
    lo, hi = h1 * 60 + m1, h2 * 60 + m2
    if lo >= hi:
        raise invalid("hours: the first time must be before the second")
    return lo, hi


def encode_cursor(start: str, doc_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([start, doc_id])).decode().rstrip("=")


def decode_cursor(value: str) -> tuple[str, str]:
    try:
        data = orjson.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError) as exc:
        raise invalid("cursor: pass back the next_cursor of the previous page") from exc
    if not (isinstance(data, list) and len(data) == 2 and all(isinstance(x, str) for x in data)):
        raise invalid("cursor: pass back the next_cursor of the previous page")
    return data[0], data[1]


def matches_local(slot: Mapping[str, Any], crit: Criteria) -> bool:
    """The criteria the store cannot index: local weekday and hour, city, postal prefix."""
    if crit.weekdays or crit.hours:
        local = from_store(slot["start"]).astimezone(WARSAW)
        if crit.weekdays and local.isoweekday() not in crit.weekdays:
            return False
        if crit.hours:
            minute = local.hour * 60 + local.minute
            if not crit.hours[0] <= minute < crit.hours[1]:
                return False
    if crit.city and (slot.get("city") or "").casefold() != crit.city.casefold():
        return False
    if crit.postal_code and not crit.postal_exact:
        return (slot.get("postal_code") or "").startswith(crit.postal_code)
    return True


# --------------------------------------------------------------------------- booking rules


def last_bookable_day(info: codes.ScopeInfo, now: datetime) -> date:
    """The last Europe/Warsaw day a patient may self-book (R-WAIT-2: 40; R-PAT-4: 90)."""
    return warsaw_day(now) + timedelta(days=info.self_booking_days)


def window_end(info: codes.ScopeInfo, now: datetime) -> datetime:
    """The instant the booking window closes: midnight after the last bookable day."""
    return datetime.combine(last_bookable_day(info, now) + timedelta(days=1), time(0), WARSAW)


def check_window(info: codes.ScopeInfo, start: datetime, now: datetime) -> None:
    """R-WAIT-2 (first-time cardiology: 40 days) and R-PAT-4 (SIMP: 90 days), in Warsaw days."""
    if start <= now:
        raise problem(422, "outside-booking-window", "the visit has already started")
    last = last_bookable_day(info, now)
    if warsaw_day(start) <= last:
        return
    extra: dict[str, Any] = {"window_end": last.isoformat()}
    rule = "R-PAT-4" if info.screening is not None else "R-WAIT-2"
    detail = (
        f"a {info.code} visit can be self-booked at most {info.self_booking_days} days ahead "
        f"(up to {last}, {rule})"
    )
    if info.waiting_room:
        extra["waiting_room"] = WAITING_ROOM_PATH
        detail += "; the waiting room keeps your place for a later date"
    raise problem(422, "outside-booking-window", detail, **extra)


def self_bookable(category: str | None) -> bool:
    info = codes.slot_categories().get(category) if category else None
    return info is None or (info.first_time and info.patient_self_bookable)


def check_self_bookable(category: str | None) -> None:
    """R-PAT-8: IKP books first-time visits only; R-PAT-6 control and R-PAT-5 privileged
    visits are booked at the facility. A slot without a category is taken as first-time."""
    info = codes.slot_categories().get(category) if category else None
    if info is None:
        return
    if not info.first_time:
        raise problem(
            422,
            "not-first-time",
            "a control (continuation) visit is booked at the facility (R-PAT-6); "
            "here a patient books first-time visits only (R-PAT-8)",
        )
    if not info.patient_self_bookable:
        raise problem(
            422,
            "not-self-bookable",
            "first-privileged slots are for patients whose out-of-turn entitlement the "
            "facility verified: book them at the facility (R-PAT-5)",
        )


def allowed_categories(info: codes.ScopeInfo, medical: Collection[str] | None) -> list[str | None]:
    """The slot categories a patient may find and book in a scope (R-PAT-5, R-PAT-6, R-PAT-8).

    Self-bookable first-time ones (never first-privileged or control); in a
    scope that needs a referral, only those of the referral's medical category
    (urgent / stable) when the patient's referrals are known. ``None`` stands
    for slots without a category (scopes where the provider need not send one).
    """
    out: list[str | None] = []
    for code, cat in codes.slot_categories().items():
        if not (cat.first_time and cat.patient_self_bookable):
            continue
        if info.referral_required_first_time and medical and cat.medical_category not in medical:
            continue
        out.append(code)
    out.append(None)
    return out


def parse_contact(value: Any) -> CentralContact | None:
    """The body's ``contact`` -> phone digits and e-mail; 400 ``invalid`` when malformed."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"phone", "email"}:
        raise invalid("contact: an object with phone and/or email")
    phone, email = value.get("phone"), value.get("email")
    for name, v in (("phone", phone), ("email", email)):
        if v is not None and not isinstance(v, str):
            raise invalid(f"contact.{name} must be a string")
    if phone is not None and phone.strip():
        phone = _PHONE_SEPARATORS.sub("", phone)
        if not appointment_map.PHONE_RE.fullmatch(phone):
            raise invalid("contact.phone: 9-15 digits, optionally after +")
    else:
        phone = None
    if email is not None and email.strip():
        email = email.strip()
        if len(email) > 254 or not appointment_map.EMAIL_RE.fullmatch(email):
            raise invalid("contact.email: not an e-mail address")
    else:
        email = None
    if phone is None and email is None:
        return None
    return CentralContact(phone=phone, email=email)


def require_contact(contact: Mapping[str, Any] | None) -> CentralContact:
    """R-PAT-7: a booking needs a phone number or an e-mail address (notifications, R-NOT-4)."""
    if contact and (contact.get("phone") or contact.get("email")):
        return CentralContact(phone=contact.get("phone"), email=contact.get("email"))
    raise problem(
        422,
        "contact-required",
        "give a phone number or an e-mail address: confirmations and reminders go there (R-PAT-7)",
    )


def parse_referral(value: Any) -> dict[str, str] | None:
    """The body's ``referral`` ``{key, code}``; 400 ``invalid`` when malformed."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"key", "code"}:
        raise invalid("referral: an object {key, code}")
    try:
        ref = appointment_map.parse_referral(f"{value['key']}:{value['code']}")
    except (ValueError, TypeError) as exc:
        raise invalid(f"referral: {exc}") from exc
    return {"key": ref.key, "code": ref.code}


def refuse_referral(reason: str, detail: str) -> FhirError:
    return problem(422, "referral-required", detail, reason=reason)


def check_referral(
    doc: Mapping[str, Any] | None,
    given: Mapping[str, str] | None,
    *,
    pesel: str,
    scope: str,
    category: str | None,
    appointment_id: str,
    replacing: str | None = None,
) -> None:
    """R-PAT-2: a first-time visit of the scope needs a valid, unused e-referral of the patient,
    for that scope and (urgent / stable) the slot's medical category; one active booking each."""
    if given is None:
        raise refuse_referral(
            "missing",
            f"a first-time {scope} visit needs an e-referral (R-PAT-2): "
            "send referral {key, code}",
        )
    if doc is None or doc.get("code") != given["code"] or doc.get("pesel") != pesel:
        raise refuse_referral("unknown", "no e-referral of yours has this key and code")
    if doc.get("scope") != scope:
        raise refuse_referral(
            "other-scope", f"this e-referral is for {doc.get('scope')}, not for {scope}"
        )
    status = doc.get("status")
    holder = doc.get("appointment_id")
    if status == REFERRAL_BOOKED and holder not in (appointment_id, replacing):
        raise refuse_referral(
            "in-use",
            "this e-referral already has an active booking: cancel or reschedule that visit "
            "(one active booking per referral)",
        )
    if status not in (REFERRAL_ISSUED, REFERRAL_BOOKED):
        raise refuse_referral("used", f"this e-referral cannot book a visit: it is {status}")
    cat = codes.slot_categories().get(category) if category else None
    medical = doc.get("category")
    if cat is not None and cat.medical_category and medical and cat.medical_category != medical:
        raise refuse_referral(
            "category",
            f"this e-referral is for a {medical} case: it books first-{medical} slots",
        )


@dataclass(frozen=True)
class ScreeningExam:
    """One entry of a patient's screening history: an exam done, or one booked."""

    day: date
    hpv: bool = False
    booked_as: str | None = None  # the appointment of a booked (not yet done) exam


def add_years(day: date, years: int) -> date:
    """The same day ``years`` later; 29 February moves to 1 March."""
    try:
        return day.replace(year=day.year + years)
    except ValueError:
        return date(day.year + years, 3, 1)


def age_on(born: date, day: date) -> int:
    """Completed years on ``day``."""
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


def screening_verdict(
    rule: codes.ScreeningRule,
    pesel: str,
    exam_day: date,
    history: Sequence[ScreeningExam],
    *,
    replacing: str | None = None,
) -> EligibilityVerdict:
    """SIMP's rule for the day of the exam (R-PAT-3, R-PAT-4; DOMAIN.md Screening eligibility).

    Sex and age (completed years on the exam day, both ends inclusive) from
    the PESEL; then the interval: not before ``interval_years`` after the last
    exam (``hpv_interval_years`` after an HPV test). A booked exam counts like
    one done on its day, and a later booked one blocks outright: one booked
    exam per programme at a time (the one being rescheduled, ``replacing``,
    aside).
    """
    sex = pesel_rules.sex(pesel)
    if sex != rule.sex:
        return EligibilityVerdict(
            False, "not-eligible", f"this screening programme is for {rule.sex}s (R-PAT-3)"
        )
    age = age_on(pesel_rules.birth_date(pesel), exam_day)
    if not rule.min_age <= age <= rule.max_age:
        return EligibilityVerdict(
            False,
            "not-eligible",
            f"this screening programme is for ages {rule.min_age}-{rule.max_age} on the day of "
            f"the exam; on {exam_day} the patient is {age} (R-PAT-3)",
        )
    blocking: tuple[date, ScreeningExam] | None = None
    for exam in history:
        if replacing is not None and exam.booked_as == replacing:
            continue
        if exam.day > exam_day:
            if exam.booked_as is not None:
                return EligibilityVerdict(
                    False,
                    "screening-interval",
                    f"an exam of this programme is already booked for {exam.day}: "
                    "cancel or reschedule it",
                )
            continue
        years = rule.hpv_interval_years if exam.hpv and rule.hpv_interval_years else None
        allowed = add_years(exam.day, years or rule.interval_years)
        if exam_day < allowed and (blocking is None or allowed > blocking[0]):
            blocking = (allowed, exam)
    if blocking is not None:
        nxt, last = blocking
        if last.booked_as is not None:
            reason = f"an exam of this programme is already booked for {last.day}"
        else:
            hpv = bool(last.hpv and rule.hpv_interval_years)
            every = rule.hpv_interval_years if hpv else rule.interval_years
            test = " (HPV test)" if hpv else ""
            reason = f"the last exam{test} was on {last.day}; it is once every {every} years"
        return EligibilityVerdict(
            False,
            "screening-interval",
            f"{reason} (R-PAT-3): the next can be from {nxt}",
            nxt,
        )
    return EligibilityVerdict(True)


def check_cancel_reason(reason: Any) -> str:
    """R-CAN-1: a patient cancels with a reason of the list whose ``by`` is ``patient``."""
    patient_reasons = [k for k, v in codes.cancellation_reasons().items() if v.by == "patient"]
    if not isinstance(reason, str) or reason not in patient_reasons:
        raise invalid(f"reason: one of {', '.join(patient_reasons)} (R-CAN-1)")
    return reason


# --------------------------------------------------------------------------- views


def _instant(stored: str | None) -> str | None:
    return to_fhir(from_store(stored)) if stored else None


def _local(stored: str | None) -> str | None:
    return from_store(stored).astimezone(WARSAW).isoformat() if stored else None


class Directory:
    """Facility and provider names for views, read once per request."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.locations: dict[tuple[str, str], Document | None] = {}
        self.providers: dict[str, str | None] = {}

    async def facility(self, tenant: str, location_id: str | None) -> dict[str, Any] | None:
        if not location_id:
            return None
        key = (tenant, location_id)
        if key not in self.locations:
            self.locations[key] = await self.store.get(
                c.RESOURCES, resources.doc_id(tenant, "Location", location_id)
            )
        doc = self.locations[key]
        loc = doc["central"] if doc else {}
        return {
            "id": global_id(tenant, location_id),
            "name": loc.get("name"),
            "address": loc.get("lines") or [],
            "postal_code": loc.get("postal_code"),
            "city": loc.get("city"),
        }

    async def provider(self, tenant: str) -> dict[str, Any]:
        if tenant not in self.providers:
            doc = await self.store.get(c.PROVIDERS, tenant)
            self.providers[tenant] = doc.get("name") if doc else None
        return {"id": tenant, "name": self.providers[tenant]}


async def slot_view(directory: Directory, doc: Document) -> dict[str, Any]:
    s = doc["central"]
    tenant = doc["tenant"]
    return {
        "id": global_id(tenant, doc["rid"]),
        "scope": s.get("scope"),
        "category": s.get("category"),
        "start": _instant(s.get("start")),
        "end": _instant(s.get("end")),
        "local_start": _local(s.get("start")),
        "facility": await directory.facility(tenant, s.get("location_id")),
        "provider": await directory.provider(tenant),
    }


def next_step(appt: Mapping[str, Any]) -> str | None:
    """What a patient does after a cancellation: R-PAT-6 (control: call the facility)."""
    if appt.get("status") != "cancelled":
        return None
    cat = codes.slot_categories().get(appt.get("category") or "")
    if cat is not None and not cat.first_time:
        return "contact-facility"  # R-PAT-6: no rebooking here, no waiting room
    return "search-again"


async def appointment_view(
    store: Store, directory: Directory, doc: Document, slot: Document | None = None
) -> dict[str, Any]:
    """What a patient sees of a visit; ``slot`` when the caller has it at hand."""
    a = doc["central"]
    tenant = doc["tenant"]
    slot_id = a["slot_ids"][0] if a.get("slot_ids") else None
    facility = None
    if slot_id:
        if slot is None or slot.get("rid") != slot_id:
            slot = await store.get(c.RESOURCES, resources.doc_id(tenant, "Slot", slot_id))
        if slot is not None:
            facility = await directory.facility(tenant, slot["central"].get("location_id"))
    cat = codes.slot_categories().get(a.get("category") or "")
    scope = codes.scopes().get(a.get("scope") or "")
    out: dict[str, Any] = {
        "id": global_id(tenant, doc["rid"]),
        "status": a["status"],
        "scope": a.get("scope"),
        "category": a.get("category"),
        "first_time": cat.first_time if cat is not None else None,
        "start": _instant(a.get("start")),
        "end": _instant(a.get("end")),
        "local_start": _local(a.get("start")),
        "slot_id": global_id(tenant, slot_id) if slot_id else None,
        "facility": facility,
        "provider": await directory.provider(tenant),
        "channel": a.get("channel"),
        "referral": {"key": a["referral"]["key"]} if a.get("referral") else None,
        "contact": a.get("contact"),
        "cancel_reason": a.get("cancel_reason"),
        "cancelled_at": _instant(a.get("cancelled_at")),
        # R-PAT-6 / R-PAT-8: only first-time visits can be moved here
        "can_cancel": a["status"] in CANCELLABLE,
        "can_reschedule": a["status"] in CANCELLABLE and (cat is None or cat.first_time),
    }
    step = next_step(a)
    if step:
        out["next_step"] = step
        if step == "search-again" and scope is not None and scope.waiting_room:
            out["waiting_room"] = WAITING_ROOM_PATH
    return out


# --------------------------------------------------------------------------- queries (API side)


async def referral_categories(
    store: Store, pesel: str, scope: str, key: str | None
) -> set[str] | None:
    """The medical categories of the patient's usable e-referrals of ``scope`` (None: none)."""
    if key is not None:
        doc = await store.get(c.REFERRALS, key)
        if doc is None or doc.get("pesel") != pesel or doc.get("scope") != scope:
            raise refuse_referral("unknown", f"no e-referral of yours for {scope} has this key")
        if doc.get("status") not in (REFERRAL_ISSUED, REFERRAL_BOOKED):
            raise refuse_referral("used", f"this e-referral cannot book a visit: {doc['status']}")
        return {doc["category"]} if doc.get("category") else None
    docs = await store.find(
        c.REFERRALS,
        {"pesel": pesel, "scope": scope, "status": {"$in": [REFERRAL_ISSUED, REFERRAL_BOOKED]}},
    )
    found = {d["category"] for d in docs if d.get("category")}
    return found or None


def slot_filter(
    crit: Criteria, categories: Sequence[str | None], lo: str, hi: str
) -> dict[str, Any]:
    """The store filter of a search: it leads with the cross-provider index
    ``(type, central.status, central.scope, central.start)``."""
    flt: dict[str, Any] = {
        "type": "Slot",
        "central.status": "free",
        "central.scope": crit.scope,
        "central.start": {"$gte": lo, "$lt": hi},
        "deleted": False,
        "central.category": {"$in": list(categories)},
    }
    if crit.postal_code and crit.postal_exact:
        flt["central.postal_code"] = crit.postal_code
    elif crit.postal_code:
        prefix = crit.postal_code  # "31" or "31-1": the codes from it up to the next prefix
        flt["central.postal_code"] = {"$gte": prefix, "$lt": prefix[:-1] + chr(ord(prefix[-1]) + 1)}
    if crit.city:
        flt["central.city"] = {"$in": city_spellings(crit.city)}
    if crit.facility is not None:
        tenant, location = crit.facility
        flt["central.location_id"] = location
        if tenant is not None:
            flt["tenant"] = tenant
    return flt


def _at_minute(day: date, minute: int) -> datetime:
    """``minute`` minutes after midnight of a Warsaw ``day`` (1440 = the next midnight)."""
    day += timedelta(days=minute // 1440)
    return datetime.combine(day, time(minute % 1440 // 60, minute % 60), WARSAW)


def start_ranges(crit: Criteria, lo: datetime, hi: datetime) -> list[tuple[datetime, datetime]]:
    """The visit starts the criteria allow within ``[lo, hi)``, as ranges of instants.

    One range; or, with weekdays or hours (R-CRIT-1, Polish local time), one
    per Warsaw day of those weekdays between those hours, following DST. As
    ranges of ``central.start`` they are served by the index itself.
    """
    if not crit.weekdays and not crit.hours:
        return [(lo, hi)] if lo < hi else []
    first, end = crit.hours or (0, 1440)
    out: list[tuple[datetime, datetime]] = []
    day, last = warsaw_day(lo), warsaw_day(hi)
    while day <= last:
        if not crit.weekdays or day.isoweekday() in crit.weekdays:
            a, b = max(_at_minute(day, first), lo), min(_at_minute(day, end), hi)
            if a < b:
                out.append((a, b))
        day += timedelta(days=1)
    return out


def city_spellings(city: str) -> list[str]:
    """The usual spellings of a city name, for an index-friendly case-insensitive match."""
    return list(dict.fromkeys([city, city.title(), city.capitalize(), city.lower(), city.upper()]))


async def search_slots(store: Store, now: datetime, pesel: str, crit: Criteria) -> dict[str, Any]:
    """Free slots the patient may book, earliest first, one page (R-CRIT-1, R-CRIT-2).

    The window closes at the scope's booking horizon (``window_end``); ``to``
    beyond it is cut there. Every criterion is in the store filter (times of
    day as ranges of starts, ``start_ranges``), so the store returns only what
    the page shows. Paging is by cursor: ``next_cursor`` is the position after
    the page's last slot (start, id), so bookings made between pages neither
    skip nor repeat slots.
    """
    info = codes.scopes()[crit.scope]
    medical = (
        await referral_categories(store, pesel, crit.scope, crit.referral)
        if info.referral_required_first_time
        else None
    )
    categories = allowed_categories(info, medical)
    lo_dt = max(now, crit.start) if crit.start else now
    hi_dt = min(window_end(info, now), crit.end) if crit.end else window_end(info, now)
    position = crit.after
    found: list[Document] = []
    for a, b in start_ranges(crit, lo_dt, hi_dt):
        lo, hi = to_store(a), to_store(b)
        if position is not None:
            if position[0] >= hi:
                continue
            lo = max(lo, position[0])
        batch = crit.limit + 1
        while lo < hi and len(found) <= crit.limit:
            docs = await store.find(
                c.RESOURCES,
                slot_filter(crit, categories, lo, hi),
                sort=[("central.start", 1), ("_id", 1)],
                limit=batch,
            )
            for d in docs:
                key = (d["central"]["start"], d["_id"])
                if position is not None and key <= position:
                    continue
                position = key
                if d["central"].get("appointment_id") is None and matches_local(d["central"], crit):
                    found.append(d)
                    if len(found) > crit.limit:
                        break
            if len(docs) < batch:
                break
            last = docs[-1]["central"]["start"]
            if last == lo:
                batch *= 2  # one instant fills the batch: widen it to get past
            lo = last
        if len(found) > crit.limit:
            break
    page = found[: crit.limit]
    directory = Directory(store)
    out: dict[str, Any] = {
        "slots": [await slot_view(directory, d) for d in page],
        "next_cursor": (
            encode_cursor(page[-1]["central"]["start"], page[-1]["_id"])
            if len(found) > crit.limit
            else None
        ),
        "window_end": last_bookable_day(info, now).isoformat(),
        "categories": [cat for cat in categories if cat is not None],
    }
    if info.waiting_room and not page and crit.after is None:
        # R-WAIT-2: nothing free in the window for these criteria
        out["waiting_room"] = WAITING_ROOM_PATH
    return out


async def own_appointment(store: Store, pesel: str, gid: str) -> Document:
    """The patient's appointment by global id; 404 for anyone else's (and for unknown ids)."""
    parts = split_id(gid)
    if parts is None:
        raise not_found("appointment")
    doc = await store.get(c.RESOURCES, resources.doc_id(parts[0], "Appointment", parts[1]))
    if doc is None or doc.get("deleted") or doc["central"].get("patient_pesel") != pesel:
        raise not_found("appointment")
    if parts[0] == c.WAITING_ROOM_TENANT:
        raise not_found("appointment")  # a waiting-room entry: /patient/v1/waiting-room
    return doc


async def list_appointments(
    store: Store, pesel: str, statuses: Collection[str] = LISTED
) -> list[dict[str, Any]]:
    docs = await store.find(
        c.RESOURCES,
        {
            "type": "Appointment",
            "central.patient_pesel": pesel,
            "deleted": False,
            "central.status": {"$in": list(statuses)},
            "tenant": {"$ne": c.WAITING_ROOM_TENANT},  # entries: /patient/v1/waiting-room
        },
        sort=[("central.start", 1), ("_id", 1)],
    )
    directory = Directory(store)
    return [await appointment_view(store, directory, d) for d in docs]


# --------------------------------------------------------------------------- the writes


def booking_op(
    rid: str,
    pesel: str,
    slot: Document,
    referral: Mapping[str, str] | None,
    contact: CentralContact,
) -> dict[str, Any]:
    """A ``POST Appointment`` entry for ``operations.run_write``: a portal booking."""
    s = slot["central"]
    central = CentralAppointment(
        status="booked",
        slot_ids=[slot["rid"]],
        start=s["start"],
        end=s["end"],
        scope=s["scope"],
        category=s.get("category"),
        patient_pesel=pesel,
        referral=CentralReferral(**referral) if referral else None,
        channel=CHANNEL,
        contact=contact,
    )
    resource = appointment_map.to_fhir(rid, central)
    return {
        "method": "POST",
        "type": "Appointment",
        "id": rid,
        "resource": resource,
        "central": operations.central_of("Appointment", resource),
    }


def cancel_op(doc: Document, reason: str, now: datetime) -> dict[str, Any]:
    """A ``PUT Appointment`` entry cancelling ``doc`` (R-CAN-1), keeping the rest as sent."""
    res = {k: v for k, v in doc["resource"].items() if k != "meta"}
    res["status"] = "cancelled"
    res["cancelationReason"] = {"coding": [codes.coding(codes.CANCELLATION_REASON_SYSTEM, reason)]}
    ext = [e for e in res.get("extension") or [] if e.get("url") != codes.EXT_CANCELLATION_DATE]
    ext.append({"url": codes.EXT_CANCELLATION_DATE, "valueDateTime": to_fhir(now)})
    res["extension"] = ext
    return {
        "method": "PUT",
        "type": "Appointment",
        "id": doc["rid"],
        "resource": res,
        "central": operations.central_of("Appointment", res),
        "if_match": doc["version"],
    }


async def claim_referral(store: Store, key: str, gid: str, replacing: str | None) -> bool:
    """One active booking per e-referral: a conditional update on the referral document."""
    holders: list[dict[str, Any]] = [{"status": REFERRAL_ISSUED}, {"appointment_id": gid}]
    if replacing:
        holders.append({"appointment_id": replacing})
    doc = await store.update_one(
        c.REFERRALS,
        {"_id": key, "$or": holders},
        {"$set": {"status": REFERRAL_BOOKED, "appointment_id": gid}},
    )
    return doc is not None


async def release_referral(store: Store, key: str, gid: str, back_to: str | None = None) -> None:
    """The booking ``gid`` is gone: the referral is free again (or back with ``back_to``)."""
    update: dict[str, Any] = (
        {"status": REFERRAL_BOOKED, "appointment_id": back_to}
        if back_to
        else {"status": REFERRAL_ISSUED, "appointment_id": None}
    )
    await store.update_one(
        c.REFERRALS,
        {"_id": key, "status": REFERRAL_BOOKED, "appointment_id": gid},
        {"$set": update},
    )


def check_slot_open(slot: Document | None) -> None:
    """The slot exists, is free and may be booked here (R-PAT-5, R-PAT-6, R-PAT-8).

    The worker decides; the API asks the same before sending a command, so that
    the many losers of a popular slot are answered without a trip through the
    provider's partition.
    """
    if slot is None or slot.get("deleted"):
        raise not_found("slot")
    s = slot["central"]
    if s.get("appointment_id") is not None or s.get("status") != "free":
        raise slot_taken()
    check_self_bookable(s.get("category"))


def _patient_error(err: FhirError) -> FhirError:
    """A refusal of ``run_write`` in the patient's words (409 is always a taken slot)."""
    if err.status in (409, 412):
        return slot_taken()
    return err


def _tenant(msg: Envelope) -> str:
    if msg.tenant is None:
        raise Reject(f"{msg.type} without a tenant (the slot's provider)")
    return msg.tenant


async def _replaced(store: Store, pesel: str, gid: str, scope: str) -> Document:
    """The visit a reschedule moves (R-PAT-9): the patient's, booked, first-time, same scope."""
    doc = await own_appointment(store, pesel, gid)
    a = doc["central"]
    if a["status"] not in CANCELLABLE:
        raise problem(409, "not-active", f"the visit is {a['status']}: it cannot be moved")
    cat = codes.slot_categories().get(a.get("category") or "")
    if cat is not None and not cat.first_time:
        raise problem(
            422,
            "not-first-time",
            "a control (continuation) visit can be cancelled here but booked again only at "
            "the facility (R-PAT-6)",
        )
    if a.get("scope") != scope:
        raise problem(
            422, "scope-mismatch", f"the new slot is {scope}, the visit is {a.get('scope')}"
        )
    return doc


async def book(
    store: Store, clock: Clock, eligibility: Eligibility, msg: Envelope
) -> dict[str, Any]:
    """``patient.book`` and ``patient.reschedule`` on the partition of the slot's provider.

    Body: ``pesel``, ``slot`` and ``appointment`` (resource ids at this
    provider), ``contact``, ``referral`` (``{key, code}``), ``replaces`` (the
    global id of the visit a reschedule moves). Checks every rule before any
    write; then claims the referral and reports the screening exam (both
    outside this partition, so conditional), then writes through
    ``operations.run_write``. A reschedule within one provider is one
    transaction (new booking + cancellation): if the booking fails the old
    visit stays (R-PAT-9). Redelivery is safe: every step is keyed by the new
    appointment's id, which the command carries.
    """
    tenant = _tenant(msg)
    b = msg.body
    now = clock.now()
    pesel, rid = b["pesel"], b["appointment"]
    gid = global_id(tenant, rid)
    replaces: str | None = b.get("replaces")
    slot = await store.get(c.RESOURCES, resources.doc_id(tenant, "Slot", b["slot"]))
    # A redelivery of this command after the slot was taken for it: finish, do not judge again.
    resumed = slot is not None and slot["central"].get("appointment_id") == rid
    if not resumed:
        check_slot_open(slot)
    assert slot is not None
    s = slot["central"]
    info = codes.scopes()[s["scope"]]
    old: Document | None = None
    if replaces:
        old = (
            await own_appointment(store, pesel, replaces)
            if resumed
            else await _replaced(store, pesel, replaces, s["scope"])
        )
    contact = require_contact(b.get("contact") or (old["central"].get("contact") if old else None))
    start = from_store(s["start"])
    exam_day = warsaw_day(start)
    referral: dict[str, str] | None = None
    referral_holder: str | None = None  # who held the referral before (a reschedule's visit)
    if info.referral_required_first_time:
        referral = b.get("referral") or (old["central"].get("referral") if old else None)
        ref_doc = await store.get(c.REFERRALS, referral["key"]) if referral else None
        if ref_doc is not None and ref_doc.get("status") == REFERRAL_BOOKED:
            referral_holder = ref_doc.get("appointment_id")
        if not resumed:
            check_referral(
                ref_doc,
                referral,
                pesel=pesel,
                scope=s["scope"],
                category=s.get("category"),
                appointment_id=gid,
                replacing=replaces,
            )
    if not resumed:
        check_window(info, start, now)
        if info.screening is not None:
            verdict = await eligibility.check(pesel, s["scope"], exam_day, replacing=replaces)
            if not verdict.eligible:
                extra = (
                    {"next_eligible_date": verdict.next_date.isoformat()}
                    if verdict.next_date
                    else {}
                )
                raise problem(422, verdict.code or "not-eligible", verdict.reason, **extra)
    claimed = reported = False
    try:
        if referral is not None:
            if not await claim_referral(store, referral["key"], gid, replaces):
                raise refuse_referral(
                    "in-use", "this e-referral has just been used for another booking"
                )
            claimed = True
        if info.screening is not None:
            if not await eligibility.booked(pesel, s["scope"], exam_day, gid, replacing=replaces):
                raise problem(
                    422,
                    "screening-interval",
                    "another exam of this programme has just been booked for you",
                )
            reported = True
        ops = [booking_op(rid, pesel, slot, referral, contact)]
        if old is not None and old["tenant"] == tenant and old["central"]["status"] in CANCELLABLE:
            ops.append(cancel_op(old, "patient-rescheduled", now))
        try:
            await operations.run_write(
                store,
                now=now,
                tenant=tenant,
                msg_id=msg.id,
                correlation_id=msg.correlation_id,
                mode="transaction" if len(ops) > 1 else "single",
                ops_body=ops,
                channel=CHANNEL,
            )
        except FhirError as err:
            raise _patient_error(err) from err
    except FhirError:
        # Nothing was booked: give back what was claimed outside this partition.
        if claimed and referral is not None and referral_holder != gid:
            await release_referral(store, referral["key"], gid, back_to=referral_holder)
        if reported:
            if old is not None and replaces:
                old_day = warsaw_day(from_store(old["central"]["start"]))
                await eligibility.booked(pesel, s["scope"], old_day, replaces, replacing=gid)
            else:
                await eligibility.cancelled(pesel, s["scope"], gid)
        raise
    if old is not None and old["tenant"] == tenant and replaces:
        # moved with another e-referral: the old visit's referral is free again
        old_ref = old["central"].get("referral")
        if old_ref and (referral is None or old_ref["key"] != referral["key"]):
            await release_referral(store, old_ref["key"], replaces)
    directory = Directory(store)
    # the appointment as written (its central model is the op's), without reading it back
    written = {"tenant": tenant, "rid": rid, "central": ops[0]["central"]}
    reply: dict[str, Any] = {"appointment": await appointment_view(store, directory, written, slot)}
    if old is not None and old["tenant"] == tenant:
        moved = await resources.read(store, tenant, "Appointment", old["rid"])
        reply["replaced"] = await appointment_view(store, directory, moved)
    return reply


async def cancel(
    store: Store, clock: Clock, eligibility: Eligibility, msg: Envelope
) -> dict[str, Any]:
    """``patient.cancel`` on the partition of the visit's provider (R-CAN-1, R-CAN-3).

    Body: ``pesel``, ``appointment`` (resource id), ``reason``, optionally
    ``channel``: ``sms`` when the patient cancelled by answering an SMS
    (``gateway.sms_replies``), else ``portal``. The slot's
    release (``slot.released`` with ``lead_time_hours``, R-CAN-2) and the
    provider's events come from ``run_write``; then the e-referral is free
    again and SIMP is told the exam will not happen. A control visit can be
    cancelled here, but booked again only at the facility (R-PAT-6).
    """
    tenant = _tenant(msg)
    b = msg.body
    now = clock.now()
    pesel = b["pesel"]
    gid = global_id(tenant, b["appointment"])
    doc = await own_appointment(store, pesel, gid)
    a = doc["central"]
    ours = str(doc.get("last_msg", "")).startswith(f"{msg.id}/")
    if not ours:
        if a["status"] not in CANCELLABLE:
            raise problem(409, "not-active", f"the visit is {a['status']}: nothing to cancel")
        if a.get("start") and from_store(a["start"]) <= now:
            raise problem(409, "not-active", "the visit has already started")
        try:
            await operations.run_write(
                store,
                now=now,
                tenant=tenant,
                msg_id=msg.id,
                correlation_id=msg.correlation_id,
                mode="single",
                ops_body=[cancel_op(doc, b["reason"], now)],
                channel="sms" if b.get("channel") == "sms" else CHANNEL,
            )
        except FhirError as err:
            raise _patient_error(err) from err
    if a.get("referral"):
        await release_referral(store, a["referral"]["key"], gid)
    info = codes.scopes().get(a.get("scope") or "")
    if info is not None and info.screening is not None:
        await eligibility.cancelled(pesel, info.code, gid)
    written = await resources.read(store, tenant, "Appointment", doc["rid"])
    return {"appointment": await appointment_view(store, Directory(store), written)}
