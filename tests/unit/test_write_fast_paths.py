"""The write path's shortcuts give what the code they replace gave.

Each test keeps a copy of the replaced code (``_reference_*``) and compares it with the
shortcut on examples and on generated input, so that a change of either shows here.
"""

from __future__ import annotations

import io
import json
import logging
import random
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pydantic
import pytest
import structlog

from gateway import booking, waiting_assign
from gateway.logging import configure_logging
from gateway.model import (
    CentralAppointment,
    CentralContact,
    CentralPeriod,
    CentralReferral,
)
from gateway.timeutil import WARSAW, from_store, to_fhir, to_store, utc
from mappings import appointment, codes
from mappings.references import fhir_instant, write_identifiers

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
PESELS = ("75031424688", "02270803628", "44051401359")


# --------------------------------------------------------------------------- instants


def _reference_to_fhir(dt: datetime) -> str:
    d = utc(dt)
    if d.microsecond:
        return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"
    return d.strftime("%Y-%m-%dT%H:%M:%SZ")


def _instants(rng: random.Random, n: int) -> list[datetime]:
    zones = [UTC, WARSAW, timezone(timedelta(hours=-5)), timezone(timedelta(minutes=345))]
    out = []
    for i in range(n):
        year = rng.choice([1, 9, 10, 999, 1000, 1970, 2026, 2027, 9998])
        dt = datetime(year, rng.randint(1, 12), rng.randint(1, 28), tzinfo=UTC) + timedelta(
            seconds=rng.randint(0, 86399),
            microseconds=0 if i % 3 == 0 else rng.randint(0, 999_999),
        )
        out.append(dt.astimezone(rng.choice(zones)))
    return out


def test_to_fhir_is_strftimes_text() -> None:
    rng = random.Random(5)
    cases = [
        *_instants(rng, 3000),
        datetime(2027, 1, 11, 7, 0, tzinfo=UTC),
        datetime(2027, 1, 11, 7, 0, 0, 999, tzinfo=UTC),  # under a millisecond: ".000"
        datetime(2027, 1, 11, 7, 0, 0, 1000, tzinfo=UTC),
        datetime(2027, 3, 28, 3, 30, tzinfo=WARSAW),
    ]
    for dt in cases:
        assert to_fhir.__wrapped__(dt) == _reference_to_fhir(dt), dt
        assert to_fhir(dt) == _reference_to_fhir(dt), dt
    with pytest.raises(ValueError):
        to_fhir.__wrapped__(datetime(2027, 1, 11, 7, 0))


# --------------------------------------------------------------------------- Appointment


