"""FHIR R4 <-> central model for Schedule, Slot and Appointment; code systems as data.

Rule ids (DOMAIN.md) are in the test names or docstrings. Invalid input must
give a 422 whose issues carry the FHIRPath expression of the bad element, and
every issue of a resource is reported at once.
"""

from __future__ import annotations

import copy
import importlib.util
import itertools
import json
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import FhirError
from gateway.model import CentralAppointment, CentralSchedule, CentralSlot
from gateway.timeutil import WARSAW, from_store, parse_instant
from mappings import appointment, codes, location, schedule, slot
from mappings.references import (
    read_bound,
    reference_id,
    reference_type,
    rewrite_references,
)
from mappings.validation import validate_resource

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
HL7_CANCELLATION_REASON = "http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason"
PESEL_OK = "75031424688"  # gateway.pesel.generate(date(1975, 3, 14), "female", serial=1234)


def example(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / name).read_text(encoding="utf-8"))
    return data


def expressions(err: FhirError) -> list[str]:
    return [e for issue in err.issues for e in issue.expression]


def expect_422(fn: Callable[[dict[str, Any]], Any], res: dict[str, Any], *where: str) -> FhirError:
    with pytest.raises(FhirError) as info:
        fn(res)
    err = info.value
    assert err.status == 422
    found = expressions(err)
    for w in where:
        assert w in found, f"{w} not among {found}"
    return err


def drop_displays(obj: Any) -> Any:
    """For comparing the meaning of two FHIR resources: displays are presentation."""
    if isinstance(obj, dict):
        return {k: drop_displays(v) for k, v in obj.items() if k != "display"}
    if isinstance(obj, list):
        return [drop_displays(v) for v in obj]
    return obj


def same_instant(a: str, b: str) -> bool:
    return parse_instant(a) == parse_instant(b)


# --------------------------------------------------------------------------- code systems


CONTRACT_SCOPES = {
    "cardiology",
    "mammography",
    "cytology",
    "vascular",
    "infectious",
    "endocrinology",
    "hepatology",
    "immunology",
    "cystic-fibrosis",
    "nephrology",
    "neonatology",
    "pulmonology",
}


def test_scopes_are_the_twelve_of_the_contract_r_scope_2() -> None:
    """ARCHITECTURE.md "Codes": the scope codes are fixed; stage 1 = cardiology + screening."""
    s = codes.scopes()
    assert set(s) == CONTRACT_SCOPES
    assert {c for c, i in s.items() if i.stage == 1} == {"cardiology", "mammography", "cytology"}
    for code, info in s.items():
        assert info.code == code
        assert info.display_pl and info.display_en


def test_scope_calendar_r_scope_3() -> None:
    for info in codes.scopes().values():
        if info.stage == 1:
            assert info.rollout_from == date(2026, 1, 1)
            assert info.schedules_due == date(2026, 6, 1)
            assert info.central_only_payment_from == date(2026, 7, 1)
        else:
            assert info.rollout_from == date(2026, 8, 1)
            assert info.schedules_due == date(2027, 1, 1)
            assert info.central_only_payment_from == date(2027, 2, 1)


def test_cardiology_needs_referral_has_waiting_room_and_40_days_r_pat_2_r_wait_1_r_wait_2() -> None:
    s = codes.scopes()
    card = s["cardiology"]
    assert card.kind == "specialist"
    assert card.referral_required_first_time is True
    assert card.self_booking_days == 40
    assert card.waiting_room is True
    assert [c for c, i in s.items() if i.waiting_room] == ["cardiology"]
    assert [c for c, i in s.items() if i.slot_category_required] == ["cardiology"]  # R-SCHED-3


def test_screening_scopes_no_referral_90_days_and_simp_rules_r_pat_3_r_pat_4() -> None:
    s = codes.scopes()
    mammo, cyto = s["mammography"], s["cytology"]
    for info in (mammo, cyto):
        assert info.kind == "screening"
        assert info.referral_required_first_time is False
        assert info.self_booking_days == 90
        assert info.screening is not None and info.screening.sex == "female"
    assert mammo.screening is not None and cyto.screening is not None
    assert (mammo.screening.min_age, mammo.screening.max_age) == (45, 74)
    assert mammo.screening.interval_years == 2
    assert (cyto.screening.min_age, cyto.screening.max_age) == (25, 64)
    assert cyto.screening.interval_years == 3
    assert cyto.screening.hpv_interval_years == 5


def test_other_specialist_scopes_need_referral_and_book_40_days_ahead() -> None:
    for code, info in codes.scopes().items():
        if info.kind == "specialist":
            assert info.referral_required_first_time, code
            assert info.self_booking_days == 40, code
            assert info.screening is None, code


def test_slot_categories_r_sched_3_r_pat_1_r_pat_5_r_pat_6() -> None:
    cats = codes.slot_categories()
    assert list(cats) == ["first-urgent", "first-stable", "first-privileged", "control"]
    assert [c for c, i in cats.items() if i.first_time] == [
        "first-urgent",
        "first-stable",
        "first-privileged",
    ]
    assert [c for c, i in cats.items() if i.patient_self_bookable] == [
        "first-urgent",
        "first-stable",
    ]
    assert cats["first-privileged"].medical_category == "privileged"  # R-PAT-5
    assert cats["control"].medical_category is None  # R-PAT-6: booked at the facility
    assert cats["first-urgent"].medical_category == "urgent"
    assert cats["first-stable"].medical_category == "stable"


