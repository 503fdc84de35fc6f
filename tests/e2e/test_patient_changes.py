"""Cancel and reschedule over HTTP on both backends: R-CAN-1 (a reason of the patient list),
R-CAN-2 input (the release carries its lead time), R-CAN-3 (the provider's events),
R-PAT-9 (cancel + book as one step: a failed new booking keeps the old visit) and R-PAT-6
(a control visit can be cancelled here, not booked again)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from gateway import constants as c
from gateway.http.keys import SERVICES
from mappings import codes
from tests.e2e.patient_support import (
    CONTACT,
    at,
    book,
    call,
    cancel,
    clinic,
    ids,
    mine,
    one,
    patient,
    referral,
    reschedule,
    screening,
    search,
    set_clock,
)


async def wait_for(seen: list[Any], kind: str) -> list[Any]:
    for _ in range(200):
        found = [m for m in seen if m.type == kind]
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {kind} event")


async def test_cancel_frees_the_slot_and_the_referral(client: Any) -> None:
    services = client.server.app[SERVICES]
    seen: list[Any] = []

    async def on_event(msg: Any) -> None:
        seen.append(msg)

    await services.bus.consume_events(
        "test-slice", ["slot.released", "resource.Appointment.*"], on_event
    )
    await set_clock(client)
    a = await clinic(
        client,
        [("s1", at("2027-01-11", 8), "first-stable"), ("s2", at("2027-01-12", 8), "first-stable")],
    )
    p = await patient(client)
    ref = await referral(client, p)
    status, appt = await book(client, p, a.slots["s1"], ref)
    assert status == 201, appt

    # R-CAN-1: a reason, from the patient's part of the list
    for body in ({}, {"reason": "provider-unavailable"}, {"reason": "whatever"}):
        status, problem = await call(
            client, "POST", f"/patient/v1/appointments/{appt['id']}/cancel", p, body
        )
        assert (status, problem["code"]) == (400, "invalid"), body
    status, done = await cancel(client, p, appt["id"], "patient-health")
    assert status == 200, done
    assert done["status"] == "cancelled"
    assert done["cancel_reason"] == "patient-health"
    assert done["cancelled_at"]
    assert done["next_step"] == "search-again"
    assert done["waiting_room"] == "/patient/v1/waiting-room"
    status, problem = await cancel(client, p, appt["id"])
    assert (status, problem["code"]) == (409, "not-active")

    # the slot is free again and the referral books again
    _, page = await search(client, p, scope="cardiology")
    assert a.slots["s1"] in ids(page)
    status, again = await book(client, p, a.slots["s2"], ref)
    assert status == 201, again

    # the provider's side: the appointment cancelled with the reason, the slot released
    # with its lead time to the visit (R-CAN-2 input), both from the portal (R-CAN-3)
    rid = appt["id"].split("~")[1]
    resp = await client.get(f"/fhir/Appointment/{rid}", headers=a.fhir_headers())
    fhir = await resp.json()
    assert fhir["status"] == "cancelled"
    assert fhir["cancelationReason"]["coding"][0]["code"] == "patient-health"
    assert fhir["cancelationReason"]["coding"][0]["system"] == codes.CANCELLATION_REASON_SYSTEM
    released = await wait_for(seen, "slot.released")
    body = released[0].body
    assert released[0].tenant == a.provider_id
    assert body["slot_id"] == "s1" and body["channel"] == "portal"
    assert body["reason"] == "patient-health"
    assert abs(body["lead_time_hours"] - 167.0) < 0.5  # Mon 09:00 -> next Mon 08:00
    updated = await wait_for(seen, "resource.Appointment.updated")
    assert updated[0].body["channel"] == "portal"


async def test_reschedule_within_one_provider(client: Any) -> None:
    """R-PAT-9: one command, one transaction: the new visit booked, the old one cancelled."""
    await set_clock(client)
    a = await clinic(
        client,
        [
            ("s1", at("2027-01-11", 8), "first-stable"),
            ("s2", at("2027-01-13", 8), "first-stable"),
            ("s3", at("2027-01-14", 8), "first-stable"),
        ],
    )
    p = await patient(client)
    ref = await referral(client, p)
    _, old = await book(client, p, a.slots["s1"], ref)
    status, new = await reschedule(client, p, old["id"], a.slots["s2"])
    assert status == 201, new
    assert new["status"] == "booked" and new["slot_id"] == a.slots["s2"]
    assert new["referral"] == {"key": ref["key"]}  # the referral moved with the visit
    assert new["contact"] == old["contact"]
    assert new["replaced"]["id"] == old["id"]
    assert new["replaced"]["status"] == "cancelled"
    assert new["replaced"]["cancel_reason"] == "patient-rescheduled"
    assert (await one(client, p, old["id"]))["status"] == "cancelled"
    _, page = await search(client, p, scope="cardiology")
    assert ids(page) == [a.slots["s1"], a.slots["s3"]]
    # still one active booking for the referral
    q_status, problem = await book(client, p, a.slots["s3"], ref)
    assert (q_status, problem["code"]) == (422, "referral-required")
    assert problem["reason"] == "in-use"


async def test_failed_reschedule_keeps_the_old_visit(client: Any) -> None:
    """R-PAT-9: if the new booking fails, the old visit stays as it was."""
    await set_clock(client)
    a = await clinic(
        client,
        [
            ("s1", at("2027-01-11", 8), "first-stable"),
            ("taken", at("2027-01-12", 8), "first-stable"),
            ("far", at("2027-03-01", 8), "first-stable"),
            ("ctl", at("2027-01-13", 8), "control"),
        ],
    )
    b = await clinic(client, [("b1", at("2027-01-12", 9), "first-stable")], name="B")
    p = await patient(client)
    ref = await referral(client, p)
    _, old = await book(client, p, a.slots["s1"], ref)
    q = await patient(client)
    status, _ = await book(client, q, a.slots["taken"], await referral(client, q))
    assert status == 201
    status, _ = await book(client, q, b.slots["b1"], await referral(client, q))
    assert status == 201
    for slot, code in (
        (a.slots["taken"], "slot-taken"),  # same provider: the transaction is refused
        (b.slots["b1"], "slot-taken"),  # another provider
        (a.slots["far"], "outside-booking-window"),
        (a.slots["ctl"], "not-first-time"),
    ):
        status, problem = await reschedule(client, p, old["id"], slot)
        assert problem["code"] == code, problem
        assert status in (409, 422)
        kept = await one(client, p, old["id"])
        assert kept["status"] == "booked" and kept["slot_id"] == a.slots["s1"]
    store = client.server.app[SERVICES].store
    ref_doc = await store.get(c.REFERRALS, ref["key"])
    assert ref_doc["appointment_id"] == old["id"] and ref_doc["status"] == "booked"
    assert [x["status"] for x in await mine(client, p)] == ["booked"]


async def test_reschedule_to_another_provider(client: Any) -> None:
    await set_clock(client)
    a = await clinic(client, [("s1", at("2027-01-11", 8), "first-stable")], name="A")
    b = await clinic(client, [("b1", at("2027-01-12", 9), "first-stable")], name="B")
    p = await patient(client)
    ref = await referral(client, p)
    _, old = await book(client, p, a.slots["s1"], ref)
    status, new = await reschedule(client, p, old["id"], b.slots["b1"])
    assert status == 201, new
    assert new["provider"]["id"] == b.provider_id
    assert new["replaced"]["status"] == "cancelled"
    assert new["replaced"]["cancel_reason"] == "patient-rescheduled"
    store = client.server.app[SERVICES].store
    ref_doc = await store.get(c.REFERRALS, ref["key"])
    assert ref_doc["appointment_id"] == new["id"] and ref_doc["status"] == "booked"
    statuses = {x["id"]: x["status"] for x in await mine(client, p)}
    assert statuses == {old["id"]: "cancelled", new["id"]: "booked"}


async def test_reschedule_a_screening_exam(client: Any) -> None:
    """R-PAT-9 (mammography): the moved exam does not count against its new date."""
    await set_clock(client)
    m = await clinic(
        client,
        [("m1", at("2027-01-12", 9), None), ("m2", at("2027-02-02", 9), None)],
        scope="mammography",
    )
    p = await patient(client, "female", "1965-01-01")
    await screening(client, p, "mammography", "2024-12-01")
    _, old = await book(client, p, m.slots["m1"])
    status, new = await reschedule(client, p, old["id"], m.slots["m2"])
    assert status == 201, new
    assert new["replaced"]["status"] == "cancelled"
    # cancelled: the programme can be booked again
    status, done = await cancel(client, p, new["id"])
    assert status == 200, done
    status, again = await book(client, p, m.slots["m1"])
    assert status == 201, again


async def test_continuation_visit_cancel_but_not_rebook(client: Any) -> None:
    """R-PAT-6: a control visit booked at the facility can be cancelled by the patient,
    who then contacts the facility; it cannot be moved or booked here."""
    await set_clock(client)
    a = await clinic(
        client,
        [("ctl", at("2027-01-11", 8), "control"), ("s2", at("2027-01-12", 8), "first-stable")],
    )
    p = await patient(client)
    visit = {
        "resourceType": "Appointment",
        "status": "booked",
        "slot": [{"reference": "Slot/ctl"}],
        "participant": [
            {
                "actor": {
                    "type": "Patient",
                    "identifier": {"system": codes.PESEL_SYSTEM, "value": p.pesel},
                },
                "status": "accepted",
            }
        ],
        "extension": [
            {
                "url": codes.EXT_PATIENT_CONTACT,
                "valueContactPoint": {"system": "phone", "value": CONTACT["phone"]},
            }
        ],
    }
    resp = await client.put(
        "/fhir/Appointment/visit-1", data=json.dumps(visit), headers=a.fhir_headers()
    )
    assert resp.status == 201, await resp.text()
    gid = f"{a.provider_id}~visit-1"
    listed = await mine(client, p)
    assert [x["id"] for x in listed] == [gid]
    assert listed[0]["channel"] == "provider"
    assert listed[0]["first_time"] is False
    assert listed[0]["can_cancel"] is True and listed[0]["can_reschedule"] is False
    status, problem = await reschedule(client, p, gid, a.slots["s2"])
    assert (status, problem["code"]) == (422, "not-first-time")
    status, done = await cancel(client, p, gid)
    assert status == 200, done
    assert done["status"] == "cancelled"
    assert done["next_step"] == "contact-facility"
    assert "waiting_room" not in done
    # the slot is free, but a control slot never shows to patients
    _, page = await search(client, p, scope="cardiology")
    assert a.slots["ctl"] not in ids(page)


async def test_reschedule_with_another_referral_frees_the_first(client: Any) -> None:
    await set_clock(client)
    a = await clinic(
        client,
        [
            ("s1", at("2027-01-11", 8), "first-stable"),
            ("s2", at("2027-01-12", 8), "first-stable"),
            ("s3", at("2027-01-13", 8), "first-stable"),
        ],
    )
    p = await patient(client)
    first = await referral(client, p)
    second = await referral(client, p)
    _, old = await book(client, p, a.slots["s1"], first)
    status, new = await call(
        client,
        "POST",
        f"/patient/v1/appointments/{old['id']}/reschedule",
        p,
        {"slot_id": a.slots["s2"], "referral": second},
    )
    assert status == 201, new
    assert new["referral"] == {"key": second["key"]}
    status, again = await book(client, p, a.slots["s3"], first)
    assert status == 201, again
