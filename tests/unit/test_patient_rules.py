"""The patient rules as pure functions (gateway.patients), each test citing its rule, plus the
embedded SIMP (adapters/eligibility.py) on the embedded store. Days are Europe/Warsaw days."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from adapters.eligibility import StoreEligibility
from adapters.memory_store import MemoryStore
from gateway import patients as pr
from gateway import pesel
from gateway.errors import FhirError
from gateway.handlers import invoke
from gateway.ports import Envelope, Reject
from gateway.schema import INDEXES
from gateway.timeutil import from_store, to_store, warsaw_day
from mappings import codes

WARSAW = ZoneInfo("Europe/Warsaw")
CARDIO = codes.scopes()["cardiology"]
MAMMO = codes.scopes()["mammography"]
CYTO = codes.scopes()["cytology"]
MAMMO_RULE = MAMMO.screening
CYTO_RULE = CYTO.screening
assert MAMMO_RULE is not None and CYTO_RULE is not None


def warsaw(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=WARSAW)


def code_of(exc: pytest.ExceptionInfo[FhirError]) -> tuple[int, str]:
    return exc.value.status, exc.value.code


def woman(born: str) -> str:
    return pesel.generate(date.fromisoformat(born), "female", serial=1)


# --------------------------------------------------------------------------- ids


def test_global_ids_round_trip() -> None:
    assert pr.global_id("prov-abc", "slot-1") == "prov-abc~slot-1"
    assert pr.split_id("prov-abc~slot-1") == ("prov-abc", "slot-1")
    for bad in ("noseparator", "~x", "p~", "p~a~b", "p~a b", "p~" + "x" * 65):
        assert pr.split_id(bad) is None, bad


# --------------------------------------------------------------------------- R-CRIT-1


def test_criteria_parse_every_parameter() -> None:
    crit = pr.parse_criteria(
        [
            ("scope", "cardiology"),
            ("from", "2027-01-11"),
            ("to", "2027-01-12"),
            ("weekdays", "1,2"),
            ("hours", "08:00-12:00"),
            ("postal_code", "31147"),
            ("city", "Kraków"),
            ("facility", "prov-a~loc"),
            ("referral", "ABC123"),
            ("limit", "5"),
        ]
    )
    assert crit.scope == "cardiology"
    assert crit.start == warsaw(2027, 1, 11)
    assert crit.end == warsaw(2027, 1, 13)  # "to" covers its whole day
    assert crit.weekdays == {1, 2}
    assert crit.hours == (480, 720)
    assert crit.postal_code == "31-147" and crit.postal_exact
    assert crit.city == "Kraków"
    assert crit.facility == ("prov-a", "loc")
    assert crit.referral == "ABC123"
    assert crit.limit == 5
    assert pr.parse_criteria([("scope", "cytology"), ("facility", "loc")]).facility == (None, "loc")
    prefix = pr.parse_criteria([("scope", "cytology"), ("postal_code", "31-1")])
    assert prefix.postal_code == "31-1" and not prefix.postal_exact


@pytest.mark.parametrize(
    "query",
    [
        [],
        [("scope", "dentistry")],
        [("scope", "cardiology"), ("scope", "cardiology")],
        [("scope", "cardiology"), ("weekdays", "0")],
        [("scope", "cardiology"), ("weekdays", "x")],
        [("scope", "cardiology"), ("hours", "12:00-08:00")],
        [("scope", "cardiology"), ("hours", "25:00-26:00")],
        [("scope", "cardiology"), ("from", "2027-13-01")],
        [("scope", "cardiology"), ("from", "2027-01-11T08:00:00")],  # no offset
        [("scope", "cardiology"), ("from", "2027-01-12"), ("to", "2027-01-11")],
        [("scope", "cardiology"), ("postal_code", "31-14a")],
        [("scope", "cardiology"), ("limit", "101")],
        [("scope", "cardiology"), ("cursor", "!!")],
        [("scope", "cardiology"), ("facility", "a b")],
        [("scope", "cardiology"), ("order", "start")],
    ],
)
def test_criteria_refuse_bad_input_with_invalid(query: list[tuple[str, str]]) -> None:
    with pytest.raises(FhirError) as exc:
        pr.parse_criteria(query)
    assert code_of(exc) == (400, "invalid")


def test_cursor_round_trip() -> None:
    cursor = pr.encode_cursor("2027-01-11T07:00:00.000Z", "p/Slot/s1")
    assert pr.decode_cursor(cursor) == ("2027-01-11T07:00:00.000Z", "p/Slot/s1")


def slot_at(local: datetime, **extra: Any) -> dict[str, Any]:
    return {"start": to_store(local), **extra}


def test_weekdays_and_hours_are_warsaw_local_across_dst() -> None:
    """R-CRIT-1 hours are Polish time: 08:00 is 07:00 UTC in winter and 06:00 UTC in summer."""
    crit = pr.Criteria(scope="cardiology", weekdays=frozenset({1}), hours=(480, 720))
    assert pr.matches_local(slot_at(warsaw(2027, 1, 11, 8, 0)), crit)  # Monday, winter
    assert pr.matches_local(slot_at(warsaw(2027, 7, 5, 8, 0)), crit)  # Monday, summer
    assert not pr.matches_local(slot_at(warsaw(2027, 7, 5, 7, 59)), crit)
    assert not pr.matches_local(slot_at(warsaw(2027, 1, 11, 12, 0)), crit)  # end excluded
    assert pr.matches_local(slot_at(warsaw(2027, 1, 11, 11, 59)), crit)
    assert not pr.matches_local(slot_at(warsaw(2027, 1, 12, 9, 0)), crit)  # Tuesday
    # Sunday 23:30 local is Sunday, though it is Sunday 22:30 UTC ... and Monday 00:30
    # local is Monday although it is still Sunday in UTC
    sunday = pr.Criteria(scope="cardiology", weekdays=frozenset({7}))
    assert not pr.matches_local(slot_at(warsaw(2027, 1, 11, 0, 30)), sunday)
    assert pr.matches_local(slot_at(warsaw(2027, 1, 10, 23, 30)), sunday)


def test_location_criteria() -> None:
    crit = pr.Criteria(scope="cardiology", city="kraków", postal_code="31")
    assert pr.matches_local({"start": "", "city": "Kraków", "postal_code": "31-147"}, crit)
    assert not pr.matches_local({"start": "", "city": "Kraków", "postal_code": "30-001"}, crit)
    assert not pr.matches_local({"start": "", "city": "Warszawa", "postal_code": "31-147"}, crit)
    flt = pr.slot_filter(
        pr.Criteria(scope="cardiology", postal_code="31-147", facility=("p", "loc")),
        ["first-stable", None],
        "a",
        "b",
    )
    # led by the cross-provider index (type, central.status, central.scope, central.start)
    assert flt["type"] == "Slot" and flt["central.status"] == "free"
    assert flt["central.scope"] == "cardiology"
    assert flt["central.start"] == {"$gte": "a", "$lt": "b"}
    assert flt["central.postal_code"] == "31-147"
    assert (flt["tenant"], flt["central.location_id"]) == ("p", "loc")


def test_weekdays_and_hours_become_ranges_of_starts_per_warsaw_day() -> None:
    """R-CRIT-1: the store is asked for exactly the starts the criteria allow, DST included."""
    crit = pr.Criteria(scope="cardiology", weekdays=frozenset({1, 7}), hours=(480, 720))
    # Sunday 2027-03-28 is the spring change (02:00 -> 03:00): 08:00 is +02:00 from then
    ranges = pr.start_ranges(crit, warsaw(2027, 3, 27, 9), warsaw(2027, 3, 30))
    assert ranges == [
        (warsaw(2027, 3, 28, 8), warsaw(2027, 3, 28, 12)),
        (warsaw(2027, 3, 29, 8), warsaw(2027, 3, 29, 12)),
    ]
    assert [a.utcoffset().total_seconds() for a, _ in ranges] == [7200, 7200]  # type: ignore[union-attr]
    # the bounds cut the first and last day; no criteria: one range
    ranges = pr.start_ranges(
        pr.Criteria(scope="cardiology", hours=(600, 1440)),
        warsaw(2027, 1, 4, 11),
        warsaw(2027, 1, 5, 12),
    )
    assert ranges == [
        (warsaw(2027, 1, 4, 11), warsaw(2027, 1, 5)),
        (warsaw(2027, 1, 5, 10), warsaw(2027, 1, 5, 12)),
    ]
    whole = pr.Criteria(scope="cardiology")
    assert pr.start_ranges(whole, warsaw(2027, 1, 4), warsaw(2027, 1, 9)) == [
        (warsaw(2027, 1, 4), warsaw(2027, 1, 9))
    ]
    assert pr.start_ranges(whole, warsaw(2027, 1, 9), warsaw(2027, 1, 4)) == []


def test_location_criteria_in_the_store_filter() -> None:
    flt = pr.slot_filter(
        pr.Criteria(scope="cardiology", postal_code="31-1", city="kraków"), [None], "a", "b"
    )
    assert flt["central.postal_code"] == {"$gte": "31-1", "$lt": "31-2"}
    assert "Kraków" in flt["central.city"]["$in"]
    assert pr.slot_filter(pr.Criteria(scope="cardiology", postal_code="3"), [None], "a", "b")[
        "central.postal_code"
    ] == {"$gte": "3", "$lt": "4"}
    assert "Bielsko-Biała" in pr.city_spellings("BIELSKO-BIAŁA")


# --------------------------------------------------------------------------- R-PAT-5/6/8


def test_only_first_time_self_bookable_categories() -> None:
    """R-PAT-5 (privileged: facility only), R-PAT-6 (control: facility), R-PAT-8 (first-time)."""
    assert pr.allowed_categories(CARDIO, None) == ["first-urgent", "first-stable", None]
    assert pr.allowed_categories(CARDIO, {"urgent"}) == ["first-urgent", None]
    assert pr.allowed_categories(CARDIO, {"stable"}) == ["first-stable", None]
    assert pr.allowed_categories(MAMMO, {"stable"}) == ["first-urgent", "first-stable", None]
    with pytest.raises(FhirError) as exc:
        pr.check_self_bookable("control")
    assert code_of(exc) == (422, "not-first-time")
    with pytest.raises(FhirError) as exc:
        pr.check_self_bookable("first-privileged")
    assert code_of(exc) == (422, "not-self-bookable")
    pr.check_self_bookable("first-stable")
    pr.check_self_bookable("first-urgent")
    pr.check_self_bookable(None)


# --------------------------------------------------------------------------- R-WAIT-2, R-PAT-4


def test_40_day_window_both_sides_in_warsaw_days() -> None:
    """R-WAIT-2: from Monday 2027-01-04 the last bookable day is 2027-02-13 (day 40)."""
    now = warsaw(2027, 1, 4, 9, 0)
    assert pr.last_bookable_day(CARDIO, now) == date(2027, 2, 13)
    pr.check_window(CARDIO, warsaw(2027, 2, 13, 23, 59), now)
    with pytest.raises(FhirError) as exc:
        pr.check_window(CARDIO, warsaw(2027, 2, 14, 0, 0), now)
    assert code_of(exc) == (422, "outside-booking-window")
    assert exc.value.extra == {
        "window_end": "2027-02-13",
        "waiting_room": "/patient/v1/waiting-room",
    }
    # at 00:30 in Warsaw it is already the next day (23:30 UTC the day before)
    late = datetime(2027, 1, 4, 23, 30, tzinfo=UTC)
    assert warsaw_day(late) == date(2027, 1, 5)
    pr.check_window(CARDIO, warsaw(2027, 2, 14, 10, 0), late)
    with pytest.raises(FhirError):
        pr.check_window(CARDIO, warsaw(2027, 2, 15, 0, 0), late)
    # and the window's instant end follows DST (midnight after day 40)
    assert pr.window_end(CARDIO, warsaw(2027, 3, 1, 12)) == warsaw(2027, 4, 11)
    assert pr.window_end(CARDIO, warsaw(2027, 3, 1, 12)).utcoffset().total_seconds() == 7200  # type: ignore[union-attr]


def test_past_slots_are_outside_the_window() -> None:
    now = warsaw(2027, 1, 4, 9, 0)
    with pytest.raises(FhirError) as exc:
        pr.check_window(CARDIO, warsaw(2027, 1, 4, 9, 0), now)
    assert code_of(exc) == (422, "outside-booking-window")


def test_screening_window_90_days_without_waiting_room() -> None:
    """R-PAT-4: SIMP bookings reach at most 90 days ahead."""
    now = warsaw(2027, 1, 4, 9, 0)
    pr.check_window(MAMMO, warsaw(2027, 4, 4, 18, 0), now)
    with pytest.raises(FhirError) as exc:
        pr.check_window(MAMMO, warsaw(2027, 4, 5, 8, 0), now)
    assert code_of(exc) == (422, "outside-booking-window")
    assert exc.value.extra == {"window_end": "2027-04-04"}


# --------------------------------------------------------------------------- R-PAT-7


def test_contact_required() -> None:
    """R-PAT-7: a phone number or an e-mail address is a condition of booking."""
    for empty in (None, {}, {"phone": None, "email": None}, {"phone": "", "email": ""}):
        with pytest.raises(FhirError) as exc:
            pr.require_contact(empty)
        assert code_of(exc) == (422, "contact-required")
    assert pr.require_contact({"phone": "600100200"}).phone == "600100200"
    assert pr.require_contact({"email": "a@b.pl"}).email == "a@b.pl"
    contact = pr.parse_contact({"phone": "+48 600-100-200", "email": " a@b.pl "})
    assert contact is not None and (contact.phone, contact.email) == ("+48600100200", "a@b.pl")
    assert pr.parse_contact({"phone": " "}) is None
    for bad in ("x", {"phone": "12"}, {"email": "a@"}, {"phone": 600100200}, {"sms": "1"}):
        with pytest.raises(FhirError) as exc:
            pr.parse_contact(bad)
        assert code_of(exc) == (400, "invalid")


# --------------------------------------------------------------------------- R-PAT-2


REF = {"key": "K1", "code": "1234"}
PESEL = woman("1970-05-01")


def ref_doc(**extra: Any) -> dict[str, Any]:
    return {
        "key": "K1",
        "code": "1234",
        "pesel": PESEL,
        "scope": "cardiology",
        "category": "stable",
        "status": "issued",
        "appointment_id": None,
        **extra,
    }


def refused(doc: dict[str, Any] | None, given: dict[str, str] | None = REF, **kw: Any) -> str:
    args: dict[str, Any] = {
        "pesel": PESEL,
        "scope": "cardiology",
        "category": "first-stable",
        "appointment_id": "p~new",
        **kw,
    }
    with pytest.raises(FhirError) as exc:
        pr.check_referral(doc, given, **args)
    assert code_of(exc) == (422, "referral-required")
    return str(exc.value.extra["reason"])


def test_referral_rules() -> None:
    """R-PAT-2: a valid, unused e-referral of this patient, scope and medical category."""
    ok = {
        "pesel": PESEL,
        "scope": "cardiology",
        "category": "first-stable",
        "appointment_id": "p~new",
    }
    pr.check_referral(ref_doc(), REF, **ok)
    pr.check_referral(ref_doc(category="urgent"), REF, **{**ok, "category": "first-urgent"})
    pr.check_referral(ref_doc(), REF, **{**ok, "category": None})  # uncategorised slot
    assert refused(ref_doc(), None) == "missing"
    assert refused(None) == "unknown"
    assert refused(ref_doc(code="9999")) == "unknown"
    assert refused(ref_doc(pesel=woman("1980-01-01"))) == "unknown"
    assert refused(ref_doc(scope="vascular")) == "other-scope"
    assert refused(ref_doc(category="urgent")) == "category"
    for status in ("realized", "cancelled", "expired"):
        assert refused(ref_doc(status=status)) == "used"
    # one active booking per referral; the visit being rescheduled may hand it over
    assert refused(ref_doc(status="booked", appointment_id="p~other")) == "in-use"
    pr.check_referral(
        ref_doc(status="booked", appointment_id="p~old"), REF, **ok, replacing="p~old"
    )
    pr.check_referral(ref_doc(status="booked", appointment_id="p~new"), REF, **ok)  # redelivery


def test_referral_body_shape() -> None:
    assert pr.parse_referral({"key": "Ab12", "code": "0042"}) == {"key": "Ab12", "code": "0042"}
    assert pr.parse_referral(None) is None
    for bad in (
        {"key": "Ab12"},
        {"key": "a-b", "code": "1234"},
        {"key": "A", "code": "12"},
        "A:1234",
    ):
        with pytest.raises(FhirError) as exc:
            pr.parse_referral(bad)
        assert code_of(exc) == (400, "invalid")


# --------------------------------------------------------------------------- R-PAT-3, R-PAT-4


def verdict(
    rule: Any, who: str, day: str, *history: pr.ScreeningExam, **kw: Any
) -> tuple[bool, str | None]:
    v = pr.screening_verdict(rule, who, date.fromisoformat(day), history, **kw)
    return v.eligible, v.code


def test_mammography_sex_and_age_boundaries() -> None:
    """R-PAT-3: mammography for women 45-74 on the day of the exam (both ends inclusive)."""
    born = woman("1982-03-10")
    assert verdict(MAMMO_RULE, born, "2027-03-09") == (False, "not-eligible")  # 44
    assert verdict(MAMMO_RULE, born, "2027-03-10") == (True, None)  # 45th birthday
    old = woman("1952-03-10")
    assert verdict(MAMMO_RULE, old, "2027-03-09") == (True, None)  # still 74
    assert verdict(MAMMO_RULE, old, "2027-03-10") == (False, "not-eligible")  # 75
    man = pesel.generate(date(1970, 1, 1), "male", serial=1)
    assert verdict(MAMMO_RULE, man, "2027-03-10") == (False, "not-eligible")


def test_cytology_age_boundaries() -> None:
    """R-PAT-3: cytology for women 25-64."""
    born = woman("2002-01-20")
    assert verdict(CYTO_RULE, born, "2027-01-19") == (False, "not-eligible")
    assert verdict(CYTO_RULE, born, "2027-01-20") == (True, None)
    old = woman("1962-01-20")
    assert verdict(CYTO_RULE, old, "2027-01-19") == (True, None)  # 64
    assert verdict(CYTO_RULE, old, "2027-01-20") == (False, "not-eligible")  # 65


def test_screening_intervals_both_sides() -> None:
    """R-PAT-3: mammography every 2 years; cytology every 3, every 5 after an HPV test."""
    who = woman("1965-06-01")
    last = pr.ScreeningExam(date(2025, 1, 15))
    assert verdict(MAMMO_RULE, who, "2027-01-14", last) == (False, "screening-interval")
    assert verdict(MAMMO_RULE, who, "2027-01-15", last) == (True, None)
    v = pr.screening_verdict(MAMMO_RULE, who, date(2027, 1, 14), [last])
    assert v.next_date == date(2027, 1, 15)
    assert verdict(CYTO_RULE, who, "2028-01-14", last) == (False, "screening-interval")
    assert verdict(CYTO_RULE, who, "2028-01-15", last) == (True, None)
    hpv = pr.ScreeningExam(date(2022, 1, 15), hpv=True)
    assert verdict(CYTO_RULE, who, "2027-01-14", hpv) == (False, "screening-interval")
    assert verdict(CYTO_RULE, who, "2027-01-15", hpv) == (True, None)
    # the latest exam decides; 29 February moves to 1 March
    leap = pr.ScreeningExam(date(2024, 2, 29))
    assert verdict(MAMMO_RULE, who, "2026-02-28", leap) == (False, "screening-interval")
    assert verdict(MAMMO_RULE, who, "2026-03-01", leap) == (True, None)
    assert verdict(MAMMO_RULE, who, "2027-01-15", pr.ScreeningExam(date(2020, 1, 1)), last) == (
        True,
        None,
    )


def test_a_booked_exam_blocks_unless_it_is_the_one_moved() -> None:
    """R-PAT-4: one booked exam per programme; a reschedule (R-PAT-9) replaces it."""
    who = woman("1965-06-01")
    booked = pr.ScreeningExam(date(2027, 2, 1), booked_as="p~a1")
    assert verdict(MAMMO_RULE, who, "2027-01-20", booked) == (False, "screening-interval")
    assert verdict(MAMMO_RULE, who, "2027-02-10", booked) == (False, "screening-interval")
    assert verdict(MAMMO_RULE, who, "2027-01-20", booked, replacing="p~a1") == (True, None)


def test_exam_day_is_the_warsaw_day() -> None:
    """R-PAT-4: judged for the day of the exam; 2027-03-09 23:30 UTC is 03-10 in Warsaw."""
    born = woman("1982-03-10")
    exam = from_store("2027-03-09T23:30:00.000Z")
    assert warsaw_day(exam) == date(2027, 3, 10)
    assert pr.screening_verdict(MAMMO_RULE, born, warsaw_day(exam), []).eligible


# --------------------------------------------------------------------------- R-CAN-1


def test_cancel_reason_from_the_patient_list() -> None:
    """R-CAN-1: a reason from the fixed list; the patient's part of it."""
    assert pr.check_cancel_reason("patient-request") == "patient-request"
    assert pr.check_cancel_reason("patient-health") == "patient-health"
    for bad in (None, "", "provider-unavailable", "system-duplicate", "other", "nope"):
        with pytest.raises(FhirError) as exc:
            pr.check_cancel_reason(bad)
        assert code_of(exc) == (400, "invalid")


