"""Unit tests of the report tallies, the reconciliation and the public feed's resources
(issue 9; R-SCHED-5, R-SCOPE-3, R-CAN-4, R-WAIT-3)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from gateway import bulk_publish, reports
from gateway import reconciliation as rec
from gateway.report_cli import activity_table, compliance_table


def z(s: str) -> str:
    """A store instant from a short UTC text."""
    return f"{s}:00.000Z" if len(s) == 16 else s


# --------------------------------------------------------------------------- activity


def test_days_are_warsaw_days_across_dst() -> None:
    # 2026-03-29: the clocks go forward; the Warsaw day is 23 hours long
    lo, hi = reports.day_range(date(2026, 3, 29), date(2026, 3, 29))
    assert (lo, hi) == ("2026-03-28T23:00:00.000Z", "2026-03-29T22:00:00.000Z")
    # 23:30 UTC on the 28th is already the 29th in Warsaw
    assert reports.store_day("2026-03-28T23:30:00.000Z") == date(2026, 3, 29)


def test_activity_counts_by_the_day_things_happened() -> None:
    """Slots by visit day; bookings and cancellations by the day they were made (R-CAN-4:
    SMS and portal cancellations apart)."""
    a = reports.Activity(date(2027, 1, 4), date(2027, 1, 13))
    slot = {"scope": "cardiology", "category": "first-stable", "start": z("2027-01-13T07:00")}
    a.add_slot("p1", {**slot, "status": "free"})
    a.add_slot("p1", {**slot, "status": "busy"})
    a.add_slot("p1", {**slot, "status": "busy-tentative"})
    a.add_slot("p1", {**slot, "status": "entered-in-error"})  # not published capacity
    a.add_slot("p1", {**slot, "status": "free", "start": z("2027-01-14T07:00")})  # after the range
    appt = {"scope": "cardiology", "status": "booked", "start": z("2027-01-13T07:00")}
    a.add_appointment("p1", {**appt, "channel": "portal", "booked_at": z("2027-01-04T08:00")}, None)
    a.add_appointment(
        "p1", {**appt, "channel": "provider", "booked_at": z("2027-01-05T08:00")}, None
    )
    a.add_appointment(
        "p1",
        {
            **appt,
            "status": "cancelled",
            "channel": "provider",
            "booked_at": z("2027-01-04T09:00"),
            "cancelled_at": z("2027-01-05T10:00"),
            "cancel_reason": "patient-sms",
            "cancel_channel": "sms",
        },
        None,
    )
    # an old document without booked_at counts on the day it was created
    a.add_appointment("p1", {**appt, "channel": "import"}, z("2027-01-04T10:00"))
    out = {(r["day"]): r for r in a.to_json()["rows"]}
    assert out["2027-01-13"]["slots"] == {"first-stable": {"booked": 1, "free": 1, "held": 1}}
    assert out["2027-01-04"]["bookings"]["by_channel"] == {"import": 1, "portal": 1, "provider": 1}
    assert out["2027-01-04"]["bookings"]["by_group"] == {"central": 1, "facility": 1, "import": 1}
    assert out["2027-01-05"]["bookings"]["total"] == 1
    assert out["2027-01-05"]["cancellations"] == {
        "total": 1,
        "by_reason": {"patient-sms": {"sms": 1}},
        "by_channel": {"sms": 1},
    }


def test_waiting_room_size_at_the_end_of_each_day_and_waits() -> None:
    """R-WAIT-3: an entry waits from the day it entered to the day before it got a visit."""
    a = reports.Activity(date(2027, 1, 1), date(2027, 1, 10))
    a.add_waiting_entry(
        {
            "scope": "cardiology",
            "status": "assigned",
            "entered_at": z("2027-01-02T09:00"),
            "assigned_at": z("2027-01-05T09:00"),
            "appointment": "p1~a1",
        },
        "p1",
    )
    a.add_waiting_entry(
        {"scope": "cardiology", "status": "waiting", "entered_at": z("2027-01-04T09:00")}, None
    )
    a.add_waiting_entry(
        {
            "scope": "cardiology",
            "status": "left",
            "entered_at": z("2027-01-03T09:00"),
            "left_at": z("2027-01-04T12:00"),
        },
        None,
    )
    wr = {w["day"]: w for w in a.to_json()["waiting_room"]}
    sizes = {d: w["waiting_at_end_of_day"] for d, w in wr.items()}
    assert [sizes.get(f"2027-01-{d:02d}", 0) for d in range(1, 11)] == [
        0,
        1,
        2,
        2,
        1,
        1,
        1,
        1,
        1,
        1,
    ]
    assert wr["2027-01-05"]["assigned"] == 1 and wr["2027-01-05"]["wait_days_median"] == 3.0
    assert wr["2027-01-04"]["left"] == 1 and wr["2027-01-04"]["entered"] == 1
    row = next(r for r in a.to_json()["rows"] if r["provider"] == "p1")
    assert row["waiting_room"] == {"assigned": 1, "wait_days_median": 3.0, "wait_days_max": 3.0}


def test_activity_csv_is_long_form() -> None:
    a = reports.Activity(date(2027, 1, 4), date(2027, 1, 4))
    a.add_appointment(
        "p1",
        {
            "scope": "cytology",
            "status": "booked",
            "channel": "sms",
            "booked_at": z("2027-01-04T08:00"),
        },
        None,
    )
    text = reports.to_csv(reports.activity_csv_rows(a.to_json()), reports.ACTIVITY_CSV_COLUMNS, ";")
    assert text.splitlines() == [
        "provider;scope;day;measure;category;channel;reason;status;value",
        "p1;cytology;2027-01-04;bookings;;sms;;;1",
    ]
    assert "p1" in activity_table(a.to_json())


# --------------------------------------------------------------------------- compliance


def _compliance() -> reports.Compliance:
    c = reports.Compliance(datetime(2026, 7, 15, tzinfo=UTC))
    for p in ("early", "late", "silent"):
        c.add_provider(p, p.title())
    c.add_schedule("early", {"scopes": ["cardiology", "mammography"]})
    c.add_slot("early", {"scope": "cardiology"}, z("2026-06-01T21:59"))  # 23:59 on 1 June in Warsaw
    c.add_slot("early", {"scope": "cardiology"}, z("2026-05-20T10:00"))
    c.add_schedule("late", {"scopes": ["cardiology"]})
    c.add_slot("late", {"scope": "cardiology"}, z("2026-06-01T22:00"))  # 00:00 on 2 June
    return c


def test_schedules_transmitted_by_the_due_day_in_warsaw() -> None:
    """R-SCOPE-3: stage 1 schedules by 2026-06-01 (art. 154a(1))."""
    rows = {(r["provider"], r["scope"]): r for r in _compliance().to_json()["rows"]}
    assert rows[("early", "cardiology")]["schedules_status"] == "on-time"
    assert rows[("early", "cardiology")]["first_slots_transmitted"] == z("2026-05-20T10:00")
    # a schedule without slots is not a transmitted schedule; its due date has passed
    assert rows[("early", "mammography")]["schedules_status"] == "missing"
    assert rows[("late", "cardiology")]["schedules_status"] == "late"
    assert rows[("late", "cardiology")]["payment_withheld_risk"] is True
    assert rows[("silent", None)]["schedules_status"] == "no-schedules"


def test_not_yet_due_before_the_deadline() -> None:
    c = reports.Compliance(datetime(2026, 9, 1, tzinfo=UTC))
    c.add_schedule("p", {"scopes": ["nephrology"]})  # stage 2: due 2027-01-01
    (row,) = c.to_json()["rows"]
    assert row["schedules_status"] == "not-yet-due" and row["payment_withheld_risk"] is False


def test_share_booked_in_cer_after_the_payment_date() -> None:
    """R-SCOPE-3 (art. 154a(2)): from 2026-07-01 NFZ pays only for visits booked centrally.
    A visit moved over by the import, or recorded only after it began, was not."""
    c = _compliance()
    visit = {"scope": "cardiology", "status": "booked", "start": z("2026-07-06T06:00")}
    c.add_appointment(
        "early", {**visit, "channel": "portal", "booked_at": z("2026-06-20T10:00")}, None
    )
    c.add_appointment(
        "early", {**visit, "channel": "provider", "booked_at": z("2026-06-21T10:00")}, None
    )
    c.add_appointment(
        "early", {**visit, "channel": "import", "booked_at": z("2026-06-01T10:00")}, None
    )
    c.add_appointment(
        "early", {**visit, "channel": "provider", "booked_at": z("2026-07-06T07:00")}, None
    )
    c.add_appointment("early", {**visit, "status": "cancelled", "channel": "portal"}, None)
    # the day before the payment date does not count (a Warsaw day: 23:30 UTC is 1 July)
    c.add_appointment(
        "early", {**visit, "start": z("2026-06-30T21:30"), "booked_at": z("2026-06-01T10:00")}, None
    )
    c.add_appointment(
        "early", {**visit, "start": z("2026-06-30T22:30"), "booked_at": z("2026-06-01T10:00")}, None
    )
    row = next(
        r for r in c.to_json()["rows"] if r["scope"] == "cardiology" and r["provider"] == "early"
    )
    assert row["visits_after_payment_date"] == 5
    assert row["booked_in_cer"] == 3
    assert row["share_booked_in_cer"] == 0.6
    assert row["booked_by_patient_channels"] == 1
    assert row["by_channel"] == {"import": 1, "portal": 1, "provider": 3}
    assert "60.0%" in compliance_table(c.to_json())


# --------------------------------------------------------------------------- reconciliation


HEADER = "visit_id;id_system;scope;start;category;status;pesel\n"


def held(
    rid: str, value: str | None, start: str, status: str = "booked", **kw: Any
) -> rec.HeldVisit:
    central = {
        "identifiers": [{"system": "urn:v", "value": value}] if value else [],
        "scope": kw.get("scope", "cardiology"),
        "start": start,
        "category": kw.get("category", "control"),
        "status": status,
        "patient_pesel": kw.get("pesel", "44051401458"),
    }
    return rec.held_visit(rid, central)


def test_export_formats_and_aliases() -> None:
    """R-SCHED-5: the export is read in the formats Polish systems write."""
    text = (
        "\ufeffID_WIZYTY,Zakres,Termin,Kategoria,Status\n"
        "A,1100,12.01.2027 08:00,control,umówiona\n"
        "B,cardiology,2027-01-12T08:00:00Z,,Odwołana\n"
        "C,cardiology,2027-07-12 08:00,,\n"
    )
    visits, rejected = rec.parse_export(text)
    assert rejected == []
    assert [(v.visit_id, v.scope, v.start, v.status) for v in visits] == [
        ("A", "cardiology", "2027-01-12T07:00:00.000Z", "booked"),  # CET
        ("B", "cardiology", "2027-01-12T08:00:00.000Z", "cancelled"),
        ("C", "cardiology", "2027-07-12T06:00:00.000Z", "booked"),  # CEST
    ]
    assert rec.decode("zakres;termin\n".encode("cp1250") + "ł".encode("cp1250")).endswith("ł")


def test_bad_rows_are_rejected_by_line_without_echoing_a_pesel() -> None:
    text = HEADER + (
        "A;;cardiology;2027-01-12 08:00;;;4405140145\n"  # 10 digits
        "B;;cardiology;2027-01-12 08:00;first-ever;;\n"
        "C;;pediatrics;2027-01-12 08:00;;;\n"
        "D;;cardiology;soon;;;\n"
        "E;;cardiology;2027-01-12 08:00;;maybe;\n"
        "F;;cardiology;2027-01-12 08:00;;;\n"
        "F;;cardiology;2027-01-12 09:00;;;\n"
        ";;cardiology;2027-01-12 09:00;;;\n"
    )
    visits, rejected = rec.parse_export(text)
    assert [v.visit_id for v in visits] == ["F"]
    assert [r["line"] for r in rejected] == [2, 3, 4, 5, 6, 8, 9]
    assert "4405140145" not in str(rejected)
    with pytest.raises(rec.ExportError, match="start"):
        rec.parse_export("visit_id;scope\nA;cardiology\n")
    with pytest.raises(rec.ExportError):
        rec.parse_export("\n\n")


def test_reconcile_reports_each_kind_of_difference_per_scope_and_day() -> None:
    """R-SCHED-5: counts and differences per scope and per day."""
    export, _ = rec.parse_export(
        HEADER
        + "V1;urn:v;cardiology;2027-01-12 08:00;control;;44051401458\n"  # same
        + "V2;;cardiology;2027-01-12 09:00;control;;\n"  # other time
        + "V4;urn:v;cardiology;2027-01-13 08:00;first-stable;;\n"  # other category
        + "V5;urn:v;cardiology;2027-01-13 09:00;control;cancelled;\n"  # cancelled there only
        + "V6;urn:v;cardiology;2027-01-13 10:00;control;;\n"  # not here
        + "gw-7;;cardiology;2027-01-13 11:00;control;;02070803628\n"  # by our id, other patient
        + "V8;urn:v;cardiology;2027-01-13 12:00;control;cancelled;\n"  # cancelled on both
    )
    gateway = [
        held("a1", "V1", z("2027-01-12T07:00")),
        held("a2", "V2", z("2027-01-12T07:20")),
        held("a3", "V3", z("2027-01-12T07:40")),  # not in the export
        held("a4", "V4", z("2027-01-13T07:00")),
        held("a5", "V5", z("2027-01-13T08:00")),
        held("gw-7", None, z("2027-01-13T10:00")),
        held("a8", "V8", z("2027-01-13T11:00"), status="cancelled"),
        held("a9", "V9", z("2027-01-13T12:00"), status="cancelled"),  # cancelled: not missing
    ]
    out = rec.reconcile("p1", export, gateway)
    assert out["matches"] is False
    assert out["totals"] == {
        "provider_count": 5,
        "gateway_count": 6,
        "matching": 1,
        "missing_in_gateway": 1,
        "missing_in_export": 1,
        "differing": 4,
    }
    d12, d13 = out["days"]
    assert (d12["day"], d12["provider_count"], d12["gateway_count"]) == ("2027-01-12", 2, 3)
    assert [m["appointment"] for m in d12["missing_in_export"]] == ["a3"]
    assert [(x["visit_id"], [f["field"] for f in x["fields"]]) for x in d12["differing"]] == [
        ("V2", ["start"])
    ]
    assert [m["visit_id"] for m in d13["missing_in_gateway"]] == ["V6"]
    assert [(x["visit_id"], [f["field"] for f in x["fields"]]) for x in d13["differing"]] == [
        ("V4", ["category"]),
        ("V5", ["status"]),
        ("gw-7", ["patient"]),
    ]
    assert "02070803628" not in str(out) and "44051401458" not in str(out)
    summary = rec.summary(out)
    assert "DIFFERENCES" in summary and "missing in gateway: V6" in summary
    kinds = [r["kind"] for r in rec.csv_rows(out)]
    assert kinds.count("counts") == 2 and kinds.count("differs") == 4


def test_a_clean_comparison_matches() -> None:
    export, _ = rec.parse_export(HEADER + "V1;;cardiology;2027-01-12 08:00;;;\n")
    out = rec.reconcile("p1", export, [held("a1", "V1", z("2027-01-12T07:00"))])
    assert out["matches"] is True
    assert "MATCHES" in rec.summary(out)


# --------------------------------------------------------------------------- public feed


def test_public_slot_has_no_patient_and_is_free_or_busy() -> None:
    doc = {
        "tenant": "prov-1",
        "rid": "s1",
        "central": {
            "schedule_id": "sch",
            "scope": "cardiology",
            "category": "first-urgent",
            "start": z("2027-01-12T07:00"),
            "end": z("2027-01-12T07:20"),
            "status": "busy-tentative",
            "hold": {"entry": "e1"},
            "appointment_id": "a1",
        },
        "resource": {"comment": "Pan Kowalski, tel. 600100200"},
    }
    slot = bulk_publish.public_slot(doc)
    assert slot == {
        "resourceType": "Slot",
        "id": "prov-1.s1",
        "schedule": {"reference": "Schedule/prov-1.sch"},
        "status": "busy",
        "start": "2027-01-12T07:00:00Z",
        "end": "2027-01-12T07:20:00Z",
        "appointmentType": {
            "coding": [
                {
                    "system": "http://cer-gateway.org/fhir/CodeSystem/slot-category",
                    "code": "first-urgent",
                }
            ]
        },
    }
    free = bulk_publish.public_slot(
        {**doc, "central": {**doc["central"], "status": "free", "hold": None}}
    )
    assert free["status"] == "free"


def test_public_ids_are_fhir_ids() -> None:
    assert bulk_publish.public_id("prov-1", "abc") == "prov-1.abc"
    long_id = bulk_publish.public_id("prov-1", "x" * 64)
    assert len(long_id) <= 64 and long_id == bulk_publish.public_id("prov-1", "x" * 64)
    assert bulk_publish.public_id("prov-1", "a_b").startswith("h-")


def test_the_command_line_splits_an_export_by_week_keeping_line_numbers(tmp_path: Any) -> None:
    """R-SCHED-5 at scale: ``cer-gateway reconcile`` sends a week at a time."""
    from gateway.report_cli import merge, split_export

    f = tmp_path / "export.csv"
    f.write_bytes(
        (
            "visit_id;scope;start;uwagi\n"
            "A;cardiology;2027-01-11 08:00;łóżko\n"  # Monday
            "B;cardiology;2027-01-17 23:30;\n"  # Sunday: the same week
            "\n"
            "C;cardiology;2027-02-01 08:00;\n"
            "D;cardiology;jutro;\n"
        ).encode("cp1250")
    )
    parts = split_export(f)
    assert parts.header == ["visit_id", "scope", "start", "uwagi", "line"]
    assert (parts.first, parts.last) == (date(2027, 1, 11), date(2027, 2, 1))
    assert {w: [r[0] for r in rows] for w, rows in parts.weeks.items()} == {
        date(2027, 1, 11): ["A", "B"],
        date(2027, 2, 1): ["C"],
    }
    assert parts.weeks[date(2027, 1, 11)][0][3] == "łóżko"
    assert [r[-1] for r in parts.unreadable] == ["6"]
    # what the server would answer for the parts, merged
    export, rejected = rec.parse_export(
        "visit_id;scope;start;line\nA;cardiology;2027-01-11 08:00;2\nD;cardiology;jutro;6\n"
    )
    assert [r["line"] for r in rejected] == [6]
    one = rec.reconcile("p", export, [])
    one["rejected_rows"] = rejected
    two = rec.reconcile("p", [], [held("a9", "V9", z("2027-02-01T07:00"))])
    merged = merge([one, two], date(2027, 1, 11), date(2027, 2, 1))
    assert merged["totals"]["missing_in_gateway"] == 1
    assert merged["totals"]["missing_in_export"] == 1
    assert [d["day"] for d in merged["days"]] == ["2027-01-11", "2027-02-01"]
    assert merged["matches"] is False and merged["rejected_rows"][0]["line"] == 6


def test_csv_cells_never_start_a_formula() -> None:
    """A provider's name or a visit id from its file reaches the payer's spreadsheet."""
    rows = [{"provider": '=HYPERLINK("http://x")', "scope": "-", "day": "@SUM(A1)", "value": -3}]
    text = reports.to_csv(rows, ("provider", "scope", "day", "value"))
    assert text.splitlines()[1] == '"\'=HYPERLINK(""http://x"")",-,\'@SUM(A1),-3'
