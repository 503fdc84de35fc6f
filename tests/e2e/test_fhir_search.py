"""FHIR search on the provider API (issue 3 item 1), on both backends: every parameter of
``gateway.search.PARAMS`` per type, date prefixes, token forms, paging with ``_count`` and
``next`` links, and unknown parameters refused with an OperationOutcome."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from mappings import codes
from tests.e2e.fhir_support import (
    MONDAY,
    VENDOR,
    Fhir,
    a_pesel,
    appointment,
    entry,
    location,
    schedule,
    slot,
    transaction,
)

SLOTS = 8  # Monday 08:00 .. 10:20, 20 minutes each


async def seeded(client: Any) -> tuple[Fhir, dict[str, Any]]:
    """Two locations and schedules (cardiology; mammography), slots, two appointments."""
    fhir = await Fhir.new(client)
    entries = [
        entry(location("L-KRK", city="Kraków"), "urn:uuid:loc-1"),
        entry(location("L-WAW", city="Warszawa"), "urn:uuid:loc-2"),
        entry(schedule("urn:uuid:loc-1", ident="S-KARD"), "urn:uuid:sch-1"),
        entry(schedule("urn:uuid:loc-2", "mammography", ident="S-MAMMO"), "urn:uuid:sch-2"),
    ]
    for n in range(SLOTS):
        cat = "control" if n == SLOTS - 1 else "first-stable"
        start = MONDAY + timedelta(minutes=20 * n)
        entries.append(entry(slot("urn:uuid:sch-1", start, category=cat, ident=f"K{n}")))
    entries.append(
        entry(
            slot("urn:uuid:sch-2", MONDAY + timedelta(days=1), category=None, scope="mammography")
        )
    )
    status, bundle, _ = await fhir.post_bundle(transaction(*entries))
    assert status == 200, bundle
    ids = [e["response"]["location"].split("/")[1] for e in bundle["entry"]]
    data: dict[str, Any] = {
        "locations": ids[:2],
        "schedules": ids[2:4],
        "slots": ids[4 : 4 + SLOTS],
        "mammo_slot": ids[4 + SLOTS],
        "pesel": a_pesel(),
    }
    status, a1, _ = await fhir.create(appointment(f"Slot/{data['slots'][0]}", data["pesel"]))
    assert status == 201, a1
    status, a2, _ = await fhir.create(
        appointment(f"Slot/{data['slots'][1]}", a_pesel(), status="cancelled", reason="patient-sms")
    )
    assert status == 201, a2
    data["appointments"] = [a1["id"], a2["id"]]
    return fhir, data


async def test_slot_search_parameters(client: Any) -> None:
    fhir, d = await seeded(client)
    slots, sch = d["slots"], d["schedules"][0]

    async def ids(params: Any) -> list[str]:
        return await fhir.search_ids("Slot", params)

    assert sorted(await ids({})) == sorted([*slots, d["mammo_slot"]])
    assert await ids({"schedule": f"Schedule/{sch}"}) == slots  # sorted by start
    assert await ids({"schedule": sch}) == slots
    assert await ids({"_id": slots[3]}) == [slots[3]]
    assert await ids({"_id": f"{slots[3]},{slots[5]}"}) == [slots[3], slots[5]]
    # start with prefixes; instants with offsets and bare days (Europe/Warsaw)
    t2 = (MONDAY + timedelta(minutes=40)).isoformat()
    assert await ids({"schedule": sch, "start": f"ge{t2}"}) == slots[2:]
    assert await ids({"schedule": sch, "start": f"gt{t2}"}) == slots[3:]
    assert await ids({"schedule": sch, "start": f"lt{t2}"}) == slots[:2]
    assert await ids({"schedule": sch, "start": f"le{t2}"}) == slots[:3]
    assert await ids({"schedule": sch, "start": t2}) == [slots[2]]
    t4 = (MONDAY + timedelta(minutes=80)).isoformat()
    assert await ids([("schedule", sch), ("start", f"ge{t2}"), ("start", f"lt{t4}")]) == slots[2:4]
    assert sorted(await ids({"start": "2027-01-11"})) == sorted(slots)
    assert await ids({"start": "2027-01-12"}) == [d["mammo_slot"]]
    assert await ids({"start": "ge2027-01-13"}) == []
    # the same instant in UTC
    utc = (MONDAY + timedelta(minutes=40)).astimezone(tz=None).strftime("%Y-%m-%dT%H:%M:%S%z")
    assert await ids({"schedule": sch, "start": utc}) == [slots[2]]
    # status: one slot is held by a booking
    assert await ids({"status": "busy"}) == [slots[0]]
    assert len(await ids({"status": "free"})) == SLOTS
    assert len(await ids({"status": "free,busy"})) == SLOTS + 1
    # service-type: code, system|code, and the cell-specialty concept map (1100 -> cardiology)
    assert await ids({"service-type": "mammography"}) == [d["mammo_slot"]]
    assert await ids({"service-type": f"{codes.SCOPE_SYSTEM}|cardiology"}) == slots
    assert await ids({"service-type": f"{codes.CELL_SPECIALTY_SYSTEM}|1100"}) == slots
    assert await ids({"service-type": f"{codes.CELL_SPECIALTY_SYSTEM}|7242"}) == [d["mammo_slot"]]
    assert await ids({"appointment-type": "control"}) == [slots[-1]]
    assert await ids({"appointment-type": f"{codes.SLOT_CATEGORY_SYSTEM}|control"}) == [slots[-1]]
    # identifier: system|value, value, system|
    assert await ids({"identifier": f"{VENDOR}/slot|K3"}) == [slots[3]]
    assert await ids({"identifier": "K3"}) == [slots[3]]
    assert await ids({"identifier": f"{VENDOR}/slot|"}) == slots
    assert await ids({"identifier": f"{VENDOR}/other|K3"}) == []
    # _lastUpdated: everything is from the past minute
    assert len(await ids({"_lastUpdated": "ge2020-01-01"})) == SLOTS + 1
    assert await ids({"_lastUpdated": "lt2020-01-01"}) == []
    # several parameters AND together
    assert await ids({"schedule": sch, "status": "free", "appointment-type": "control"}) == [
        slots[-1]
    ]


async def test_last_updated_prefixes(client: Any) -> None:
    fhir = await Fhir.new(client)
    first = await fhir.created_id(location())
    await asyncio.sleep(0.01)
    _status, body, _ = await fhir.create(location())
    second, at = body["id"], body["meta"]["lastUpdated"]
    assert await fhir.search_ids("Location", {"_lastUpdated": f"ge{at}"}) == [second]
    assert await fhir.search_ids("Location", {"_lastUpdated": f"lt{at}"}) == [first]
    assert await fhir.search_ids("Location", {"_lastUpdated": at}) == [second]
    assert await fhir.search_ids("Location", {"_lastUpdated": f"gt{at}"}) == []
    assert await fhir.search_ids("Location", {"_lastUpdated": f"le{at}"}) == [first, second]


async def test_appointment_search_parameters(client: Any) -> None:
    fhir, d = await seeded(client)
    booked, cancelled = d["appointments"]

    async def ids(params: Any) -> list[str]:
        return await fhir.search_ids("Appointment", params)

    assert await ids({"status": "booked"}) == [booked]
    assert await ids({"status": "cancelled"}) == [cancelled]
    assert await ids({"slot": f"Slot/{d['slots'][0]}"}) == [booked]
    assert await ids({"slot": d["slots"][1]}) == [cancelled]
    pesel_param = f"{codes.PESEL_SYSTEM}|{d['pesel']}"
    assert await ids({"patient:identifier": pesel_param}) == [booked]
    assert await ids({"patient:identifier": d["pesel"]}) == [booked]
    assert await ids({"patient:identifier": f"{codes.PESEL_SYSTEM}|{a_pesel()}"}) == []
    # date: the appointment's start is copied from its slot
    assert sorted(await ids({"date": "2027-01-11"})) == sorted([booked, cancelled])
    assert await ids({"date": f"lt{(MONDAY + timedelta(minutes=20)).isoformat()}"}) == [booked]
    assert await ids({"date": "ge2027-01-12"}) == []
    assert sorted(await ids({"service-type": "cardiology"})) == sorted([booked, cancelled])
    assert await ids({"_id": cancelled}) == [cancelled]
    assert len(await ids({"_lastUpdated": "ge2020-01-01"})) == 2
    # a PESEL of another system is refused
    resp = await client.get(
        "/fhir/Appointment",
        params={"patient:identifier": f"urn:other|{d['pesel']}"},
        headers=fhir.headers,
    )
    assert resp.status == 400


async def test_location_and_schedule_search_parameters(client: Any) -> None:
    fhir, d = await seeded(client)
    krk, waw = d["locations"]
    kard, mammo = d["schedules"]
    assert await fhir.search_ids("Location", {"address-city": "Warszawa"}) == [waw]
    assert await fhir.search_ids("Location", {"address-city": "KRAKÓW"}) == [krk]
    assert await fhir.search_ids("Location", {"address-city": "Krak"}) == []
    both = sorted([krk, waw])
    assert sorted(await fhir.search_ids("Location", {"address-postalcode": "31-147"})) == both
    assert sorted(await fhir.search_ids("Location", {"status": "active"})) == both
    assert await fhir.search_ids("Location", {"identifier": f"{VENDOR}/location|L-KRK"}) == [krk]
    assert await fhir.search_ids("Schedule", {"actor": f"Location/{waw}"}) == [mammo]
    assert await fhir.search_ids("Schedule", {"service-type": "cardiology"}) == [kard]
    cell = f"{codes.CELL_SPECIALTY_SYSTEM}|1100"
    assert await fhir.search_ids("Schedule", {"service-type": cell}) == [kard]
    assert sorted(await fhir.search_ids("Schedule", {"active": "true"})) == sorted([kard, mammo])
    assert await fhir.search_ids("Schedule", {"active": "false"}) == []
    assert await fhir.search_ids("Schedule", {"identifier": "S-MAMMO"}) == [mammo]


async def test_paging_follows_next_links_to_the_end(client: Any) -> None:
    fhir, d = await seeded(client)
    everything = set(d["slots"]) | {d["mammo_slot"]}
    for count in (1, 2, 3, 4, 9, 50):
        bundle = await fhir.search("Slot", {"_count": str(count)})
        assert bundle["total"] == len(everything)
        assert len(bundle["entry"]) == min(count, len(everything))
        ids = await fhir.search_ids("Slot", {"_count": str(count)})
        assert len(ids) == len(set(ids)), f"duplicates with _count={count}"
        assert set(ids) == everything
    # paging keeps the other parameters
    ids = await fhir.search_ids(
        "Slot", {"_count": "3", "status": "free", "service-type": "cardiology"}
    )
    assert ids == d["slots"][1:]
    # _count=0: the total only
    bundle = await fhir.search("Slot", {"_count": "0"})
    assert (bundle["total"], bundle.get("entry", [])) == (len(everything), [])
    # links: self on every page, previous from the second
    bundle = await fhir.search("Slot", {"_count": "4"})
    relations = [lk["relation"] for lk in bundle["link"]]
    assert relations == ["self", "next"]
    assert all(e["fullUrl"].endswith(f"/fhir/Slot/{e['resource']['id']}") for e in bundle["entry"])
    assert all(e["search"]["mode"] == "match" for e in bundle["entry"])


async def test_unknown_or_bad_parameters_answer_400(client: Any) -> None:
    fhir = await Fhir.new(client)
    bad = [
        ("Slot", {"colour": "red"}),
        ("Slot", {"date": "2027-01-11"}),  # a parameter of Appointment, not Slot
        ("Slot", {"start": "ne2027-01-11"}),
        ("Slot", {"start": "2027-13-45"}),
        ("Slot", {"start": "ge2027-01-11T08:00:00"}),  # an instant without an offset
        ("Slot", {"_count": "many"}),
        ("Slot", {"service-type": "urn:unknown|x"}),
        ("Slot", {"status:not": "free"}),
        ("Appointment", {"patient": "Patient/1"}),
        ("Schedule", {"active": "maybe"}),
        ("Location", {"_sort": "name"}),
        ("Location", {"identifier": ""}),
    ]
    for rtype, params in bad:
        resp = await client.get(f"/fhir/{rtype}", params=params, headers=fhir.headers)
        assert resp.status == 400, (rtype, params, resp.status)
        body = await resp.json()
        assert body["resourceType"] == "OperationOutcome", body
        assert body["issue"][0]["diagnostics"]


async def test_unencoded_plus_in_an_instant_is_read_as_an_offset(client: Any) -> None:
    """``?start=ge2027-01-11T08:00:00+01:00`` typed into a URL: ``+`` arrives as a space."""
    fhir, d = await seeded(client)
    sch = d["schedules"][0]
    url = f"/fhir/Slot?schedule={sch}&start=ge2027-01-11T09:00:00+01:00"
    status, bundle, _ = await fhir.get(url)
    assert status == 200, bundle
    assert [e["resource"]["id"] for e in bundle["entry"]] == d["slots"][3:]