def test_cancellation_reasons_fixed_list_with_patient_provider_and_system_r_can_1() -> None:
    reasons = codes.cancellation_reasons()
    assert {
        "patient-request",
        "patient-rescheduled",
        "patient-sms",
        "patient-health",
        "provider-unavailable",
        "provider-schedule-change",
        "provider-facility-closed",
        "provider-no-referral",
        "system-referral-invalid",
        "system-eligibility",
        "system-duplicate",
        "other",
    } <= set(reasons)
    assert {i.by for i in reasons.values()} == {"patient", "provider", "system"}
    for code, info in reasons.items():
        assert info.display_pl and info.display_en
        if code != "other":
            assert code.split("-")[0] == info.by, code


def test_channels() -> None:
    assert list(codes.channels()) == [
        "provider",
        "portal",
        "sms",
        "waiting-room",
        "manual",
        "import",
    ]


def test_cell_specialty_map_targets_known_scopes() -> None:
    m = codes.cell_specialty_map()
    assert m["1100"] == "cardiology"
    assert m["1101"] == "cardiology"
    assert m["1130"] == "nephrology"
    assert set(m.values()) <= CONTRACT_SCOPES
    assert all(len(k) == 4 and k.isdigit() for k in m)


@pytest.mark.parametrize(
    ("system", "code", "expected"),
    [
        (codes.SCOPE_SYSTEM, "cardiology", "cardiology"),
        (codes.SCOPE_SYSTEM, "pulmonology", "pulmonology"),
        (codes.SCOPE_SYSTEM, "dermatology", None),
        (codes.CELL_SPECIALTY_SYSTEM, "1100", "cardiology"),
        (codes.CELL_SPECIALTY_SYSTEM, "1101", "cardiology"),
        (codes.CELL_SPECIALTY_SYSTEM, "1500", None),  # general surgery: not a CeR scope
        ("http://snomed.info/sct", "394579002", None),
        (codes.SCOPE_SYSTEM, None, None),
    ],
)
def test_scope_from_coding(system: str, code: str | None, expected: str | None) -> None:
    assert codes.scope_from_coding(system, code) == expected


def test_data_files_agree_with_the_fixed_system_urls() -> None:
    data = ROOT / "mappings" / "data"
    urls = {
        "scope.json": codes.SCOPE_SYSTEM,
        "slot-category.json": codes.SLOT_CATEGORY_SYSTEM,
        "cancellation-reason.json": codes.CANCELLATION_REASON_SYSTEM,
        "appointment-channel.json": codes.APPOINTMENT_CHANNEL_SYSTEM,
        "cell-specialty-scope.json": codes.CELL_SPECIALTY_SCOPE_MAP,
    }
    for name, url in urls.items():
        assert json.loads((data / name).read_text(encoding="utf-8"))["url"] == url
    ids = codes.identifier_systems()
    assert ids["pesel"].system == codes.PESEL_SYSTEM == "urn:oid:2.16.840.1.113883.3.4424.1.1.616"
    assert ids["e-referral"].system == codes.E_REFERRAL_SYSTEM
    assert ids["rpwdl-entity"].system == codes.RPWDL_ENTITY_SYSTEM
    assert ids["rpwdl-unit"].system == codes.RPWDL_UNIT_SYSTEM
    assert ids["rpwdl-cell"].system == codes.RPWDL_CELL_SYSTEM
    assert ids["regon-9"].system == codes.REGON9_SYSTEM
    assert ids["regon-14"].system == codes.REGON14_SYSTEM
    assert ids["npwz"].system == codes.NPWZ_SYSTEM


def test_data_files_are_package_data() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "data/*.json" in pyproject["tool"]["setuptools"]["package-data"]["mappings"]
    names = {p.name for p in (ROOT / "mappings" / "data").glob("*.json")}
    assert {
        "appointment-channel.json",
        "cancellation-reason.json",
        "cell-specialty-scope.json",
        "identifier-systems.json",
        "scope.json",
        "slot-category.json",
        "notification-templates.json",
    } <= names


def test_accessors_hand_out_copies() -> None:
    s = codes.scopes()
    s.pop("cardiology")
    assert "cardiology" in codes.scopes()


def test_referral_required_only_for_first_time_visits_r_pat_2_r_pat_3() -> None:
    assert codes.referral_required("cardiology", "first-stable")
    assert codes.referral_required("cardiology", "first-privileged")
    assert not codes.referral_required("cardiology", "control")
    assert not codes.referral_required("cardiology", None)
    assert not codes.referral_required("mammography", "first-stable")