def _reference_appointment_to_fhir(rid: str, central: CentralAppointment) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Appointment", "id": rid}
    extensions: list[dict[str, Any]] = [
        {
            "url": codes.EXT_BOOKING_CHANNEL,
            "valueCoding": codes.coding(codes.APPOINTMENT_CHANNEL_SYSTEM, central.channel),
        }
    ]
    if central.privileged:
        extensions.append({"url": codes.EXT_PRIVILEGED, "valueBoolean": True})
    if central.contact is not None:
        if central.contact.phone:
            extensions.append(
                {
                    "url": codes.EXT_PATIENT_CONTACT,
                    "valueContactPoint": {"system": "phone", "value": central.contact.phone},
                }
            )
        if central.contact.email:
            extensions.append(
                {
                    "url": codes.EXT_PATIENT_CONTACT,
                    "valueContactPoint": {"system": "email", "value": central.contact.email},
                }
            )
    if central.cancelled_at:
        extensions.append(
            {
                "url": codes.EXT_CANCELLATION_DATE,
                "valueDateTime": fhir_instant(central.cancelled_at),
            }
        )
    out["extension"] = extensions
    if central.identifiers:
        out["identifier"] = write_identifiers(central.identifiers)
    out["status"] = central.status
    if central.cancel_reason or central.cancel_note:
        reason: dict[str, Any] = {}
        if central.cancel_reason:
            reason["coding"] = [
                codes.coding(codes.CANCELLATION_REASON_SYSTEM, central.cancel_reason)
            ]
        if central.cancel_note:
            reason["text"] = central.cancel_note
        out["cancelationReason"] = reason
    if central.scope:
        out["serviceType"] = [{"coding": [codes.coding(codes.SCOPE_SYSTEM, central.scope)]}]
    if central.category:
        out["appointmentType"] = {
            "coding": [codes.coding(codes.SLOT_CATEGORY_SYSTEM, central.category)]
        }
    if central.start:
        out["start"] = fhir_instant(central.start)
    if central.end:
        out["end"] = fhir_instant(central.end)
    if central.slot_ids:
        out["slot"] = [{"reference": f"Slot/{sid}"} for sid in central.slot_ids]
    if central.comment:
        out["comment"] = central.comment
    if central.referral is not None:
        out["basedOn"] = [
            {
                "identifier": {
                    "system": codes.E_REFERRAL_SYSTEM,
                    "value": f"{central.referral.key}:{central.referral.code}",
                }
            }
        ]
    waiting = central.status in ("proposed", "pending", "waitlist")
    out["participant"] = [
        {
            "actor": {
                "type": "Patient",
                "identifier": {"system": codes.PESEL_SYSTEM, "value": central.patient_pesel},
            },
            "required": "required",
            "status": "needs-action" if waiting else "accepted",
        }
    ]
    if central.requested_period:
        periods = []
        for p in central.requested_period:
            period: dict[str, str] = {}
            if p.start:
                period["start"] = fhir_instant(p.start)
            if p.end:
                period["end"] = fhir_instant(p.end)
            periods.append(period)
        out["requestedPeriod"] = periods
    return out


def _store_instant(rng: random.Random) -> str:
    base = datetime(2027, 1, 1, tzinfo=UTC)
    return to_store(base + timedelta(minutes=5 * rng.randint(0, 40000)))


def _models(rng: random.Random, n: int) -> list[CentralAppointment]:
    statuses = list(appointment.STATUSES)
    out = []
    for _ in range(n):
        start = _store_instant(rng) if rng.random() < 0.8 else None
        out.append(
            CentralAppointment(
                status=rng.choice(statuses),
                slot_ids=rng.choice([[], ["s1"], ["s1", "s-2"]]),
                start=start,
                end=to_store(datetime.fromisoformat(start) + timedelta(minutes=20))
                if start
                else None,
                scope=rng.choice([None, "cardiology", "endocrinology"]),
                category=rng.choice([None, "first-stable", "first-urgent", "control"]),
                patient_pesel=rng.choice(PESELS),
                referral=rng.choice([None, CentralReferral(key="K9x", code="0001")]),
                cancel_reason=rng.choice([None, "patient-sms"]),
                cancel_note=rng.choice([None, "", "remont"]),
                cancelled_at=rng.choice([None, _store_instant(rng)]),
                channel=rng.choice(["provider", "portal", "waiting-room"]),
                booked_at=rng.choice([None, _store_instant(rng)]),
                contact=rng.choice(
                    [
                        None,
                        CentralContact(),
                        CentralContact(phone="+48600100200"),
                        CentralContact(email="a@b.pl"),
                        CentralContact(phone="600100200", email="a@b.pl"),
                        CentralContact(phone="", email=""),
                    ]
                ),
                privileged=rng.random() < 0.3,
                requested_period=rng.choice(
                    [
                        [],
                        [CentralPeriod(start=_store_instant(rng))],
                        [CentralPeriod(end=_store_instant(rng)), CentralPeriod()],
                    ]
                ),
                comment=rng.choice([None, "", "proszę o telefon"]),
                identifiers=rng.choice(
                    [[], [{"system": "urn:x", "value": "1"}, {"system": None, "value": "2"}]]
                ),
            )
        )
    return out


def _examples() -> list[CentralAppointment]:
    return [
        appointment.to_central(json.loads((EXAMPLES / name).read_text(encoding="utf-8")))
        for name in ("appointment-booked.json", "appointment-cancelled.json")
    ]


