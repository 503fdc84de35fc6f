"""Provider-side booking on the FHIR API (issue 3 item 6: R-SCHED-4, R-PAT-5, R-PAT-6,
R-CAN-1, R-CAN-2), on both backends: an Appointment holds its slot, a slot never holds two
bookings (also under a race of 20), privileged and control slots, cancellation frees the
slot and publishes ``slot.released`` with the lead time."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.http.keys import SERVICES
from mappings import codes
from tests.e2e.fhir_support import (
    MONDAY,
    Fhir,
    a_pesel,
    appointment,
    category_cc,
    expressions,
    slot,
)


async def test_booking_holds_the_slot_and_copies_its_times(client: Any) -> None:
    fhir = await Fhir.new(client)
    seeded = await fhir.seed(slots=1)
    sid = seeded["slots"][0]
    status, appt, headers = await fhir.create(appointment(f"Slot/{sid}"))
    assert status == 201, appt
    assert headers["ETag"] == 'W/"1"'
    assert appt["status"] == "booked"
    # R4 app-3: a booked appointment has start and end; they are the slot's
    status, sl, headers = await fhir.get(f"/fhir/Slot/{sid}")
    assert sl["status"] == "busy"
    assert headers["ETag"] == 'W/"2"'
    assert (appt["start"], appt["end"]) == (sl["start"], sl["end"])
    status, stored, _ = await fhir.get(f"/fhir/Appointment/{appt['id']}")
    assert (stored["start"], stored["end"]) == (sl["start"], sl["end"])


async def test_second_booking_of_a_slot_is_409(client: Any) -> None:
    fhir = await Fhir.new(client)
    sid = (await fhir.seed(slots=1))["slots"][0]
    status, first, _ = await fhir.create(appointment(f"Slot/{sid}"))
    assert status == 201, first
    status, outcome, _ = await fhir.create(appointment(f"Slot/{sid}"))
    assert status == 409, outcome
    assert outcome["resourceType"] == "OperationOutcome"
    issue = outcome["issue"][0]
    assert issue["code"] == "conflict"
    assert "no longer free" in issue["diagnostics"]
    assert issue["expression"] == ["Appointment.slot[0]"]
    assert await fhir.search_ids("Appointment") == [first["id"]]
    # the same with an update-as-create, and with a new version of an existing appointment
    status, outcome, _ = await fhir.put("Appointment", "other", appointment(f"Slot/{sid}"))
    assert status == 409
    # the holder itself may update its appointment
    status, body, _ = await fhir.put("Appointment", first["id"], {**first, "comment": "ok"})
    assert status == 200, body


async def test_twenty_concurrent_bookings_of_one_slot_make_one(client: Any) -> None:
    fhir = await Fhir.new(client)
    sid = (await fhir.seed(slots=1))["slots"][0]
    answers = await asyncio.gather(*(fhir.create(appointment(f"Slot/{sid}")) for _ in range(20)))
    statuses = sorted(a[0] for a in answers)
    assert statuses == [201] + [409] * 19, statuses
    assert all(
        a[1]["resourceType"] == "OperationOutcome"
        and "no longer free" in a[1]["issue"][0]["diagnostics"]
        for a in answers
        if a[0] == 409
    )
    found = await fhir.search("Appointment", {"slot": sid})
    assert found["total"] == 1
    assert (await fhir.get(f"/fhir/Slot/{sid}"))[1]["status"] == "busy"


async def test_privileged_slot_needs_the_verified_entitlement(client: Any) -> None:
    """R-PAT-5: a first-privileged slot takes a patient whose entitlement the facility verified."""
    fhir = await Fhir.new(client)
    sid = (await fhir.seed(slots=1, category="first-privileged"))["slots"][0]
    status, outcome, _ = await fhir.create(appointment(f"Slot/{sid}"))
    assert status == 422, outcome
    assert "Appointment.slot[0]" in expressions(outcome)
    assert "R-PAT-5" in outcome["issue"][0]["diagnostics"]
    status, outcome, _ = await fhir.create(appointment(f"Slot/{sid}", privileged=False))
    assert status == 422
    assert (await fhir.get(f"/fhir/Slot/{sid}"))[1]["status"] == "free"
    status, appt, _ = await fhir.create(appointment(f"Slot/{sid}", privileged=True))
    assert status == 201, appt
    # the category is the slot's; the entitlement is kept on the appointment
    assert appt["appointmentType"]["coding"][0]["code"] == "first-privileged"
    assert {"url": codes.EXT_PRIVILEGED, "valueBoolean": True} in appt["extension"]
    assert (await fhir.get(f"/fhir/Slot/{sid}"))[1]["status"] == "busy"


async def test_category_and_scope_must_match_the_slot(client: Any) -> None:
    fhir = await Fhir.new(client)
    sid = (await fhir.seed(slots=1, category="control"))["slots"][0]
    wrong_cat = {**appointment(f"Slot/{sid}"), "appointmentType": category_cc("first-stable")}
    status, outcome, _ = await fhir.create(wrong_cat)
    assert status == 422, outcome
    assert "Appointment.appointmentType" in expressions(outcome)
    wrong_scope = {
        **appointment(f"Slot/{sid}"),
        "serviceType": [{"coding": [{"system": codes.SCOPE_SYSTEM, "code": "mammography"}]}],
    }
    status, outcome, _ = await fhir.create(wrong_scope)
    assert status == 422, outcome
    assert "Appointment.serviceType" in expressions(outcome)
    assert (await fhir.get(f"/fhir/Slot/{sid}"))[1]["status"] == "free"


async def test_first_time_visit_needs_a_referral_control_visit_does_not(client: Any) -> None:
    """R-PAT-2 (first-time cardiology needs an e-referral) and R-PAT-6 (control at the facility)."""
    fhir = await Fhir.new(client)
    seeded = await fhir.seed(slots=1)
    control = (await fhir.seed(slots=1, category="control"))["slots"][0]
    first = seeded["slots"][0]
    status, outcome, _ = await fhir.create(appointment(f"Slot/{first}", referral=None))
    assert status == 422, outcome
    assert "Appointment.basedOn" in expressions(outcome)
    assert (await fhir.get(f"/fhir/Slot/{first}"))[1]["status"] == "free"
    status, appt, _ = await fhir.create(appointment(f"Slot/{control}", referral=None))
    assert status == 201, appt
    assert appt["appointmentType"]["coding"][0]["code"] == "control"
    assert (await fhir.get(f"/fhir/Slot/{control}"))[1]["status"] == "busy"


async def test_bad_patient_or_referral_is_422_with_its_path(client: Any) -> None:
    fhir = await Fhir.new(client)
    sid = (await fhir.seed(slots=1))["slots"][0]
    bad_pesel = appointment(f"Slot/{sid}", "75031424680")
    status, outcome, _ = await fhir.create(bad_pesel)
    assert status == 422
    assert "Appointment.participant[0].actor.identifier.value" in expressions(outcome)
    status, outcome, _ = await fhir.create(appointment(f"Slot/{sid}", referral="no-colon"))
    assert status == 422
    assert any(e.startswith("Appointment.basedOn[0]") for e in expressions(outcome))
    status, outcome, _ = await fhir.create(appointment("Slot/unknown"))
    assert status in (404, 422)
    assert "Appointment.slot[0]" in expressions(outcome)
    assert await fhir.search_ids("Appointment") == []


async def test_cancel_frees_the_slot_and_publishes_slot_released(client: Any) -> None:
    services = client.server.app[SERVICES]
    seen: list[Any] = []

    async def on_event(msg: Any) -> None:
        seen.append(msg)

    await services.bus.consume_events("test-slice", ["slot.released", "booking.*"], on_event)
    fhir = await Fhir.new(client)
    sid = (await fhir.seed(slots=1))["slots"][0]
    status, appt, _ = await fhir.create(appointment(f"Slot/{sid}"))
    assert status == 201
    slot_version = (await fhir.get(f"/fhir/Slot/{sid}"))[2]["ETag"]

    # cancelled without a reason: 422 (R-CAN-1), the slot stays held
    no_reason = {**appt, "status": "cancelled"}
    status, outcome, _ = await fhir.put("Appointment", appt["id"], no_reason)
    assert status == 422, outcome
    assert any(e.startswith("Appointment.cancelationReason") for e in expressions(outcome))
    assert (await fhir.get(f"/fhir/Slot/{sid}"))[1]["status"] == "busy"

    # the vendor may not free a held slot behind the appointment's back
    status, sl, _ = await fhir.get(f"/fhir/Slot/{sid}")
    status, outcome, _ = await fhir.put("Slot", sid, {**sl, "status": "free"})
    assert status == 409, outcome
    assert "Slot.status" in expressions(outcome)
    status, outcome, _ = await fhir.put("Slot", sid, {**sl, "status": "busy-unavailable"})
    assert status == 409, outcome
    # ... but may change other things of it; it stays busy
    status, body, _ = await fhir.put("Slot", sid, {**sl, "comment": "gabinet 12"})
    assert status == 200, body
    assert body["status"] == "busy"

    reason = {
        "coding": [{"system": codes.CANCELLATION_REASON_SYSTEM, "code": "provider-unavailable"}],
        "text": "lekarz chory",
    }
    cancelled = {**appt, "status": "cancelled", "cancelationReason": reason}
    status, body, headers = await fhir.put("Appointment", appt["id"], cancelled, If_Match='W/"1"')
    assert status == 200, body
    assert body["status"] == "cancelled"
    status, sl, headers = await fhir.get(f"/fhir/Slot/{sid}")
    assert sl["status"] == "free"
    assert headers["ETag"] != slot_version  # a new slot version
    # a cancelled appointment no longer holds: the slot can be booked again
    status, again, _ = await fhir.create(appointment(f"Slot/{sid}"))
    assert status == 201, again

    for _ in range(200):
        if any(m.type == "slot.released" for m in seen):
            break
        await asyncio.sleep(0.02)
    released = [m for m in seen if m.type == "slot.released"]
    assert len(released) == 1, [m.type for m in seen]
    ev = released[0]
    assert ev.tenant == fhir.id
    assert ev.body["slot_id"] == sid
    assert ev.body["appointment_id"] == appt["id"]
    assert ev.body["reason"] == "provider-unavailable"
    assert isinstance(ev.body["lead_time_hours"], int | float)
    now = services.clock.now()
    expected = (MONDAY - now).total_seconds() / 3600
    assert abs(ev.body["lead_time_hours"] - expected) < 0.1


async def test_rebooking_moves_the_hold(client: Any) -> None:
    """An update pointing the appointment at another slot frees the old one."""
    fhir = await Fhir.new(client)
    s1, s2 = (await fhir.seed(slots=2))["slots"]
    status, appt, _ = await fhir.create(appointment(f"Slot/{s1}", a_pesel()))
    assert status == 201
    moved = {k: v for k, v in appt.items() if k not in ("start", "end")}
    moved["slot"] = [{"reference": f"Slot/{s2}"}]
    status, body, _ = await fhir.put("Appointment", appt["id"], moved)
    assert status == 200, body
    assert (await fhir.get(f"/fhir/Slot/{s1}"))[1]["status"] == "free"
    assert (await fhir.get(f"/fhir/Slot/{s2}"))[1]["status"] == "busy"
    status, stored, _ = await fhir.get(f"/fhir/Appointment/{appt['id']}")
    status, s2_res, _ = await fhir.get(f"/fhir/Slot/{s2}")
    assert stored["start"] == s2_res["start"]


async def test_busy_slot_from_the_vendor_is_not_bookable_twice(client: Any) -> None:
    """A slot the vendor sends as busy-unavailable cannot be booked."""
    fhir = await Fhir.new(client)
    seeded = await fhir.seed(slots=0)
    sid = await fhir.created_id(
        slot(f"Schedule/{seeded['schedule']}", MONDAY, status="busy-unavailable")
    )
    status, outcome, _ = await fhir.create(appointment(f"Slot/{sid}"))
    assert status == 409, outcome


async def test_held_slot_keeps_its_times_and_appointment_its_slots(client: Any) -> None:
    fhir = await Fhir.new(client)
    s1, s2 = (await fhir.seed(slots=2))["slots"]
    status, _appt, _ = await fhir.create(appointment(f"Slot/{s1}"))
    assert status == 201
    status, sl, _ = await fhir.get(f"/fhir/Slot/{s1}")
    moved = {**sl, "start": "2027-01-11T09:00:00+01:00", "end": "2027-01-11T09:20:00+01:00"}
    status, outcome, _ = await fhir.put("Slot", s1, moved)
    assert status == 409, outcome
    assert {"Slot.start", "Slot.end"} <= set(expressions(outcome))
    # an appointment whose times are not its slot's
    wrong = {**appointment(f"Slot/{s2}"), "start": sl["start"], "end": sl["end"]}
    status, outcome, _ = await fhir.create(wrong)
    assert status == 422, outcome
    assert "Appointment.start" in expressions(outcome)
    assert (await fhir.get(f"/fhir/Slot/{s2}"))[1]["status"] == "free"
    # the same instant with another offset is the same time
    status, s2_res, _ = await fhir.get(f"/fhir/Slot/{s2}")
    from datetime import datetime

    start = datetime.fromisoformat(s2_res["start"]).astimezone(tz=None)
    end = datetime.fromisoformat(s2_res["end"]).astimezone(tz=None)
    same = {**appointment(f"Slot/{s2}"), "start": start.isoformat(), "end": end.isoformat()}
    status, body, _ = await fhir.create(same)
    assert status == 201, body


async def test_a_booking_holds_one_slot(client: Any) -> None:
    """A second slot on a booked appointment would stay free for others: refused."""
    fhir = await Fhir.new(client)
    s1, s2 = (await fhir.seed(slots=2))["slots"]
    two = appointment(f"Slot/{s1}")
    two["slot"].append({"reference": f"Slot/{s2}"})
    status, outcome, _ = await fhir.create(two)
    assert status == 422, outcome
    assert "Appointment.slot[1]" in expressions(outcome)
    assert {(await fhir.get(f"/fhir/Slot/{s}"))[1]["status"] for s in (s1, s2)} == {"free"}
