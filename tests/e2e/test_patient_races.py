"""Booking races through the broker: 200 concurrent attempts on one slot, and 200 on 50 slots
of 5 providers with every patient trying twice with one referral. Exactly one winner per
slot (409 ``slot-taken`` for the others), no referral used twice (R-PAT-2); then the store
is checked: each slot holds at most one active appointment, each referral at most one.

Marked ``rabbitmq`` (the point is the real broker); they run on the embedded bus too."""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from datetime import date, timedelta
from typing import Any

import aiohttp
import pytest

from gateway import booking
from gateway import constants as c
from gateway.http.keys import SERVICES
from tests.e2e.patient_support import Patient, at, book, clinic, patient, referral, set_clock

pytestmark = pytest.mark.rabbitmq


class Wide:
    """The test client's server through a session with 300 connections (the test client
    keeps 100), so that 200 bookings are really in flight at once."""

    def __init__(self, client: Any, session: aiohttp.ClientSession) -> None:
        self.client = client
        self.session = session

    async def request(self, method: str, path: str, **kw: Any) -> aiohttp.ClientResponse:
        return await self.session.request(method, self.client.make_url(path), **kw)


async def through_the_partition(client: Any) -> int:
    """Booking commands the workers applied (the rest the API answered from the store)."""
    store = client.server.app[SERVICES].store
    n: int = await store.count(c.PROCESSED, {"type": "patient.book"})
    return n


async def many_patients(client: Any, n: int) -> list[Patient]:
    # distinct birth dates: the sandbox picks PESEL serials per date and sex
    born = [(date(1950, 1, 1) + timedelta(days=7 * i)).isoformat() for i in range(n)]
    return list(await asyncio.gather(*[patient(client, "female", b) for b in born]))


async def store_state(client: Any) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Active (slot-holding) appointments by slot and by referral key."""
    store = client.server.app[SERVICES].store
    active = await store.find(
        c.RESOURCES,
        {
            "type": "Appointment",
            "deleted": False,
            "central.status": {"$in": sorted(booking.HOLDING)},
        },
    )
    by_slot: dict[str, list[str]] = defaultdict(list)
    by_referral: dict[str, list[str]] = defaultdict(list)
    for doc in active:
        gid = f"{doc['tenant']}~{doc['rid']}"
        for sid in doc["central"]["slot_ids"]:
            by_slot[f"{doc['tenant']}~{sid}"].append(gid)
        if doc["central"].get("referral"):
            by_referral[doc["central"]["referral"]["key"]].append(gid)
    return dict(by_slot), dict(by_referral)


async def test_200_patients_race_for_one_slot(client: Any) -> None:
    await set_clock(client)
    a = await clinic(client, [("hot", at("2027-01-11", 8), "first-stable")])
    people = await many_patients(client, 200)
    refs = await asyncio.gather(*[referral(client, p) for p in people])
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=300)) as session:
        wide = Wide(client, session)
        results = await asyncio.gather(
            *[book(wide, p, a.slots["hot"], r) for p, r in zip(people, refs, strict=True)]
        )
    assert Counter(status for status, _ in results) == {201: 1, 409: 199}
    # the race was run in the provider's partition, not only answered by the API
    passed = await through_the_partition(client)
    print(f"race on 1 slot: {passed} of 200 attempts through the partition")
    assert passed > 1
    assert {body["code"] for status, body in results if status == 409} == {"slot-taken"}
    (winner,) = [body for status, body in results if status == 201]

    by_slot, by_referral = await store_state(client)
    assert by_slot == {a.slots["hot"]: [winner["id"]]}
    assert list(by_referral.values()) == [[winner["id"]]]
    store = client.server.app[SERVICES].store
    slot = await store.get(c.RESOURCES, f"{a.provider_id}/Slot/hot")
    assert slot["central"]["status"] == "busy"
    assert slot["central"]["appointment_id"] == winner["id"].split("~")[1]
    booked = await store.find(c.REFERRALS, {"status": "booked"})
    assert [d["appointment_id"] for d in booked] == [winner["id"]]


async def test_200_attempts_on_50_slots_of_5_providers(client: Any) -> None:
    await set_clock(client)
    clinics = []
    for i in range(5):
        slots = [
            (f"s{j}", at("2027-01-11", 8) + timedelta(minutes=20 * j), "first-stable")
            for j in range(10)
        ]
        clinics.append(await clinic(client, slots, name=f"Poradnia {i}"))
    everything = [gid for cl in clinics for gid in cl.slots.values()]
    people = await many_patients(client, 100)
    refs = await asyncio.gather(*[referral(client, p) for p in people])
    rng = random.Random(4)
    attempts = []
    for p, r in zip(people, refs, strict=True):
        # each patient tries two slots of two providers at once, with one referral
        first, second = rng.sample(clinics, 2)
        for cl in (first, second):
            attempts.append((p, rng.choice(list(cl.slots.values())), r))
    rng.shuffle(attempts)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=300)) as session:
        wide = Wide(client, session)
        results = await asyncio.gather(*[book(wide, p, s, r) for p, s, r in attempts])

    codes = Counter((status, body.get("code")) for status, body in results)
    assert set(codes) <= {
        (201, None),
        (409, "slot-taken"),
        (422, "referral-required"),
    }, codes
    assert {body.get("reason") for status, body in results if status == 422} <= {"in-use"}
    wins = [body for status, body in results if status == 201]
    won_slots = [w["slot_id"] for w in wins]
    assert len(won_slots) == len(set(won_slots))  # no slot double-booked
    won_refs = [w["referral"]["key"] for w in wins]
    assert len(won_refs) == len(set(won_refs))  # no referral used twice
    wins_per_patient = Counter(
        p.pesel for (p, _, _), (status, _) in zip(attempts, results, strict=True) if status == 201
    )
    assert max(wins_per_patient.values()) == 1

    by_slot, by_referral = await store_state(client)
    assert all(len(v) == 1 for v in by_slot.values())
    assert all(len(v) == 1 for v in by_referral.values())
    assert sorted(by_slot) == sorted(won_slots)
    assert set(by_slot) <= set(everything)
    assert sorted(by_referral) == sorted(won_refs)
    store = client.server.app[SERVICES].store
    for gid, holders in by_slot.items():
        tenant, sid = gid.split("~")
        slot = await store.get(c.RESOURCES, f"{tenant}/Slot/{sid}")
        assert slot["central"]["appointment_id"] == holders[0].split("~")[1]
    for doc in await store.find(c.REFERRALS, {}):
        if doc["key"] in by_referral:
            assert (doc["status"], doc["appointment_id"]) == ("booked", by_referral[doc["key"]][0])
        else:
            assert (doc["status"], doc["appointment_id"]) == ("issued", None)
    print(
        f"race on 50 slots: {codes}; {await through_the_partition(client)} through the partitions"
    )