def test_appointment_to_fhir_is_the_previous_one() -> None:
    for c in [*_examples(), *_models(random.Random(11), 1500)]:
        want = _reference_appointment_to_fhir("a1", c)
        assert appointment.to_fhir("a1", c) == want
        assert json.dumps(appointment.to_fhir("a1", c)) == json.dumps(want)  # key order too
        assert appointment.to_fhir_dict("a1", c.model_dump()) == want


# --------------------------------------------------------------------------- a waiting-room visit


def _reference_booking(
    rid: str, entry: dict[str, Any], slot: dict[str, Any], status: Any, extra: list[Any]
) -> dict[str, Any]:
    """``waiting_assign._appointment`` as it was: through ``CentralAppointment``."""
    s = slot["central"]
    ref = entry.get("referral")
    central = CentralAppointment(
        status=status,
        slot_ids=[slot["rid"]],
        start=s["start"],
        end=s["end"],
        scope=s["scope"],
        category=s.get("category"),
        patient_pesel=entry["pesel"],
        referral=CentralReferral(**ref) if ref else None,
        channel=waiting_assign.CHANNEL,
        contact=CentralContact(**entry["contact"]) if entry.get("contact") else None,
        privileged=bool(entry.get("privileged")),
    )
    resource = _reference_appointment_to_fhir(rid, central)
    if extra:
        resource["extension"] = [*resource.get("extension", []), *extra]
    return {
        "method": "POST",
        "type": "Appointment",
        "id": rid,
        "resource": resource,
        "central": central.model_dump(),
    }


def _slot(rng: random.Random) -> dict[str, Any]:
    start = datetime(2027, 2, 15, 7, tzinfo=WARSAW) + timedelta(
        days=rng.randint(0, 6), minutes=5 * rng.randint(0, 143)
    )
    return {
        "_id": "p/Slot/s1",
        "tenant": "p",
        "rid": f"s{rng.randint(0, 999)}",
        "central": {
            "schedule_id": "sch",
            "scope": rng.choice(["cardiology", "endocrinology"]),
            "category": rng.choice(
                [None, "first-stable", "first-urgent", "first-privileged", "control"]
            ),
            "start": to_store(start),
            "end": to_store(start + timedelta(minutes=5)),
            "status": "free",
            "location_id": "loc",
            "city": "Kraków",
            "postal_code": "31-147",
            "appointment_id": None,
        },
    }


def _entry(rng: random.Random) -> dict[str, Any]:
    crit: dict[str, Any] = rng.choice(
        [{}, {"city": "Kraków"}, {"facility": ["p", "loc"]}, {"postal_code": "31"}]
    )
    if rng.random() < 0.3:
        crit["weekdays"] = sorted(rng.sample(range(1, 6), rng.randint(1, 4)))
    if rng.random() < 0.3:
        crit["hours"] = [420 + 60 * rng.randint(0, 8), 900]
    entry: dict[str, Any] = {
        "_id": f"e{rng.randint(0, 9999)}",
        "pesel": rng.choice(PESELS),
        "scope": "cardiology",
        "queue": rng.choice(["stable", "urgent"]),
        "rank": "r",
        "criteria": crit,
        "gave_up": [],
        "privileged": rng.choice([None, False, True, 0, 1]),
        "referral": rng.choice(
            [
                None,
                {},
                {"key": "B0000000000000000001", "code": "1234"},
                {"key": "K", "code": "0000", "extra": "ignored"},
            ]
        ),
        "contact": rng.choice(
            [
                None,
                {},
                {"phone": "+48600100200", "email": None},
                {"phone": None, "email": "a@b.pl"},
                {"phone": "600100200", "email": "a@b.pl"},
                {"phone": None, "email": None},
                {"phone": "+48600100200", "email": None, "extra": 1},
            ]
        ),
    }
    for name in ("privileged", "referral", "contact"):
        if entry[name] is None and rng.random() < 0.5:
            del entry[name]  # absent, not None
    return entry


