"""The waiting room over HTTP on the sandbox clock (issue 5): entries (R-WAIT-1, R-WAIT-2,
R-WAIT-4), automatic assignment of new slots (R-WAIT-3) with the patient's message
(R-NOT-1, R-NOT-3) and the provider's event (R-SCHED-4), the provider's read of the
estimate (R-WAIT-5, audited), leaving (R-WAIT-6, also by SMS), the nightly unlock
(R-SCHED-6), re-entry after a cancellation (R-WAIT-6) and changes (R-WAIT-7).

The main scenario runs on both backends; the others on the embedded default.
R-CAN-2 (cancellations by lead time, proposals) is ``test_waiting_room_release.py``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from gateway import constants as c
from gateway.http.app import create_app
from mappings import codes
from tests.e2e.conftest import purge_rabbit, settings_for, uses_rabbit
from tests.e2e.patient_support import (
    CONTACT,
    NOW,
    WARSAW,
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
    search,
    set_clock,
)
from tests.e2e.waiting_support import (
    advance,
    audit_records,
    enter,
    entered,
    entry,
    entry_status,
    eventually,
    fhir_slot,
    inbox_appointments,
    outbox,
    push_slot,
    settle,
    store_doc,
    subscribe_inbox,
)

PESEL_SYSTEM = codes.PESEL_SYSTEM


def wr_settings(backend: str) -> Any:
    # Estimates read the store afresh on every request (no snapshot reuse in tests).
    return settings_for(backend, waiting_room_estimate_cache_seconds=0)


@pytest.fixture
async def client(backend: str, aiohttp_client: Any) -> Any:
    settings = wr_settings(backend)
    if uses_rabbit(backend):
        await purge_rabbit(settings)
    return await aiohttp_client(create_app(settings))


@pytest.fixture
async def embedded(aiohttp_client: Any) -> Any:
    return await aiohttp_client(create_app(wr_settings("embedded")))


def channel_of(resource: dict[str, Any]) -> str | None:
    for ext in resource.get("extension") or []:
        if ext["url"] == codes.EXT_BOOKING_CHANNEL:
            return str(ext["valueCoding"]["code"])
    return None


async def test_main_scenario_entry_assignment_estimate_and_leaving(client: Any) -> None:
    """R-WAIT-2 by choice, R-WAIT-3 on a new slot, R-WAIT-5 for the provider, R-WAIT-6."""
    await set_clock(client, NOW)
    krakow = await clinic(client, [("far", at("2027-03-01", 10), "first-stable")])
    await subscribe_inbox(client, krakow)
    a, b, d = await patient(client), await patient(client), await patient(client)
    ref_a, ref_b, ref_d = (
        await referral(client, a),
        await referral(client, b),
        await referral(client, d),
    )

    # Entry by choice with criteria as in a search (R-WAIT-4); estimate shown (R-WAIT-5).
    status, body = await enter(client, a, ref_a, {"city": "Kraków", "weekdays": [1, 2, 3, 4, 5]})
    assert status == 201, body
    entry_a = body["id"]
    assert body["status"] == "waiting" and body["queue"] == "stable"
    assert body["criteria"] == {"city": "Kraków", "weekdays": [1, 2, 3, 4, 5]}
    assert "estimated_date" in body and body["estimate"]["position"] == 0
    entry_b = await entered(client, b, ref_b, city="Kraków", hours="14:00-16:00")
    entry_d = await entered(client, d, ref_d, city="Gdańsk")
    # One active entry per e-referral.
    again, problem = await enter(client, a, ref_a, {"city": "Kraków"})
    assert again == 409 and problem["code"] == "already-waiting"
    assert problem["entry_id"] == entry_a
    # R-WAIT-1: only scopes configured with a waiting room.
    no_room, problem = await enter(client, a, ref_a, scope="mammography")
    assert no_room == 422 and problem["code"] == "no-waiting-room"

    # The patient is told they are in the waiting room (R-NOT-3).
    await eventually(
        lambda: outbox(client, pesel=a.pesel, kind="waiting-room-entered"), lambda m: len(m) >= 1
    )

    # A new slot pushed by the provider: the best-ranked matching entry gets it (R-WAIT-3).
    slot = await push_slot(client, krakow, "new1", at("2027-01-12", 10))  # Tuesday 10:00
    done = await entry_status(client, a, entry_a, "assigned")
    visits = await mine(client, a)
    assert [v["id"] for v in visits] == [done["appointment_id"]]
    assert visits[0]["slot_id"] == slot and visits[0]["channel"] == "waiting-room"
    assert visits[0]["status"] == "booked"
    # B wanted afternoons only: still waiting.
    assert (await entry(client, b, entry_b))["status"] == "waiting"
    # The patient is notified (SMS confirmation), the provider gets the event.
    sent = await eventually(
        lambda: outbox(client, pesel=a.pesel, kind="assigned", channel="sms"),
        lambda m: len(m) >= 1,
    )
    assert "ANULUJ" in sent[0]["text"]
    events = await eventually(
        lambda: inbox_appointments(client, krakow),
        lambda apps: any(x.get("status") == "booked" for x in apps),
    )
    booked = next(x for x in events if x["status"] == "booked")
    assert channel_of(booked) == "waiting-room"
    assert booked["slot"] == [{"reference": "Slot/new1"}]

    # The provider reads B's waiting entry with its estimate (R-WAIT-5); the read is audited.
    resp = await client.get(
        "/fhir/Appointment",
        params={"status": "waitlist", "patient:identifier": f"{PESEL_SYSTEM}|{b.pesel}"},
        headers=krakow.fhir_headers(),
    )
    assert resp.status == 200, await resp.text()
    bundle = await resp.json()
    assert bundle["total"] == 1
    found = bundle["entry"][0]
    assert found["fullUrl"] == f"urn:uuid:{entry_b}"
    res = found["resource"]
    assert res["status"] == "waitlist" and res["id"] == entry_b
    assert res["participant"][0]["actor"]["identifier"]["value"] == b.pesel
    estimate = next(e for e in res["extension"] if e["url"].endswith("/waiting-room-estimate"))
    assert {p["url"] for p in estimate["extension"]} >= {"position", "explanation"}
    records = await audit_records(client)
    assert [r["pesel"] for r in records] == [b.pesel]
    assert records[0]["tenant"] == krakow.provider_id
    assert records[0]["waiting_room_entries"] == [entry_b]
    # Not the provider's own resource: no read by id.
    resp = await client.get(f"/fhir/Appointment/{entry_b}", headers=krakow.fhir_headers())
    assert resp.status == 404

    # A's entry is no longer waiting (its FHIR face follows the assignment at once, from
    # the entry's outbox): not shown, A's own visit is.
    async def of_a() -> list[str]:
        resp = await client.get(
            "/fhir/Appointment",
            params={"patient:identifier": f"{PESEL_SYSTEM}|{a.pesel}"},
            headers=krakow.fhir_headers(),
        )
        return [e["resource"]["status"] for e in (await resp.json())["entry"]]

    await eventually(of_a, lambda statuses: statuses == ["booked"])

    # Leaving: DELETE in IKP, and SMS REZYGNUJE (R-WAIT-6); each is told.
    status, left = await call(client, "DELETE", f"/patient/v1/waiting-room/{entry_b}", b)
    assert status == 200 and left["status"] == "left"
    resp = await client.post(
        "/channels/sms/inbound", json={"from": "+48 600 100 200", "text": "Rezygnuję"}
    )
    answer = await resp.json()
    assert answer["result"] == "left-waiting-room" and answer["entries"] == [entry_d]
    assert (await entry(client, d, entry_d))["status"] == "left"
    for who in (b, d):
        await eventually(
            lambda who=who: outbox(
                client, pesel=who.pesel, kind="waiting-room-left", channel="sms"
            ),
            lambda m: len(m) == 1,
        )
    # Nobody is left waiting: a second slot stays free for live search.
    await push_slot(client, krakow, "new2", at("2027-01-13", 15))
    await settle(client)
    _, page = await search(client, a, scope="cardiology", to="2027-01-20")
    assert f"{krakow.provider_id}~new2" in ids(page)


async def test_automatic_entry_from_booking_outside_the_window(embedded: Any) -> None:
    """R-WAIT-2: day 41 is beyond the 40 days; no free slot at that facility within them,
    so the refusal enters the patient automatically with that facility as the criterion."""
    client = embedded
    await set_clock(client, NOW)
    far = await clinic(client, [("d41", at("2027-02-14", 10), "first-stable")])
    p = await patient(client)
    ref = await referral(client, p)
    status, problem = await book(client, p, far.slots["d41"], ref)
    assert status == 422 and problem["code"] == "outside-booking-window"
    auto = problem["waiting_room_entry"]
    assert auto["status"] == "waiting" and auto["channel"] == "auto-booking"
    assert auto["criteria"] == {"facility": far.facility}
    # Trying again answers with the same entry (one per e-referral).
    status, problem = await book(client, p, far.slots["d41"], ref)
    assert problem["waiting_room_entry"]["id"] == auto["id"]

    # A facility with a free slot in the window: no automatic entry (book that one).
    near = await clinic(
        client,
        [
            ("d10", at("2027-01-14", 10), "first-stable"),
            ("d45", at("2027-02-18", 10), "first-stable"),
        ],
        name="Druga poradnia",
    )
    q = await patient(client)
    status, problem = await book(client, q, near.slots["d45"], await referral(client, q))
    assert status == 422 and "waiting_room_entry" not in problem

    # Search with auto_enter=true: nothing within the window for these criteria.
    r = await patient(client)
    ref_r = await referral(client, r)
    assert (await book(client, r, near.slots["d10"], ref_r))[0] == 201  # contact on file
    visit = (await mine(client, r))[0]
    assert (await cancel(client, r, visit["id"]))[0] == 200
    status, page = await search(client, r, scope="cardiology", city="Gdańsk", auto_enter="true")
    assert status == 200 and page["slots"] == []
    assert page["waiting_room_entry"]["criteria"] == {"city": "Gdańsk"}
    assert page["waiting_room_entry"]["channel"] == "auto-search"


async def test_nightly_unlock_gives_the_waiting_room_the_first_pick(embedded: Any) -> None:
    """R-SCHED-6: the slots of day +41 go to the waiting room at 23:50 Warsaw, before
    patients may book them at midnight (day +40 from then)."""
    client = embedded
    evening = datetime(2027, 1, 4, 23, 40, tzinfo=WARSAW)
    await set_clock(client, evening)
    day41 = "2027-02-14"  # Sunday: the day +41 from 2027-01-04, day +40 from 2027-01-05
    cl = await clinic(
        client,
        [
            ("u1", at(day41, 8), "first-stable"),
            ("u2", at(day41, 9), "first-stable"),
            ("u3", at(day41, 10), "first-urgent"),
            ("u4", at(day41, 11), "first-stable"),
        ],
    )
    stable1, stable2, urgent = await patient(client), await patient(client), await patient(client)
    e1 = await entered(client, stable1, await referral(client, stable1), city="Kraków")
    e2 = await entered(client, stable2, await referral(client, stable2), hours="09:00-10:00")
    e3 = await entered(client, urgent, await referral(client, urgent, category="urgent"))
    await settle(client)
    # Not unlocked yet: nobody takes them, nobody may book them.
    for who, eid in ((stable1, e1), (stable2, e2), (urgent, e3)):
        assert (await entry(client, who, eid))["status"] == "waiting"
    other = await patient(client)
    _, page = await search(client, other, scope="cardiology", **{"from": day41})
    assert page["slots"] == []

    await advance(client, minutes=10, seconds=1)  # 23:50:01
    got1 = await entry_status(client, stable1, e1, "assigned")
    got2 = await entry_status(client, stable2, e2, "assigned")
    got3 = await entry_status(client, urgent, e3, "assigned")
    # Earliest slot to the best-ranked entry that takes it (R-WAIT-5): e1 first, then e2
    # (09:00-10:00 only), the urgent slot to the urgent case.
    assert got1["appointment_id"] and (await mine(client, stable1))[0]["slot_id"].endswith("~u1")
    assert (await mine(client, stable2))[0]["slot_id"].endswith("~u2")
    assert (await mine(client, urgent))[0]["slot_id"].endswith("~u3")
    assert got2 and got3
    # 23:55: the rest is still not bookable; at midnight it is, for everyone.
    await advance(client, minutes=5)
    _, page = await search(client, other, scope="cardiology", **{"from": day41})
    assert page["slots"] == []
    await advance(client, minutes=5)
    _, page = await search(client, other, scope="cardiology", **{"from": day41})
    assert ids(page) == [f"{cl.provider_id}~u4"]


async def test_reentry_after_cancellation_keeps_the_place_and_changes(embedded: Any) -> None:
    """R-WAIT-6 (back in the waiting room, original place, not the slot given up) and
    R-WAIT-7 (change the assigned date to a free slot, or cancel it)."""
    client = embedded
    await set_clock(client, NOW)
    cl = await clinic(client, [])
    first, second = await patient(client), await patient(client)
    e1 = await entered(client, first, await referral(client, first))
    before = await entry(client, first, e1)
    await push_slot(client, cl, "a1", at("2027-01-20", 10))
    await entry_status(client, first, e1, "assigned")
    e2 = await entered(client, second, await referral(client, second))

    # The first patient cancels the assigned date: back in the waiting room, in the
    # original place (queued_at), and the slot goes to the next one, not back to them.
    visit = (await mine(client, first))[0]
    assert (await cancel(client, first, visit["id"]))[0] == 200
    back = await entry_status(client, first, e1, "waiting")
    assert back["queued_at"] == before["queued_at"] and back["estimate"]["position"] == 0
    await entry_status(client, second, e2, "assigned")
    assert (await mine(client, second))[0]["slot_id"] == f"{cl.provider_id}~a1"
    await eventually(
        lambda: outbox(client, pesel=first.pesel, kind="waiting-room-entered", channel="sms"),
        lambda m: len(m) == 2,
    )

    # The next slot is theirs again; they move it to a free slot they found (R-WAIT-7).
    await push_slot(client, cl, "a2", at("2027-01-21", 10))
    await entry_status(client, first, e1, "assigned")
    await settle(client)
    free = await push_slot(client, cl, "a3", at("2027-01-06", 12))  # < 72 h: not assigned
    await settle(client)
    visit = next(v for v in await mine(client, first) if v["status"] == "booked")
    status, moved = await reschedule(client, first, visit["id"], free)
    assert status == 201, moved
    assert moved["slot_id"] == free and moved["replaced"]["status"] == "cancelled"
    await settle(client)
    assert (await entry(client, first, e1))["status"] == "assigned"  # a move: not re-entered
    # Cancelled as treated elsewhere: no re-entry either.
    assert (await cancel(client, first, moved["id"], "patient-treated-elsewhere"))[0] == 200
    await settle(client)
    assert (await entry(client, first, e1))["status"] == "assigned"
    assert await one(client, first, moved["id"])


async def test_change_criteria_keeps_the_place_and_recomputes_the_estimate(embedded: Any) -> None:
    """R-WAIT-4 / R-CRIT-2: PATCH merges the criteria; the estimate follows; it explains
    itself and says what relaxing a criterion would gain."""
    client = embedded
    await set_clock(client, NOW)
    # Beyond the window: Mondays and Thursdays at 10:00 for 12 weeks.
    slots = []
    day = datetime(2027, 2, 15, 10, 0, tzinfo=WARSAW)  # a Monday, day 42
    for week in range(12):
        monday = day + timedelta(weeks=week)
        slots.append((f"m{week}", monday, "first-stable"))
        slots.append((f"t{week}", monday + timedelta(days=3), "first-stable"))
    await clinic(client, slots)
    others = [await patient(client) for _ in range(4)]
    for p in others:
        await entered(client, p, await referral(client, p))
    me = await patient(client)
    eid = await entered(client, me, await referral(client, me), weekdays="4")
    wide = await entry(client, me, eid)
    est = wide["estimate"]
    assert est["position"] == 4 and wide["estimated_date"] is not None
    assert est["matching_capacity_per_week"] > 0
    assert "4 waiting ahead of you" in est["explanation"]
    tip = next(t for t in est["relax"] if t["criterion"] == "weekdays")
    assert tip["days_earlier"] > 0
    assert tip["text"] == f"drop the weekday limit: about {tip['days_earlier']} days earlier"

    status, changed = await call(
        client, "PATCH", f"/patient/v1/waiting-room/{eid}", me, {"criteria": {"weekdays": None}}
    )
    assert status == 200, changed
    assert changed["criteria"] == {}
    assert changed["queued_at"] == wide["queued_at"]  # the place stays
    assert changed["estimated_date"] < wide["estimated_date"]
    assert changed["estimated_date"] == tip["estimated_date"]
    # Unknown criteria are refused; another patient's entry is 404.
    status, problem = await call(
        client, "PATCH", f"/patient/v1/waiting-room/{eid}", me, {"criteria": {"color": "red"}}
    )
    assert status == 400 and problem["code"] == "invalid"
    status, _ = await call(client, "GET", f"/patient/v1/waiting-room/{eid}", others[0])
    assert status == 404
    status, body = await call(client, "GET", "/patient/v1/waiting-room", me)
    assert [e["id"] for e in body["entries"]] == [eid]


async def test_contact_and_referral_rules_for_entries(embedded: Any) -> None:
    """R-PAT-7 contact, R-PAT-2 e-referral (valid, the patient's, not booked)."""
    client = embedded
    await set_clock(client, NOW)
    p = await patient(client)
    ref = await referral(client, p)
    status, problem = await enter(client, p, ref, contact=None)
    assert status == 422 and problem["code"] == "contact-required"
    wrong = "0000" if ref["code"] != "0000" else "1111"
    status, problem = await enter(client, p, {"key": ref["key"], "code": wrong})
    assert status == 422 and problem["code"] == "referral-required"
    used = await referral(client, p, status="realized")
    status, problem = await enter(client, p, used)
    assert status == 422 and problem["reason"] == "used"
    status, problem = await enter(client, p, ref, {"hours": "8-12"})
    assert status == 400 and problem["code"] == "invalid"
    assert CONTACT  # the default contact is a phone number


async def test_concurrent_offers_assign_a_slot_once(embedded: Any) -> None:
    """A slot is assigned at most once, an entry booked at most once: redelivered and
    concurrent offers of the same slot, and two slots offered to one entry at once."""
    import asyncio

    from gateway.events import command
    from gateway.http.keys import SERVICES

    client = embedded
    services = client.server.app[SERVICES]
    await set_clock(client, NOW)
    cl = await clinic(client, [])
    p1, p2, p3 = await patient(client), await patient(client), await patient(client)
    e1 = await entered(client, p1, await referral(client, p1), **{"from": "2027-02-01"})
    # Two slots beyond the waiting room's window: no one takes them until offered here.
    for sid in ("x1", "x2"):
        await push_slot(client, cl, sid, at("2027-02-20", 10 if sid == "x1" else 11))

    def assign(sid: str, msg_id: str) -> Any:
        return command(
            "waiting-room.assign",
            {"pairs": [[sid, e1]]},
            tenant=cl.provider_id,
            correlation_id="t",
            now=services.clock.now(),
            msg_id=msg_id,
        )

    # x1 offered twice with the same id (a redelivery) and once more, x2 at the same time.
    replies = await asyncio.gather(
        services.bus.request(assign("x1", "m1"), 10),
        services.bus.send(assign("x1", "m1")),
        services.bus.request(assign("x2", "m2"), 10),
        services.bus.request(assign("x1", "m3"), 10),
    )
    assert all("error" not in r for r in replies if r)
    await entry_status(client, p1, e1, "assigned")
    booked = [v for v in await mine(client, p1) if v["status"] == "booked"]
    assert len(booked) == 1  # one entry, one visit
    # The other slot is free again (no entry left for it), never double-booked.
    resp = await client.get(
        "/fhir/Appointment", params={"status": "booked"}, headers=cl.fhir_headers()
    )
    slots = [e["resource"]["slot"][0]["reference"] for e in (await resp.json())["entry"]]
    assert len(slots) == len(set(slots)) == 1
    assert p2 and p3
    entry_doc = await store_doc(client, c.WAITING_ROOM, e1)
    assert entry_doc is not None and entry_doc["status"] == "assigned"


async def test_a_planned_pair_whose_entry_changed_since_is_not_booked(embedded: Any) -> None:
    """R-WAIT-4: the unlock's plan pairs a slot with an entry; if the entry's criteria
    changed since and it no longer takes the slot, it is not booked for it and waits
    again in its place (claimed, then let go); the slot is not booked for it."""
    from gateway.events import command
    from gateway.http.keys import SERVICES

    client = embedded
    services = client.server.app[SERVICES]
    await set_clock(client, NOW)
    cl = await clinic(client, [])
    p1 = await patient(client)
    e1 = await entered(client, p1, await referral(client, p1), **{"from": "2027-02-01"})
    await push_slot(client, cl, "x1", at("2027-02-20", 10))  # a Saturday, beyond the window
    before = await store_doc(client, c.WAITING_ROOM, e1)
    # The entry now wants weekdays only: it no longer takes x1.
    status, _ = await call(
        client,
        "PATCH",
        f"/patient/v1/waiting-room/{e1}",
        p1,
        {"criteria": {"weekdays": [1, 2, 3, 4, 5]}},
    )
    assert status == 200
    reply = await services.bus.request(
        command(
            "waiting-room.assign",
            {"pairs": [["x1", e1]]},  # planned before the change
            tenant=cl.provider_id,
            correlation_id="t",
            now=services.clock.now(),
            msg_id="m1",
        ),
        10,
    )
    assert reply == {"booked": 0}
    after = await store_doc(client, c.WAITING_ROOM, e1)
    assert after is not None and before is not None
    assert after["status"] == "waiting" and "claim" not in after
    assert after["rank"] == before["rank"]  # its place in the queue stays
    assert [v for v in await mine(client, p1) if v["status"] == "booked"] == []
    assert (await fhir_slot(client, cl, "x1"))["status"] == "free"
