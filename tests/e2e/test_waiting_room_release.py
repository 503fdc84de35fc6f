"""R-CAN-2 on the sandbox clock over HTTP: a slot freed by a cancellation, by lead time.

- more than 72 h before the visit: assigned to the best-ranked matching entry; none
  matching: released to all at once;
- 48-72 h (both ends included): proposed to the best match (``/patient/v1/proposals``),
  accept / decline, the answer time on the app clock, then the next candidate;
  released to all when nobody takes it;
- under 48 h: not taken by the waiting room: live search only.

Boundaries are tested on both sides: 72 h + 1 min (assigned) / exactly 72 h (proposed);
exactly 48 h (proposed) / 48 h - 1 min (not taken). The visit is ``T`` (Thursday
2027-01-14 10:00 Warsaw), booked by another patient at ``NOW`` and cancelled at
``T - lead``. While proposed or held, the slot is ``busy-tentative``: live search
does not see it, a booking gets 409 ``slot-taken``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from gateway.http.app import create_app
from tests.e2e.conftest import settings_for
from tests.e2e.patient_support import (
    NOW,
    Clinic,
    Patient,
    at,
    book,
    call,
    cancel,
    clinic,
    ids,
    mine,
    patient,
    referral,
    search,
    set_clock,
)
from tests.e2e.waiting_support import (
    advance,
    entered,
    entry,
    entry_status,
    eventually,
    one_proposal,
    outbox,
    proposals,
    settle,
)

T = at("2027-01-14", 10)
ANSWER = 7200.0  # the proposal answer time (seconds, default)


@pytest.fixture
async def client(aiohttp_client: Any) -> Any:
    # Tokens outlive the clock's jumps of days.
    settings = settings_for(
        "embedded", waiting_room_estimate_cache_seconds=0, token_ttl_seconds=10**8
    )
    return await aiohttp_client(create_app(settings))


async def booked(client: Any, cl: Clinic, sid: str = "s1") -> tuple[Patient, str]:
    """Another patient books the slot at NOW; (that patient, the visit's id)."""
    p0 = await patient(client)
    status, appt = await book(client, p0, cl.slots[sid], await referral(client, p0))
    assert status == 201, appt
    return p0, appt["id"]


async def cancel_at(
    client: Any, who: Patient, visit: str, lead: timedelta, start: datetime = T
) -> None:
    """Cancel ``visit`` exactly ``lead`` before its start (the sandbox clock set there)."""
    await set_clock(client, start - lead)
    status, body = await cancel(client, who, visit)
    assert status == 200, body


async def slot_statuses(client: Any, cl: Clinic, sid: str = "s1") -> list[str]:
    resp = await client.get(f"/fhir/Slot/{sid}/_history", headers=cl.fhir_headers())
    bundle = await resp.json()
    return [e["resource"]["status"] for e in reversed(bundle["entry"])]


async def visible(client: Any, who: Patient, cl: Clinic, sid: str = "s1") -> bool:
    _, page = await search(client, who, scope="cardiology", facility=cl.facility)
    return cl.slots[sid] in ids(page)


async def setup(
    client: Any, n: int, **criteria: Any
) -> tuple[Clinic, Patient, str, list[tuple[Patient, str]]]:
    """The clinic, the patient who booked ``s1`` and the visit, then ``n`` waiting entries
    (entered after the booking: a free slot would be theirs at once)."""
    await set_clock(client, NOW)
    cl = await clinic(client, [("s1", T, "first-stable")])
    p0, visit = await booked(client, cl)
    waiting = []
    for _ in range(n):
        p = await patient(client)
        waiting.append((p, await entered(client, p, await referral(client, p), **criteria)))
    return cl, p0, visit, waiting


async def test_more_than_72h_is_assigned_never_free_in_between(client: Any) -> None:
    """R-CAN-2, 72 h + 1 min: assigned to the best-ranked match (R-WAIT-3)."""
    cl, p0, visit, [(first, e1), (second, e2)] = await setup(client, 2, city="Kraków")
    await cancel_at(client, p0, visit, timedelta(hours=72, minutes=1))
    got = await entry_status(client, first, e1, "assigned")
    assert (await mine(client, first))[0]["slot_id"] == cl.slots["s1"]
    assert got["appointment_id"]
    assert (await entry(client, second, e2))["status"] == "waiting"
    # The slot went from the cancelled visit to the waiting room's hold to the new visit:
    # never free for live search in between.
    assert await slot_statuses(client, cl) == ["free", "busy", "busy-tentative", "busy"]
    await eventually(
        lambda: outbox(client, pesel=first.pesel, kind="assigned", channel="sms"),
        lambda m: len(m) == 1,
    )


async def test_more_than_72h_with_no_match_is_released_to_all(client: Any) -> None:
    cl, p0, visit, [(p, e)] = await setup(client, 1, city="Gdańsk")
    await cancel_at(client, p0, visit, timedelta(days=5))
    assert await slot_statuses(client, cl) == ["free", "busy", "free"]  # at once
    assert await visible(client, p, cl)
    await settle(client)
    assert (await entry(client, p, e))["status"] == "waiting"


async def test_exactly_72h_is_proposed_then_accepted(client: Any) -> None:
    """R-CAN-2, exactly 72 h: proposed (48-72 h includes 72); accept books it."""
    cl, p0, visit, [(first, e1), (second, e2)] = await setup(client, 2)
    await cancel_at(client, p0, visit, timedelta(hours=72))
    prop = await one_proposal(client, first)
    assert prop["status"] == "open" and prop["entry_id"] == e1
    assert prop["slot"]["id"] == cl.slots["s1"]
    assert await proposals(client, second) == []
    assert (await entry(client, first, e1))["status"] == "proposed"
    # Held for the proposal: not in live search, not bookable.
    other = await patient(client)
    assert not await visible(client, other, cl)
    status, problem = await book(client, other, cl.slots["s1"], await referral(client, other))
    assert status == 409 and problem["code"] == "slot-taken"
    await eventually(
        lambda: outbox(client, pesel=first.pesel, kind="proposal", channel="sms"),
        lambda m: len(m) == 1,
    )

    status, appt = await call(client, "POST", f"/patient/v1/proposals/{prop['id']}/accept", first)
    assert status == 200, appt
    assert appt["status"] == "booked" and appt["slot_id"] == cl.slots["s1"]
    assert appt["channel"] == "waiting-room"
    assert (await entry(client, first, e1))["status"] == "assigned"
    assert (await entry(client, second, e2))["status"] == "waiting"
    assert (await proposals(client, first, status="accepted"))[0]["id"] == prop["id"]
    assert (await slot_statuses(client, cl))[-1] == "busy"
    await eventually(
        lambda: outbox(client, pesel=first.pesel, kind="assigned", channel="sms"),
        lambda m: len(m) == 1,
    )
    # A proposal is answered once.
    status, problem = await call(
        client, "POST", f"/patient/v1/proposals/{prop['id']}/decline", first
    )
    assert status == 409 and problem["code"] == "not-active"


async def test_decline_and_timeouts_go_to_the_next_candidates_then_to_all(client: Any) -> None:
    """R-CAN-2: decline -> next candidate; no answer in time -> next; nobody -> released."""
    cl, p0, visit, waiting = await setup(client, 3)
    (p1, e1), (p2, e2), (p3, _) = waiting
    await cancel_at(client, p0, visit, timedelta(hours=60))
    first = await one_proposal(client, p1)
    status, declined = await call(
        client, "POST", f"/patient/v1/proposals/{first['id']}/decline", p1
    )
    assert status == 200 and declined["status"] == "declined"
    second = await one_proposal(client, p2)
    # Declining keeps the place (R-WAIT-5): still waiting, first in line.
    back = await entry(client, p1, e1)
    assert back["status"] == "waiting" and back["estimate"]["position"] == 0

    # No answer within the answer time (app clock): the next candidate.
    await advance(client, seconds=ANSWER - 60)
    await settle(client)
    assert (await proposals(client, p2))[0]["id"] == second["id"]
    await advance(client, seconds=61)
    await one_proposal(client, p3)
    assert (await proposals(client, p2, status="expired"))[0]["id"] == second["id"]
    assert (await entry(client, p2, e2))["status"] == "waiting"
    other = await patient(client)
    assert not await visible(client, other, cl)

    # Nobody else: released to all.
    await advance(client, seconds=ANSWER + 1)
    await eventually(lambda: visible(client, other, cl), bool)
    assert await proposals(client, p3) == []
    for p, e in waiting:
        assert (await entry(client, p, e))["status"] == "waiting"
    statuses = await slot_statuses(client, cl)
    assert statuses[:2] == ["free", "busy"] and statuses[-1] == "free"
    assert "free" not in statuses[2:-1]  # held all along until released


async def test_exactly_48h_is_proposed(client: Any) -> None:
    _, p0, visit, [(p, e)] = await setup(client, 1)
    await cancel_at(client, p0, visit, timedelta(hours=48))
    prop = await one_proposal(client, p)
    assert prop["entry_id"] == e
    assert (await entry(client, p, e))["status"] == "proposed"


async def test_under_48h_is_not_taken_by_the_waiting_room(client: Any) -> None:
    """R-CAN-2, 48 h - 1 min: live search only."""
    cl, p0, visit, [(p, e)] = await setup(client, 1)
    await cancel_at(client, p0, visit, timedelta(hours=48) - timedelta(minutes=1))
    assert await slot_statuses(client, cl) == ["free", "busy", "free"]
    assert await visible(client, p, cl)
    await settle(client)
    assert (await entry(client, p, e))["status"] == "waiting"
    assert await proposals(client, p) == []


async def test_leaving_with_an_open_proposal_withdraws_it(client: Any) -> None:
    """R-WAIT-6 while proposed: the proposal is withdrawn, the next candidate asked."""
    _, p0, visit, [(p1, e1), (p2, e2)] = await setup(client, 2)
    await cancel_at(client, p0, visit, timedelta(hours=50))
    prop = await one_proposal(client, p1)
    status, left = await call(client, "DELETE", f"/patient/v1/waiting-room/{e1}", p1)
    assert status == 200 and left["status"] == "left"
    await one_proposal(client, p2)
    assert (await proposals(client, p1, status="withdrawn"))[0]["id"] == prop["id"]
    assert (await entry(client, p2, e2))["status"] == "proposed"


async def test_redelivered_release_and_concurrent_releases_assign_once(client: Any) -> None:
    """A slot is assigned at most once, an entry booked at most once: the same
    ``slot.released`` event delivered again changes nothing; two slots released at
    once with one matching entry give it one visit, the other slot goes free to all."""
    import asyncio

    from gateway.http.keys import SERVICES

    services = client.server.app[SERVICES]
    seen: list[Any] = []

    async def keep(msg: Any) -> None:
        seen.append(msg)

    await services.bus.consume_events("test-slice", ["slot.released"], keep)
    await set_clock(client, NOW)
    cl = await clinic(
        client, [("s1", T, "first-stable"), ("s2", T + timedelta(hours=1), "first-stable")]
    )
    p1, v1 = await booked(client, cl, "s1")
    p2, v2 = await booked(client, cl, "s2")
    waiting = await patient(client)
    e = await entered(client, waiting, await referral(client, waiting))
    await set_clock(client, T - timedelta(days=5))
    results = await asyncio.gather(cancel(client, p1, v1), cancel(client, p2, v2))
    assert [r[0] for r in results] == [200, 200]
    await entry_status(client, waiting, e, "assigned")
    await settle(client)
    visits = [v for v in await mine(client, waiting) if v["status"] == "booked"]
    assert len(visits) == 1
    other = next(s for s in ("s1", "s2") if cl.slots[s] != visits[0]["slot_id"])
    assert (await slot_statuses(client, cl, other))[-1] == "free"
    # The same events again (a redelivery): nothing changes.
    released = [m for m in seen if m.type == "slot.released"]
    assert len(released) == 2
    for m in released:
        await services.bus.publish(m)
    await settle(client)
    assert [v["status"] for v in await mine(client, waiting)] == ["booked"]
    assert (await slot_statuses(client, cl, other))[-1] == "free"


async def test_a_second_offer_of_a_proposed_slot_proposes_nothing_more(client: Any) -> None:
    """R-CAN-2: one open proposal per slot. The release command run again (redelivered
    after its worker died before recording it, or a second trigger) while the first
    entry's proposal is open offers the slot to nobody else."""
    from gateway import waiting_assign
    from gateway.http.keys import SERVICES

    services = client.server.app[SERVICES]
    cl, p0, visit, [(first, e1), (second, _)] = await setup(client, 2)
    await cancel_at(client, p0, visit, timedelta(hours=60))
    prop = await one_proposal(client, first)
    for n in range(2):
        out = await waiting_assign.offer_slot(
            services.store,
            services.clock,
            services.settings,
            tenant=cl.provider_id,
            slot_id="s1",
            reason="released",
            msg_id=f"again-{n}",
            corr=f"again-{n}",
        )
        assert out == "proposed"
    await settle(client)
    assert await proposals(client, second) == []
    assert [p["id"] for p in await proposals(client, first)] == [prop["id"]]
    assert (await entry(client, first, e1))["status"] == "proposed"
    # Once it has expired, the next entry gets the slot, as before.
    await advance(client, seconds=ANSWER + 60)
    assert (await one_proposal(client, second))["status"] == "open"