def test_control_visit_cancelled_sends_the_patient_to_the_facility() -> None:
    """R-PAT-6: no rebooking of a continuation visit in IKP."""
    assert pr.next_step({"status": "cancelled", "category": "control"}) == "contact-facility"
    assert pr.next_step({"status": "cancelled", "category": "first-stable"}) == "search-again"
    assert pr.next_step({"status": "booked", "category": "control"}) is None


# --------------------------------------------------------------------------- the embedded SIMP


@pytest.fixture
async def simp() -> StoreEligibility:
    store = MemoryStore()
    await store.start(INDEXES)
    return StoreEligibility(store)


async def test_embedded_simp_judges_from_history(simp: StoreEligibility) -> None:
    """R-PAT-3 / R-PAT-4 through the port: history in the store, one booked exam guarded."""
    who = woman("1965-06-01")
    await simp.store.insert(
        "screenings",
        {"_id": "h1", "pesel": who, "scope": "mammography", "date": "2025-01-15", "status": "done"},
    )
    v = await simp.check(who, "mammography", date(2027, 1, 14))
    assert (v.eligible, v.code, v.next_date) == (False, "screening-interval", date(2027, 1, 15))
    assert (await simp.check(who, "mammography", date(2027, 1, 15))).eligible
    assert (await simp.check(who, "cardiology", date(2027, 1, 15))).eligible  # not screening
    # one booked exam per programme: the guard document decides a race
    assert await simp.booked(who, "mammography", date(2027, 1, 20), "p~a1")
    assert await simp.booked(who, "mammography", date(2027, 1, 20), "p~a1")  # idempotent
    assert not await simp.booked(who, "mammography", date(2027, 1, 21), "p~a2")
    assert not (await simp.check(who, "mammography", date(2027, 1, 21))).eligible
    # a reschedule moves it; cancelling frees it
    assert (await simp.check(who, "mammography", date(2027, 1, 22), replacing="p~a1")).eligible
    assert await simp.booked(who, "mammography", date(2027, 1, 22), "p~a3", replacing="p~a1")
    await simp.cancelled(who, "mammography", "p~a1")  # no longer the booked one: no effect
    assert not await simp.booked(who, "mammography", date(2027, 1, 23), "p~a4")
    await simp.cancelled(who, "mammography", "p~a3")
    assert await simp.booked(who, "mammography", date(2027, 1, 23), "p~a4")


async def test_embedded_simp_keeps_a_long_past_booking_as_done(simp: StoreEligibility) -> None:
    who = woman("1965-06-01")
    assert await simp.booked(who, "mammography", date(2025, 1, 10), "p~old")
    # two years later the visit took place long ago: it counts as done, the guard moves on
    assert await simp.booked(who, "mammography", date(2027, 1, 10), "p~new")
    history = await simp.history(who, "mammography")
    assert sorted((e.day, e.booked_as) for e in history) == [
        (date(2025, 1, 10), None),
        (date(2027, 1, 10), "p~new"),
    ]


# --------------------------------------------------------------------------- handler wiring


async def test_handlers_get_their_dependencies_by_name() -> None:
    async def handler(store: Any, eligibility: Any, msg: Envelope) -> dict[str, Any]:
        return {"store": store, "eligibility": eligibility, "id": msg.id}

    msg = Envelope(id="m1", type="x", body={})
    reply = await invoke(handler, msg, {"store": 1, "clock": 2, "eligibility": 3})
    assert reply == {"store": 1, "eligibility": 3, "id": "m1"}
    with pytest.raises(Reject):
        await invoke(handler, msg, {"store": 1})