def _assert_same_booking(entry: dict[str, Any], slot: dict[str, Any], status: Any) -> None:
    extra = [{"url": "x", "valueDateTime": "2027-01-01T00:00:00Z"}] if status == "proposed" else []
    try:
        want = _reference_booking("wra-1", entry, slot, status, list(extra))
    except (pydantic.ValidationError, TypeError, KeyError) as err:
        with pytest.raises(type(err)):
            waiting_assign._appointment("wra-1", entry, slot, status, list(extra))
        return
    got = waiting_assign._appointment("wra-1", entry, slot, status, list(extra))
    assert got == want
    assert json.dumps(got) == json.dumps(want)  # key order too
    assert got["central"] == CentralAppointment.model_validate(got["central"]).model_dump()


def test_waiting_room_visit_is_the_models() -> None:
    rng = random.Random(3)
    for _ in range(3000):
        _assert_same_booking(_entry(rng), _slot(rng), rng.choice(["booked", "proposed"]))


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("start", "2027-02-15T07:00:00Z"),  # not a store instant: the model refuses it
        ("start", "2027-02-15T07:00:00.000Z\n"),
        ("end", None),
        ("end", "2027-02-15T07:05:00+01:00"),
        ("scope", 5),
        ("category", ["x"]),
        ("pesel", 75031424688),
        ("referral", {"key": "K"}),
        ("referral", {"key": 5, "code": "1234"}),
        ("contact", {"phone": 600100200}),
        ("contact", "600100200"),
        ("status", "confirmed"),
    ],
)
def test_waiting_room_visit_refused_or_converted_as_the_model_does(where: str, value: Any) -> None:
    rng = random.Random(where)
    entry, slot = _entry(rng), _slot(rng)
    status: Any = "booked"
    if where in ("start", "end", "scope", "category"):
        slot["central"][where] = value
    elif where == "status":
        status = value
    else:
        entry[where] = value
    _assert_same_booking(entry, slot, status)


# --------------------------------------------------------------------------- lead time


def test_lead_time_hours_is_the_parsed_starts() -> None:
    rng = random.Random(8)
    now = datetime(2027, 1, 5, 22, 50, 1, 123456, tzinfo=UTC)
    for _ in range(3000):
        start = _store_instant(rng)
        at = now + timedelta(microseconds=rng.randint(0, 10**9))
        want = round((from_store(start) - at).total_seconds() / 3600, 3)
        assert booking.lead_time_hours({"start": start}, at) == want


# --------------------------------------------------------------------------- logging


def test_a_proxys_bound_logger_logs_as_the_proxy() -> None:
    """``log.bind().info(...)`` (waiting_assign's booking line) writes what ``log.info``
    writes, and nothing below the level, before and after the proxy's first use."""
    buf = io.StringIO()
    root = logging.getLogger()
    root_level = root.level
    try:
        configure_logging("INFO", stream=buf)
        first, second = structlog.get_logger("a"), structlog.get_logger("b")
        first.bind().info("waiting_room.assigned", entry="e1", appointment="a1")
        second.info("waiting_room.assigned", entry="e1", appointment="a1")
        first.bind().debug("hidden")
        first.info("waiting_room.assigned", entry="e2", appointment="a2")
        second.bind().info("waiting_room.assigned", entry="e2", appointment="a2")
        lines = [json.loads(line) for line in buf.getvalue().splitlines()]
        for line in lines:
            line.pop("timestamp")
        assert lines[0] == lines[1] and lines[2] == lines[3]
        assert [x["entry"] for x in lines] == ["e1", "e1", "e2", "e2"]
        assert lines[0]["event"] == "waiting_room.assigned" and lines[0]["level"] == "info"
    finally:
        structlog.reset_defaults()
        for h in list(root.handlers):
            if type(h).__name__ == "_JsonHandler":
                root.removeHandler(h)
        root.setLevel(root_level)
