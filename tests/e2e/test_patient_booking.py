"""POST /patient/v1/appointments over HTTP on both backends: a booking, and each rule's
problem code (R-PAT-2, R-PAT-3, R-PAT-4, R-PAT-5, R-PAT-6, R-PAT-7, R-PAT-8, R-WAIT-2)."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway import constants as c
from gateway.http.keys import SERVICES
from mappings import codes
from tests.e2e.patient_support import (
    CONTACT,
    at,
    book,
    call,
    clinic,
    mine,
    patient,
    plus_days,
    referral,
    screening,
    set_clock,
)


async def test_book_a_first_time_cardiology_visit(client: Any) -> None:
    services = client.server.app[SERVICES]
    seen: list[Any] = []

    async def on_event(msg: Any) -> None:
        seen.append(msg)

    await services.bus.consume_events(
        "test-slice", ["booking.*", "resource.Appointment.*"], on_event
    )
    await set_clock(client)
    a = await clinic(client, [("s1", at("2027-01-11", 8), "first-stable")])
    p = await patient(client)
    ref = await referral(client, p)
    resp = await client.post(
        "/patient/v1/appointments",
        json={"slot_id": a.slots["s1"], "referral": ref, "contact": CONTACT},
        headers=p.headers,
    )
    assert resp.status == 201, await resp.text()
    appt = await resp.json()
    assert resp.headers["Location"] == f"/patient/v1/appointments/{appt['id']}"
    provider, rid = appt["id"].split("~")
    assert provider == a.provider_id
    assert appt["status"] == "booked"
    assert appt["channel"] == "portal"
    assert appt["slot_id"] == a.slots["s1"]
    assert appt["facility"]["id"] == a.facility
    assert appt["referral"] == {"key": ref["key"]}
    assert appt["contact"] == {"phone": "+48600100200", "email": None}
    assert appt["local_start"] == "2027-01-11T08:00:00+01:00"
    assert [x["id"] for x in await mine(client, p)] == [appt["id"]]

    # the provider sees the visit in FHIR, booked through the portal (R-SCHED-4)
    resp = await client.get(f"/fhir/Appointment/{rid}", headers=a.fhir_headers())
    assert resp.status == 200
    fhir = await resp.json()
    assert fhir["status"] == "booked"
    channel = [e for e in fhir["extension"] if e["url"] == codes.EXT_BOOKING_CHANNEL]
    assert channel[0]["valueCoding"]["code"] == "portal"
    assert fhir["basedOn"][0]["identifier"]["value"] == f"{ref['key']}:{ref['code']}"
    resp = await client.get("/fhir/Slot/s1", headers=a.fhir_headers())
    assert (await resp.json())["status"] == "busy"
    for _ in range(100):
        if {m.type for m in seen} >= {"booking.booked", "resource.Appointment.created"}:
            break
        await asyncio.sleep(0.05)
    booked = [m for m in seen if m.type == "booking.booked"]
    assert booked and booked[0].tenant == a.provider_id
    assert booked[0].body["channel"] == "portal"
    assert booked[0].body["slot_id"] == "s1"

    # the same slot again: 409 slot-taken, and the search no longer shows it
    q = await patient(client)
    status, problem = await book(client, q, a.slots["s1"], await referral(client, q))
    assert (status, problem["code"]) == (409, "slot-taken")
    _, page = await call(client, "GET", "/patient/v1/slots", q, scope="cardiology")
    assert page["slots"] == []


async def test_referral_rules(client: Any) -> None:
    """R-PAT-2: a valid, unused e-referral of the patient for the scope and category."""
    await set_clock(client)
    a = await clinic(
        client,
        [
            ("s1", at("2027-01-11", 8), "first-stable"),
            ("s2", at("2027-01-11", 9), "first-stable"),
            ("u1", at("2027-01-11", 10), "first-urgent"),
        ],
    )
    p = await patient(client)
    ref = await referral(client, p)

    async def refused(ref_body: Any, slot: str = "s1", who: Any = p) -> str:
        status, problem = await book(client, who, a.slots[slot], ref_body)
        assert (status, problem["code"]) == (422, "referral-required"), problem
        return str(problem["reason"])

    assert await refused(None) == "missing"
    assert (
        await refused({"key": ref["key"], "code": "0000" if ref["code"] != "0000" else "1111"})
        == "unknown"
    )
    other = await patient(client)
    assert await refused(ref, who=other) == "unknown"  # someone else's referral
    vascular = await referral(client, p, scope="vascular")
    assert await refused(vascular) == "other-scope"
    assert await refused(ref, slot="u1") == "category"  # a stable case books first-stable
    realized = await referral(client, p, status="realized")
    assert await refused(realized) == "used"
    status, first = await book(client, p, a.slots["s1"], ref)
    assert status == 201, first
    assert await refused(ref, slot="s2") == "in-use"  # one active booking per referral
    # a malformed referral is bad input
    status, problem = await book(client, p, a.slots["s2"], {"key": "a b", "code": "12"})
    assert (status, problem["code"]) == (400, "invalid")


async def test_booking_window_40_days(client: Any) -> None:
    """R-WAIT-2: day 40 (Warsaw) books; day 41 answers with the waiting room."""
    await set_clock(client)
    a = await clinic(
        client,
        [
            ("d40", at("2027-02-13", 23, 40), "first-stable"),
            ("d41", at("2027-02-14", 0, 0), "first-stable"),
        ],
    )
    p = await patient(client)
    ref = await referral(client, p)
    status, problem = await book(client, p, a.slots["d41"], ref)
    assert (status, problem["code"]) == (422, "outside-booking-window")
    assert problem["waiting_room"] == "/patient/v1/waiting-room"
    assert problem["window_end"] == "2027-02-13"
    status, body = await book(client, p, a.slots["d40"], ref)
    assert status == 201, body


async def test_only_first_time_self_bookable_slots(client: Any) -> None:
    await set_clock(client)
    a = await clinic(
        client,
        [
            ("ctl", at("2027-01-11", 8), "control"),
            ("prv", at("2027-01-11", 9), "first-privileged"),
        ],
    )
    p = await patient(client)
    ref = await referral(client, p)
    status, problem = await book(client, p, a.slots["ctl"], ref)
    assert (status, problem["code"]) == (422, "not-first-time")  # R-PAT-8, R-PAT-6
    status, problem = await book(client, p, a.slots["prv"], ref)
    assert (status, problem["code"]) == (422, "not-self-bookable")  # R-PAT-5


async def test_contact_required(client: Any) -> None:
    """R-PAT-7: a phone number or an e-mail address."""
    await set_clock(client)
    a = await clinic(client, [("s1", at("2027-01-11", 8), "first-stable")])
    p = await patient(client)
    ref = await referral(client, p)
    for contact in (None, {}, {"phone": "", "email": "  "}):
        status, problem = await book(client, p, a.slots["s1"], ref, contact=contact)
        assert (status, problem["code"]) == (422, "contact-required"), contact
    for contact in ({"phone": "12"}, {"email": "nobody"}, {"fax": "123456789"}):
        status, problem = await book(client, p, a.slots["s1"], ref, contact=contact)
        assert (status, problem["code"]) == (400, "invalid"), contact
    status, body = await book(client, p, a.slots["s1"], ref, contact={"email": "ala@example.pl"})
    assert status == 201, body
    assert body["contact"] == {"phone": None, "email": "ala@example.pl"}


async def test_screening_rules(client: Any) -> None:
    """R-PAT-3, R-PAT-4: mammography women 45-74 every 2 years, cytology 25-64 every 3
    years (HPV test: 5), judged by SIMP (the eligibility port) for the day of the exam;
    bookings at most 90 days ahead; no referral needed."""
    await set_clock(client)
    mammo = await clinic(
        client,
        [
            ("m1", at("2027-01-12", 9), None),
            ("m2", at("2027-01-13", 0, 10), None),  # 2027-01-12 23:10 UTC
            ("m3", at("2027-01-14", 9), None),
            ("d90", at("2027-04-04", 9), None),
            ("d91", at("2027-04-05", 9), None),
        ],
        scope="mammography",
        name="Pracownia mammografii",
    )
    cyto = await clinic(
        client, [("c1", at("2027-01-12", 9), None)], scope="cytology", name="Gabinet"
    )
    woman = await patient(client, "female", "1970-05-01")
    status, body = await book(client, woman, mammo.slots["m1"])
    assert status == 201, body
    # one booked exam per programme at a time
    status, problem = await book(client, woman, mammo.slots["m2"])
    assert (status, problem["code"]) == (422, "screening-interval")
    man = await patient(client, "male", "1970-05-01")
    status, problem = await book(client, man, mammo.slots["m2"])
    assert (status, problem["code"]) == (422, "not-eligible")
    young = await patient(client, "female", "1990-05-01")
    status, problem = await book(client, young, mammo.slots["m2"])
    assert (status, problem["code"]) == (422, "not-eligible")
    # turns 45 on the exam day, judged in Warsaw days (in UTC it would still be the 12th)
    birthday = await patient(client, "female", "1982-01-13")
    status, body = await book(client, birthday, mammo.slots["m2"])
    assert status == 201, body
    recent = await patient(client, "female", "1960-03-03")
    await screening(client, recent, "mammography", "2025-01-15")
    status, problem = await book(client, recent, mammo.slots["m3"])
    assert (status, problem["code"]) == (422, "screening-interval")
    assert problem["next_eligible_date"] == "2027-01-15"
    older = await patient(client, "female", "1960-03-03")
    await screening(client, older, "mammography", "2025-01-14")
    status, problem = await book(client, older, mammo.slots["d91"])
    assert (status, problem["code"]) == (422, "outside-booking-window")  # R-PAT-4: 90 days
    assert "waiting_room" not in problem
    status, body = await book(client, older, mammo.slots["d90"])
    assert status == 201, body
    # cytology: an HPV test 4 years ago still blocks (every 5 years)
    hpv = await patient(client, "female", "1980-06-06")
    await screening(client, hpv, "cytology", "2023-01-12", hpv=True)
    status, problem = await book(client, hpv, cyto.slots["c1"])
    assert (status, problem["code"]) == (422, "screening-interval")
    assert problem["next_eligible_date"] == "2028-01-12"
    classic = await patient(client, "female", "1980-06-06")
    await screening(client, classic, "cytology", "2024-01-12")
    status, body = await book(client, classic, cyto.slots["c1"])
    assert status == 201, body


async def test_bad_input_and_unknown_slots(client: Any) -> None:
    await set_clock(client)
    a = await clinic(client, [("s1", at("2027-01-11", 8), "first-stable")])
    p = await patient(client)
    for body in (
        {"slot_id": "no-tilde"},
        {"slot_id": 5},
        {"contact": CONTACT},
        {"slot_id": a.slots["s1"], "x": 1},
    ):
        status, problem = await call(client, "POST", "/patient/v1/appointments", p, body)
        assert (status, problem["code"]) == (400, "invalid"), body
    resp = await client.post(
        "/patient/v1/appointments",
        data=b"{not json",
        headers={**p.headers, "Content-Type": "application/json"},
    )
    assert resp.status == 400
    assert (await resp.json())["code"] == "invalid"
    status, problem = await book(client, p, f"{a.provider_id}~nope", None)
    assert (status, problem["code"]) == (404, "not-found")
    status, problem = await book(client, p, "prov-unknown~s1", None)
    assert (status, problem["code"]) == (404, "not-found")


async def test_another_patients_visit_is_404(client: Any) -> None:
    await set_clock(client)
    a = await clinic(
        client, [("s1", at("2027-01-11", 8), "first-stable"), ("s2", plus_days(9), "first-stable")]
    )
    p = await patient(client)
    status, appt = await book(client, p, a.slots["s1"], await referral(client, p))
    assert status == 201
    other = await patient(client)
    for method, path, body in (
        ("GET", f"/patient/v1/appointments/{appt['id']}", None),
        ("POST", f"/patient/v1/appointments/{appt['id']}/cancel", {"reason": "patient-request"}),
        ("POST", f"/patient/v1/appointments/{appt['id']}/reschedule", {"slot_id": a.slots["s2"]}),
        ("GET", "/patient/v1/appointments/garbage", None),
    ):
        status, problem = await call(client, method, path, other, body)
        assert (status, problem["code"]) == (404, "not-found"), path
    assert await mine(client, other) == []
    store = client.server.app[SERVICES].store
    assert await store.count(c.RESOURCES, {"type": "Appointment", "central.status": "booked"}) == 1