@pytest.fixture
def extra_scope(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Scope data with one more scope, as an operator would add it (no code change)."""
    real = codes._load

    def load(name: str) -> dict[str, Any]:
        data = real(name)
        if name == "scope.json":
            data = copy.deepcopy(data)
            extra = dict(data["concept"][-1], code="rheumatology", stage=3)
            extra.update(display_pl="Reumatologia", display_en="Rheumatology")
            data["concept"].append(extra)
        if name == "cell-specialty-scope.json":
            data = copy.deepcopy(data)
            data["element"].append({"code": "1280", "target": "rheumatology"})
        return data

    caches = (codes._scopes, codes._cell_specialty_map)
    for c in caches:
        c.cache_clear()
    monkeypatch.setattr(codes, "_load", load)
    yield
    monkeypatch.undo()
    for c in caches:
        c.cache_clear()


@pytest.mark.usefixtures("extra_scope")
def test_adding_a_scope_is_a_data_change_r_scope_2() -> None:
    res = make_slot(scope="rheumatology", category=None)
    assert slot.to_central(res).scope == "rheumatology"
    res["serviceType"] = [{"coding": [{"system": codes.CELL_SPECIALTY_SYSTEM, "code": "1280"}]}]
    assert slot.to_central(res).scope == "rheumatology"


# --------------------------------------------------------------------------- references


@pytest.mark.parametrize(
    ("ref", "rtype", "expected"),
    [
        ("Slot/1", "Slot", "1"),
        ("Slot/abc-1.x", "Slot", "abc-1.x"),
        ("https://gateway.example/fhir/Slot/abc", "Slot", "abc"),
        ("http://localhost:8080/fhir/Schedule/s1", "Schedule", "s1"),
        ("Slot/1/_history/3", "Slot", "1"),
        ("https://gateway.example/fhir/Slot/7/_history/2", "Slot", "7"),
        ("urn:uuid:8f0c3b5e-53a5-4a37-8a5b-6b0f4f3b7d11", "Slot", None),
    ],
)
def test_reference_id_accepts(ref: str, rtype: str, expected: str | None) -> None:
    assert reference_id(ref, rtype) == expected


@pytest.mark.parametrize(
    "ref",
    [
        "Schedule/1",
        "Slot",
        "",
        "#contained",
        "Slot/",
        "Slot/has space",
        "ftp://x/Slot/1",
        "urn:oid:1.2.3",
        "slot/1",
        "Slot/" + "x" * 65,
    ],
)
def test_reference_id_refuses(ref: str) -> None:
    with pytest.raises(ValueError):
        reference_id(ref, "Slot")


def test_reference_type_and_rewrite() -> None:
    assert reference_type("https://x/fhir/Location/l1") == "Location"
    assert reference_type("urn:uuid:1") is None
    res = {"actor": [{"reference": "urn:uuid:a"}, {"reference": "Practitioner/p"}]}
    out = rewrite_references(res, {"urn:uuid:a": "Location/l1"})
    assert out == {"actor": [{"reference": "Location/l1"}, {"reference": "Practitioner/p"}]}
    assert res["actor"][0]["reference"] == "urn:uuid:a"  # a copy


def test_period_bounds_are_warsaw_days() -> None:
    issues: list[Any] = []
    start = read_bound("2027-07-01", "p", issues, upper=False)
    end = read_bound("2027-07", "p", issues, upper=True)
    assert not issues
    assert start == datetime(2027, 7, 1, tzinfo=WARSAW)  # 22:00 UTC the day before (CEST)
    assert end == datetime(2027, 8, 1, tzinfo=WARSAW) - timedelta(milliseconds=1)


# --------------------------------------------------------------------------- Schedule


def test_schedule_example_maps() -> None:
    res = example("schedule-cardiology.json")
    c = schedule.to_central(res)
    assert c.scopes == ["cardiology"]  # scope code and cell specialty 1100 agree
    assert c.location_id == "loc-kardio-krakow"
    assert c.active is True
    assert c.horizon_start == "2026-12-31T23:00:00.000Z"  # 2027-01-01 00:00 in Warsaw
    assert c.horizon_end == "2027-06-30T21:59:59.999Z"  # end of 2027-06-30 in Warsaw (CEST)


def test_schedule_round_trip() -> None:
    res = example("schedule-cardiology.json")
    c = schedule.to_central(res)
    back = schedule.to_fhir(res["id"], c)
    validate_resource(back, "Schedule")
    assert schedule.to_central(back) == c
    assert back["actor"][0] == {"reference": "Location/loc-kardio-krakow"}
    assert codes.SCOPE_SYSTEM in json.dumps(back["serviceType"])
    assert back["identifier"] == res["identifier"]
    assert back["comment"] == res["comment"]


def test_schedule_by_cell_specialty_several_scopes_and_other_actors() -> None:
    res = {
        "resourceType": "Schedule",
        "actor": [
            {"reference": "Practitioner/dr-nowak"},
            {"reference": "https://gateway.example/fhir/Location/l2"},
        ],
        "serviceType": [
            {"coding": [{"system": codes.CELL_SPECIALTY_SYSTEM, "code": "1130"}]},
            {"coding": [{"system": codes.SCOPE_SYSTEM, "code": "endocrinology"}]},
        ],
    }
    c = schedule.to_central(res)
    assert c.scopes == ["nephrology", "endocrinology"]
    assert c.location_id == "l2"
    assert c.other_actors == ["Practitioner/dr-nowak"]
    assert schedule.to_central(schedule.to_fhir("s", c)) == c


def test_schedule_unknown_scope_code() -> None:
    res = example("schedule-cardiology.json")
    res["serviceType"] = [{"coding": [{"system": codes.SCOPE_SYSTEM, "code": "dermatology"}]}]
    expect_422(schedule.to_central, res, "Schedule.serviceType[0].coding[0].code")


def test_schedule_without_scope_r_scope_1() -> None:
    res = example("schedule-cardiology.json")
    del res["serviceType"]
    expect_422(schedule.to_central, res, "Schedule.serviceType")


def test_schedule_service_type_without_our_codes() -> None:
    res = example("schedule-cardiology.json")
    res["serviceType"] = [{"coding": [{"system": "http://snomed.info/sct", "code": "394579002"}]}]
    expect_422(schedule.to_central, res, "Schedule.serviceType[0].coding")


def test_schedule_unmapped_cell_specialty() -> None:
    res = example("schedule-cardiology.json")
    res["serviceType"] = [{"coding": [{"system": codes.CELL_SPECIALTY_SYSTEM, "code": "1500"}]}]
    err = expect_422(schedule.to_central, res, "Schedule.serviceType[0].coding[0].code")
    assert "1500" in err.issues[0].diagnostics


def test_schedule_codings_naming_two_scopes() -> None:
    res = example("schedule-cardiology.json")
    res["serviceType"][0]["coding"][1]["code"] = "1130"  # nephrology, next to cardiology
    expect_422(schedule.to_central, res, "Schedule.serviceType[0].coding")


def test_schedule_without_location() -> None:
    res = example("schedule-cardiology.json")
    res["actor"] = [{"reference": "Practitioner/dr-nowak"}]
    expect_422(schedule.to_central, res, "Schedule.actor")


def test_schedule_with_two_locations() -> None:
    res = example("schedule-cardiology.json")
    res["actor"].append({"reference": "Location/other"})
    expect_422(schedule.to_central, res, "Schedule.actor[1]")


def test_schedule_unresolved_urn_uuid() -> None:
    res = example("schedule-cardiology.json")
    res["actor"] = [{"reference": "urn:uuid:0b7c7f5e-1f4e-4d8e-9d3f-2f1a7c9e0a11"}]
    expect_422(schedule.to_central, res, "Schedule.actor[0].reference")


def test_schedule_horizon_end_before_start_and_no_offset() -> None:
    res = example("schedule-cardiology.json")
    res["planningHorizon"] = {"start": "2027-06-30", "end": "2027-01-01"}
    expect_422(schedule.to_central, res, "Schedule.planningHorizon.end")
    res["planningHorizon"] = {"start": "2027-01-01T08:00:00"}
    expect_422(schedule.to_central, res, "Schedule.planningHorizon.start")


def test_schedule_reports_every_issue_at_once() -> None:
    res = example("schedule-cardiology.json")
    res["serviceType"][0]["coding"][0]["code"] = "dermatology"
    res["actor"] = []
    res["planningHorizon"] = {"start": "2027-06-30", "end": "2027-01-01"}
    expect_422(
        schedule.to_central,
        res,
        "Schedule.serviceType[0].coding[0].code",
        "Schedule.actor",
        "Schedule.planningHorizon.end",
    )


# --------------------------------------------------------------------------- Slot


def make_slot(
    scope: str = "cardiology",
    category: str | None = "first-stable",
    start: str = "2027-01-11T08:00:00+01:00",
    end: str = "2027-01-11T08:20:00+01:00",
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Slot",
        "serviceType": [{"coding": [{"system": codes.SCOPE_SYSTEM, "code": scope}]}],
        "schedule": {"reference": "Schedule/s1"},
        "status": "free",
        "start": start,
        "end": end,
    }
    if category is not None:
        res["appointmentType"] = {
            "coding": [{"system": codes.SLOT_CATEGORY_SYSTEM, "code": category}]
        }
    return res


def test_slot_example_maps() -> None:
    c = slot.to_central(example("slot.json"))
    assert c == CentralSlot(
        schedule_id="sch-kardio-2027",
        scope="cardiology",
        category="first-stable",
        start="2027-01-11T07:00:00.000Z",
        end="2027-01-11T07:20:00.000Z",
        status="free",
        identifiers=[
            {"system": "http://example-vendor.pl/fhir/sid/slot", "value": "SLOT-KARD-20270111-0800"}
        ],
    )


def test_slot_round_trip_keeps_the_meaning() -> None:
    res = example("slot.json")
    res.update(overbooked=True, comment="dodatkowy termin")
    c = slot.to_central(res)
    back = slot.to_fhir(res["id"], c)
    validate_resource(back, "Slot")
    assert slot.to_central(back) == c
    for key in ("serviceType", "appointmentType", "schedule", "status", "identifier"):
        assert drop_displays(back[key]) == drop_displays(res[key]), key
    assert same_instant(back["start"], res["start"])
    assert same_instant(back["end"], res["end"])
    assert back["overbooked"] is True and back["comment"] == "dodatkowy termin"


def test_slot_offsets_are_honoured() -> None:
    a = slot.to_central(make_slot(start="2027-01-11T08:00:00+01:00", end="2027-01-11T09:00:00Z"))
    assert (a.start, a.end) == ("2027-01-11T07:00:00.000Z", "2027-01-11T09:00:00.000Z")


@pytest.mark.parametrize("status", ["open", "booked", "FREE"])
def test_slot_status_outside_r4_set(status: str) -> None:
    res = make_slot()
    res["status"] = status
    expect_422(slot.to_central, res, "Slot.status")


def test_slot_without_status() -> None:
    res = make_slot()
    del res["status"]
    expect_422(slot.to_central, res, "Slot.status")


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2027-01-11T08:20:00+01:00", "2027-01-11T08:00:00+01:00"),
        ("2027-01-11T08:00:00+01:00", "2027-01-11T07:00:00Z"),  # same instant
    ],
)
def test_slot_must_end_after_it_starts(start: str, end: str) -> None:
    expect_422(slot.to_central, make_slot(start=start, end=end), "Slot.end")


@pytest.mark.parametrize("start", ["2027-01-11T08:00:00", "2027-01-11", "11.01.2027 08:00"])
def test_slot_start_needs_an_offset(start: str) -> None:
    expect_422(slot.to_central, make_slot(start=start), "Slot.start")


def test_cardiology_slot_needs_a_category_r_sched_3() -> None:
    expect_422(slot.to_central, make_slot(category=None), "Slot.appointmentType")
    res = make_slot(category=None)
    res["appointmentType"] = {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0276", "code": "ROUTINE"}]
    }
    expect_422(slot.to_central, res, "Slot.appointmentType")


def test_slot_unknown_category() -> None:
    expect_422(
        slot.to_central, make_slot(category="first-vip"), "Slot.appointmentType.coding[0].code"
    )


def test_slot_category_optional_outside_cardiology_and_not_defaulted() -> None:
    """Nephrology (stage 2) may send no category: it stays None (no guessed default)."""
    c = slot.to_central(make_slot(scope="nephrology", category=None))
    assert c.category is None
    back = slot.to_fhir("x", c)
    assert "appointmentType" not in back
    assert slot.to_central(back) == c


def test_slot_unknown_scope() -> None:
    expect_422(
        slot.to_central, make_slot(scope="dermatology"), "Slot.serviceType[0].coding[0].code"
    )


def test_slot_scope_by_cell_specialty() -> None:
    res = make_slot()
    res["serviceType"] = [{"coding": [{"system": codes.CELL_SPECIALTY_SYSTEM, "code": "1101"}]}]
    assert slot.to_central(res).scope == "cardiology"


def test_slot_without_scope_and_with_two_scopes() -> None:
    res = make_slot()
    del res["serviceType"]
    expect_422(slot.to_central, res, "Slot.serviceType")
    res = make_slot(scope="nephrology", category=None)
    res["serviceType"].append({"coding": [{"system": codes.SCOPE_SYSTEM, "code": "hepatology"}]})
    expect_422(slot.to_central, res, "Slot.serviceType")


@pytest.mark.parametrize(
    "ref", ["Location/l1", "Schedule", "urn:uuid:0b7c7f5e-1f4e-4d8e-9d3f-2f1a7c9e0a11"]
)
def test_slot_schedule_reference(ref: str) -> None:
    res = make_slot()
    res["schedule"] = {"reference": ref}
    expect_422(slot.to_central, res, "Slot.schedule.reference")


def test_slot_without_schedule() -> None:
    res = make_slot()
    del res["schedule"]
    expect_422(slot.to_central, res, "Slot.schedule")


def test_slot_reports_every_issue_at_once() -> None:
    res = make_slot(
        category="first-vip", start="2027-01-11T09:00:00+01:00", end="2027-01-11T08:00:00+01:00"
    )
    res["status"] = "open"
    res["schedule"] = {"reference": "Location/l1"}
    err = expect_422(
        slot.to_central,
        res,
        "Slot.status",
        "Slot.appointmentType.coding[0].code",
        "Slot.end",
        "Slot.schedule.reference",
    )
    assert len(err.issues) == 4


# --------------------------------------------------------------------------- Appointment


def make_appointment(**changes: Any) -> dict[str, Any]:
    res = example("appointment-booked.json")
    res.update(changes)
    return res


def test_appointment_booked_example_maps() -> None:
    c = appointment.to_central(example("appointment-booked.json"))
    assert c.status == "booked"
    assert c.slot_ids == ["slot-kard-20270111-0800"]
    assert (c.start, c.end) == ("2027-01-11T07:00:00.000Z", "2027-01-11T07:20:00.000Z")
    assert (c.scope, c.category) == ("cardiology", "first-stable")
    assert c.patient_pesel == PESEL_OK
    assert c.referral is not None and (c.referral.key, c.referral.code) == (
        "2gH7kQ9xLm3Pz8Rt",
        "4821",
    )
    assert c.contact is not None
    assert (c.contact.phone, c.contact.email) == ("+48600100200", "pacjentka@example.pl")
    assert c.channel == "provider"
    assert c.privileged is False
    assert c.cancel_reason is None


@pytest.mark.parametrize("name", ["appointment-booked.json", "appointment-cancelled.json"])
def test_appointment_round_trip_keeps_the_meaning(name: str) -> None:
    res = example(name)
    c = appointment.to_central(res)
    back = appointment.to_fhir(res["id"], c)
    validate_resource(back, "Appointment")
    assert appointment.to_central(back) == c
    for key in ("status", "slot", "basedOn", "serviceType", "appointmentType", "identifier"):
        assert drop_displays(back.get(key)) == drop_displays(res.get(key)), key
    assert drop_displays(back.get("cancelationReason")) == drop_displays(
        res.get("cancelationReason")
    )
    assert same_instant(back["start"], res["start"]) and same_instant(back["end"], res["end"])
    patient = back["participant"][0]["actor"]["identifier"]
    assert patient == res["participant"][0]["actor"]["identifier"]

    def meaning(ext: dict[str, Any]) -> tuple[str, Any]:
        if "valueDateTime" in ext:
            return ext["url"], parse_instant(ext["valueDateTime"])
        value = next(v for k, v in ext.items() if k.startswith("value"))
        return ext["url"], json.dumps(drop_displays(value), sort_keys=True)

    assert sorted(map(meaning, back["extension"])) == sorted(map(meaning, res["extension"]))


def test_appointment_cancelled_example_r_can_1() -> None:
    c = appointment.to_central(example("appointment-cancelled.json"))
    assert c.status == "cancelled"
    assert c.cancel_reason == "patient-sms"
    assert codes.cancellation_reasons()[c.cancel_reason].by == "patient"
    assert c.cancelled_at == "2027-01-10T17:42:00.000Z"
    assert c.channel == "portal"


def test_appointment_without_times_takes_them_from_the_slot_later() -> None:
    res = make_appointment()
    del res["start"], res["end"], res["serviceType"], res["appointmentType"]
    c = appointment.to_central(res)
    assert (c.start, c.end, c.scope, c.category) == (None, None, None, None)
    assert appointment.to_central(appointment.to_fhir("a", c)) == c


def test_waiting_room_entry_with_requested_period_r_wait_4() -> None:
    res = make_appointment(
        status="waitlist",
        requestedPeriod=[
            {"start": "2027-01-11", "end": "2027-02-19"},
            {"start": "2027-03-01T08:00:00+01:00"},
        ],
    )
    for key in ("slot", "start", "end"):
        del res[key]
    c = appointment.to_central(res)
    assert c.slot_ids == []
    assert c.requested_period[0].start == "2027-01-10T23:00:00.000Z"
    assert c.requested_period[0].end == "2027-02-19T22:59:59.999Z"
    assert c.requested_period[1].end is None
    back = appointment.to_fhir("w", c)
    validate_resource(back, "Appointment")
    assert appointment.to_central(back) == c


@pytest.mark.parametrize("status", ["confirmed", "Booked", "canceled"])
def test_appointment_status_outside_r4_set(status: str) -> None:
    expect_422(appointment.to_central, make_appointment(status=status), "Appointment.status")


@pytest.mark.parametrize(
    ("value", "word"),
    [
        ("75031424680", "checksum"),
        ("7503142468", "11 digits"),
        ("7503142468X", "digits"),
    ],
)
def test_appointment_patient_pesel_is_checked(value: str, word: str) -> None:
    """DOMAIN.md Identifiers/PESEL: a bad checksum is refused with a clear message."""
    res = make_appointment()
    res["participant"][0]["actor"]["identifier"]["value"] = value
    err = expect_422(
        appointment.to_central, res, "Appointment.participant[0].actor.identifier.value"
    )
    assert word in err.issues[0].diagnostics
    assert value not in err.issues[0].diagnostics  # personal data stays out of messages


def test_appointment_needs_one_pesel_patient() -> None:
    res = make_appointment()
    res["participant"][0]["actor"]["identifier"]["system"] = "urn:oid:1.2.3"
    expect_422(appointment.to_central, res, "Appointment.participant")
    res = make_appointment()
    res["participant"].append(copy.deepcopy(res["participant"][0]))
    expect_422(appointment.to_central, res, "Appointment.participant[1].actor.identifier.value")


@pytest.mark.parametrize(
    "value",
    [
        "2gH7kQ9xLm3Pz8Rt:482",  # code: 3 digits
        "2gH7kQ9xLm3Pz8Rt:48210",  # code: 5 digits
        "2gH7kQ9xLm3Pz8Rt:48a1",
        "2gH7-kQ9x:4821",  # key: not alphanumeric
        ":4821",  # key: empty
        "K" * 45 + ":4821",  # key: too long
        "2gH7kQ9xLm3Pz8Rt4821",  # no colon
        "a:b:4821",
        "Żółw:4821",  # key: not ASCII
    ],
)
def test_e_referral_must_be_key_colon_four_digit_code_r_pat_2(value: str) -> None:
    res = make_appointment()
    res["basedOn"][0]["identifier"]["value"] = value
    expect_422(appointment.to_central, res, "Appointment.basedOn[0].identifier.value")


def test_e_referral_key_of_44_characters_is_fine() -> None:
    res = make_appointment()
    res["basedOn"][0]["identifier"]["value"] = "a1" * 22 + ":0000"
    c = appointment.to_central(res)
    assert c.referral is not None and len(c.referral.key) == 44


def test_first_time_cardiology_visit_without_referral_r_pat_2() -> None:
    res = make_appointment()
    del res["basedOn"]
    expect_422(appointment.to_central, res, "Appointment.basedOn")


def test_control_visit_needs_no_referral_r_pat_1_r_pat_6() -> None:
    res = make_appointment()
    del res["basedOn"]
    res["appointmentType"]["coding"][0]["code"] = "control"
    c = appointment.to_central(res)
    assert c.referral is None and c.category == "control"


def test_screening_visit_needs_no_referral_r_pat_3() -> None:
    res = make_appointment()
    del res["basedOn"]
    res["serviceType"][0]["coding"][0]["code"] = "mammography"
    assert appointment.to_central(res).scope == "mammography"


def test_cancelled_without_reason_r_can_1() -> None:
    res = example("appointment-cancelled.json")
    del res["cancelationReason"]
    expect_422(appointment.to_central, res, "Appointment.cancelationReason")


def test_cancelled_with_free_text_only_r_can_1() -> None:
    res = example("appointment-cancelled.json")
    res["cancelationReason"] = {"text": "pacjentka zadzwoniła"}
    expect_422(appointment.to_central, res, "Appointment.cancelationReason.coding")
    res["cancelationReason"] = {"coding": [{"system": HL7_CANCELLATION_REASON, "code": "pat"}]}
    expect_422(appointment.to_central, res, "Appointment.cancelationReason.coding")


def test_cancelled_with_unknown_reason_r_can_1() -> None:
    res = example("appointment-cancelled.json")
    res["cancelationReason"]["coding"][0]["code"] = "bored"
    expect_422(appointment.to_central, res, "Appointment.cancelationReason.coding[0].code")


def test_cancel_note_is_kept() -> None:
    res = example("appointment-cancelled.json")
    res["cancelationReason"]["coding"][0]["code"] = "other"
    res["cancelationReason"]["text"] = "remont gabinetu"
    c = appointment.to_central(res)
    assert (c.cancel_reason, c.cancel_note) == ("other", "remont gabinetu")
    assert appointment.to_fhir("a", c)["cancelationReason"]["text"] == "remont gabinetu"


def test_appointment_slot_references() -> None:
    expect_422(
        appointment.to_central,
        make_appointment(slot=[{"reference": "Schedule/s1"}]),
        "Appointment.slot[0].reference",
    )
    res = make_appointment()
    del res["slot"]
    expect_422(appointment.to_central, res, "Appointment.slot")


def test_appointment_times() -> None:
    res = make_appointment()
    del res["end"]
    expect_422(appointment.to_central, res, "Appointment.end")
    res = make_appointment(end="2027-01-11T07:59:00+01:00")
    expect_422(appointment.to_central, res, "Appointment.end")
    res = make_appointment(start="2027-01-11T08:00:00")
    expect_422(appointment.to_central, res, "Appointment.start")


def test_appointment_unknown_scope_and_category() -> None:
    res = make_appointment()
    res["serviceType"][0]["coding"][0]["code"] = "dermatology"
    res["appointmentType"]["coding"][0]["code"] = "first-vip"
    expect_422(
        appointment.to_central,
        res,
        "Appointment.serviceType[0].coding[0].code",
        "Appointment.appointmentType.coding[0].code",
    )


def test_booking_channel() -> None:
    res = make_appointment()
    res["extension"][0]["valueCoding"]["code"] = "fax"
    expect_422(appointment.to_central, res, "Appointment.extension[0].valueCoding.code")
    res = make_appointment()
    res["extension"][0]["valueCoding"]["code"] = "import"  # R-SCHED-5
    assert appointment.to_central(res).channel == "import"
    res["extension"].pop(0)
    assert appointment.to_central(res).channel == "provider"


def test_privileged_visit_r_pat_5() -> None:
    res = make_appointment()
    res["appointmentType"]["coding"][0]["code"] = "first-privileged"
    c = appointment.to_central(res)
    assert c.privileged is True
    assert appointment.to_central(appointment.to_fhir("p", c)).privileged is True
    res["extension"].append({"url": codes.EXT_PRIVILEGED, "valueBoolean": False})
    assert appointment.to_central(res).privileged is False


def test_contact_data_r_pat_7() -> None:
    res = make_appointment()
    res["extension"][1]["valueContactPoint"]["value"] = "+48 600-100-200"
    c = appointment.to_central(res)
    assert c.contact is not None and c.contact.phone == "+48600100200"
    res["extension"][2]["valueContactPoint"]["value"] = "pacjentka.example.pl"
    expect_422(appointment.to_central, res, "Appointment.extension[2].valueContactPoint.value")
    res = make_appointment()
    res["extension"][1]["valueContactPoint"]["value"] = "12"
    expect_422(appointment.to_central, res, "Appointment.extension[1].valueContactPoint.value")
    res = make_appointment()
    res["extension"][1]["valueContactPoint"]["system"] = "fax"
    expect_422(appointment.to_central, res, "Appointment.extension[1].valueContactPoint.system")


def test_cancellation_date_needs_an_offset() -> None:
    res = example("appointment-cancelled.json")
    res["extension"][2]["valueDateTime"] = "2027-01-10T18:42:00"
    expect_422(appointment.to_central, res, "Appointment.extension[2].valueDateTime")


def test_appointment_reports_every_issue_at_once() -> None:
    res = make_appointment(status="cancelled", end="2027-01-11T07:00:00+01:00")
    res["participant"][0]["actor"]["identifier"]["value"] = "75031424680"
    res["basedOn"][0]["identifier"]["value"] = "KEY:12"
    expect_422(
        appointment.to_central,
        res,
        "Appointment.cancelationReason",
        "Appointment.end",
        "Appointment.participant[0].actor.identifier.value",
        "Appointment.basedOn[0].identifier.value",
    )


def test_personal_data_stay_out_of_repr() -> None:
    c = appointment.to_central(example("appointment-booked.json"))
    text = repr(c)
    assert PESEL_OK not in text and "600100200" not in text and "2gH7kQ9x" not in text


# --------------------------------------------------------------------------- examples


SINGLE_EXAMPLES: list[tuple[str, str, Callable[[dict[str, Any]], Any]]] = [
    ("location.json", "Location", location.to_central),
    ("schedule-cardiology.json", "Schedule", schedule.to_central),
    ("slot.json", "Slot", slot.to_central),
    ("appointment-booked.json", "Appointment", appointment.to_central),
    ("appointment-cancelled.json", "Appointment", appointment.to_central),
]


@pytest.mark.parametrize(("name", "rtype", "to_central"), SINGLE_EXAMPLES)
def test_example_validates_and_maps(
    name: str, rtype: str, to_central: Callable[[dict[str, Any]], Any]
) -> None:
    res = example(name)
    assert validate_resource(res, rtype) is res
    to_central(res)


def load_make_week() -> Any:
    spec = importlib.util.spec_from_file_location("make_week", EXAMPLES / "make_week.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_week_bundle_is_what_the_generator_writes(tmp_path: Path) -> None:
    make_week = load_make_week()
    out = tmp_path / "week.json"
    assert make_week.main(["make_week.py", str(out)]) == 0
    committed = (EXAMPLES / "transaction-week-cardiology.json").read_text(encoding="utf-8")
    assert out.read_text(encoding="utf-8") == committed


def test_week_bundle_validates_and_maps_after_the_transaction_assigns_ids() -> None:
    bundle = example("transaction-week-cardiology.json")
    validate_resource(bundle, "Bundle")
    assert bundle["type"] == "transaction"
    entries = bundle["entry"]
    full_urls = [e["fullUrl"] for e in entries]
    assert len(set(full_urls)) == len(entries)
    assert all(u.startswith("urn:uuid:") for u in full_urls)

    ids = {e["fullUrl"]: f"{e['resource']['resourceType']}/id{n}" for n, e in enumerate(entries)}
    mappers: dict[str, Callable[[dict[str, Any]], Any]] = {
        "Location": location.to_central,
        "Schedule": schedule.to_central,
        "Slot": slot.to_central,
    }
    centrals: dict[str, list[Any]] = {"Location": [], "Schedule": [], "Slot": []}
    for e in entries:
        res = e["resource"]
        rtype = res["resourceType"]
        ident = res["identifier"][0]
        assert e["request"] == {
            "method": "POST",
            "url": rtype,
            "ifNoneExist": f"identifier={ident['system']}|{ident['value']}",
        }
        assert ident["system"].startswith("http://example-vendor.pl/fhir/sid/")
        centrals[rtype].append(mappers[rtype](rewrite_references(res, ids)))

    assert len(centrals["Location"]) == 1 and len(centrals["Schedule"]) == 1
    sched: CentralSchedule = centrals["Schedule"][0]
    assert sched.scopes == ["cardiology"] and sched.location_id == "id0"
    slots: list[CentralSlot] = centrals["Slot"]
    assert len(slots) == 5 * 12
    assert {s.schedule_id for s in slots} == {"id1"}
    by_day: dict[date, list[CentralSlot]] = {}
    for s in slots:
        start, end = from_store(s.start).astimezone(WARSAW), from_store(s.end).astimezone(WARSAW)
        assert end - start == timedelta(minutes=20)
        assert start.hour >= 8 and (end.hour, end.minute) <= (12, 0)
        by_day.setdefault(start.date(), []).append(s)
    assert sorted(by_day) == [date(2027, 1, 11) + timedelta(days=d) for d in range(5)]
    assert [d.weekday() for d in sorted(by_day)] == [0, 1, 2, 3, 4]
    for day in by_day.values():
        assert [s.start for s in day] == sorted(s.start for s in day)
        assert all(a.end == b.start for a, b in itertools.pairwise(day))
    mix = Counter(s.category for s in slots)
    assert mix.most_common(1)[0][0] == "first-stable"
    assert mix["first-urgent"] >= 3 and mix["control"] >= 3
    assert 1 <= mix["first-privileged"] <= 2


def test_week_bundle_entries_before_the_transaction_resolves_urn_uuids() -> None:
    bundle = example("transaction-week-cardiology.json")
    expect_422(schedule.to_central, bundle["entry"][1]["resource"], "Schedule.actor[0].reference")
    expect_422(slot.to_central, bundle["entry"][2]["resource"], "Slot.schedule.reference")


def test_generated_appointment_shapes_are_valid_r4() -> None:
    c = CentralAppointment(
        status="booked",
        slot_ids=["s1"],
        patient_pesel=PESEL_OK,
        channel="waiting-room",
        cancelled_at=None,
    )
    out = appointment.to_fhir("a1", c)
    validate_resource(out, "Appointment")
    assert appointment.to_central(out) == c


@pytest.mark.parametrize("junk", [5, 1.5, True, "cardiology", {"coding": []}])
def test_a_slot_service_type_that_is_not_a_list_is_a_422_issue(junk: Any) -> None:
    """Called directly (fhir.resources refuses such input before the API gets here),
    the mapping still answers with the FHIR issue, never a TypeError."""
    res = make_slot()
    res["serviceType"] = junk
    with pytest.raises(FhirError) as err:
        slot.to_central(res)
    assert err.value.status == 422
    assert any(i.expression == ["Slot.serviceType"] for i in err.value.issues)


@pytest.mark.parametrize(
    ("field", "junk"),
    [
        *((f, j) for f in appointment.LIST_FIELDS for j in (5, 1.5, True, "x", {"a": 1})),
        *(("comment", j) for j in (5, [5], {"a": 1}, ["x"])),
    ],
)
def test_an_appointment_field_of_the_wrong_json_type_is_a_422_issue(field: str, junk: Any) -> None:
    """Called directly (fhir.resources refuses such input before the API gets here), the
    mapping answers with the FHIR issue, never a TypeError or a pydantic error."""
    res = example("appointment-booked.json")
    res[field] = junk
    with pytest.raises(FhirError) as err:
        appointment.to_central(res)
    assert err.value.status == 422
    assert any(i.expression == [f"Appointment.{field}"] for i in err.value.issues)


def test_an_appointment_field_given_as_null_is_absent() -> None:
    res = example("appointment-booked.json")
    with_nulls = {**res, "identifier": None, "extension": None, "comment": None}
    without = {k: v for k, v in res.items() if k not in ("identifier", "extension", "comment")}
    assert appointment.to_central(with_nulls) == appointment.to_central(without)
