"""FHIR REST interactions on the provider API (issue 3 items 1 and 8), on both backends:
create (+ If-None-Exist, also under a race), update (+ If-Match), update-as-create,
read, vread, history, delete (and what a delete may not break)."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.e2e.fhir_support import (
    MONDAY,
    VENDOR,
    Fhir,
    appointment,
    location,
    schedule,
    slot,
)


async def test_create_answers_201_location_etag_and_reads_back(client: Any) -> None:
    fhir = await Fhir.new(client)
    body_in = {**location("LOC-1"), "id": "client-chosen", "meta": {"versionId": "7"}}
    status, body, headers = await fhir.create(body_in)
    assert status == 201, body
    rid = body["id"]
    assert rid != "client-chosen"  # POST: the server assigns the id
    assert headers["ETag"] == 'W/"1"'
    assert headers["Location"].endswith(f"/fhir/Location/{rid}/_history/1")
    assert "Last-Modified" in headers
    assert body["meta"]["versionId"] == "1"
    assert body["address"]["postalCode"] == "31-147"

    status, read, headers = await fhir.get(f"/fhir/Location/{rid}")
    assert status == 200
    assert headers["ETag"] == 'W/"1"'
    assert read == body
    # If-None-Match with the current ETag: 304
    resp = await client.get(f"/fhir/Location/{rid}", headers=fhir.h(If_None_Match='W/"1"'))
    assert resp.status == 304

    # Prefer: return=minimal -> no body, same headers
    resp = await client.post(
        "/fhir/Location", json=location(), headers=fhir.h(Prefer="return=minimal")
    )
    assert resp.status == 201
    assert await resp.read() == b""
    assert resp.headers["ETag"] == 'W/"1"'


async def test_if_none_exist_returns_the_existing_resource(client: Any) -> None:
    fhir = await Fhir.new(client)
    cond = f"identifier={VENDOR}/location|LOC-9"
    status, first, _ = await fhir.create(location("LOC-9"), If_None_Exist=cond)
    assert status == 201
    status, second, headers = await fhir.create(
        {**location("LOC-9"), "name": "other name"}, If_None_Exist=cond
    )
    assert status == 200, second
    assert second["id"] == first["id"]
    assert second["name"] == first["name"]  # the existing one, untouched
    assert headers["ETag"] == 'W/"1"'
    # by value only, and by _id
    status, third, _ = await fhir.create(location("LOC-9"), If_None_Exist="identifier=LOC-9")
    assert (status, third["id"]) == (200, first["id"])
    status, fourth, _ = await fhir.create(location(), If_None_Exist=f"_id={first['id']}")
    assert (status, fourth["id"]) == (200, first["id"])
    assert len(await fhir.search_ids("Location")) == 1
    # an unsupported criterion is refused, not ignored
    status, outcome, _ = await fhir.create(location(), If_None_Exist="name=x")
    assert status == 400 and outcome["resourceType"] == "OperationOutcome"
    assert len(await fhir.search_ids("Location")) == 1


async def test_twenty_concurrent_conditional_creates_create_one(client: Any) -> None:
    """Issue 3 item 8 (HAPI FHIR #3141): a race of If-None-Exist creates makes one resource."""
    fhir = await Fhir.new(client)
    loc = await fhir.created_id(location())
    sch = await fhir.created_id(schedule(f"Location/{loc}"))
    cond = f"identifier={VENDOR}/slot|RACE-1"
    body = slot(f"Schedule/{sch}", ident="RACE-1")
    answers = await asyncio.gather(*(fhir.create(body, If_None_Exist=cond) for _ in range(20)))
    statuses = sorted(a[0] for a in answers)
    assert statuses == [200] * 19 + [201], statuses
    assert len({a[1]["id"] for a in answers}) == 1
    found = await fhir.search("Slot", {"identifier": f"{VENDOR}/slot|RACE-1"})
    assert found["total"] == 1
    assert found["entry"][0]["resource"]["meta"]["versionId"] == "1"


async def test_concurrent_plain_creates_with_one_identifier_create_one(client: Any) -> None:
    """The business-identifier guard: without If-None-Exist the losers get 409."""
    fhir = await Fhir.new(client)
    answers = await asyncio.gather(*(fhir.create(location("DUP-1")) for _ in range(5)))
    statuses = sorted(a[0] for a in answers)
    assert statuses == [201, 409, 409, 409, 409], statuses
    assert all(a[1]["resourceType"] == "OperationOutcome" for a in answers if a[0] == 409)
    assert len(await fhir.search_ids("Location")) == 1


async def test_update_with_if_match_and_update_as_create(client: Any) -> None:
    fhir = await Fhir.new(client)
    # update-as-create with the client's id
    status, body, headers = await fhir.put("Location", "loc-a", location())
    assert status == 201, body
    assert body["id"] == "loc-a"
    assert headers["ETag"] == 'W/"1"'
    assert headers["Location"].endswith("/fhir/Location/loc-a/_history/1")

    status, body, headers = await fhir.put(
        "Location", "loc-a", {**location(), "name": "v2"}, If_Match='W/"1"'
    )
    assert status == 200, body
    assert headers["ETag"] == 'W/"2"'
    assert body["meta"]["versionId"] == "2"
    # strong ETag form is accepted too
    status, body, headers = await fhir.put(
        "Location", "loc-a", {**location(), "name": "v3"}, If_Match='"2"'
    )
    assert (status, headers["ETag"]) == (200, 'W/"3"')
    # stale -> 412, malformed -> 400; neither changes anything
    status, outcome, _ = await fhir.put("Location", "loc-a", location(), If_Match='W/"1"')
    assert status == 412 and outcome["resourceType"] == "OperationOutcome"
    for bad in ("1", 'W/"x"', "*x", 'W/"1'):
        status, outcome, _ = await fhir.put("Location", "loc-a", location(), If_Match=bad)
        assert status == 400, (bad, outcome)
        assert outcome["resourceType"] == "OperationOutcome"
    status, body, headers = await fhir.get("/fhir/Location/loc-a")
    assert (body["name"], headers["ETag"]) == ("v3", 'W/"3"')
    # If-Match on a resource that does not exist: 412
    status, outcome, _ = await fhir.put("Location", "nope", location(), If_Match='W/"1"')
    assert status == 412
    assert (await fhir.get("/fhir/Location/nope"))[0] == 404
    # id in the body differs from the URL: 400 at Location.id
    status, outcome, _ = await fhir.put("Location", "loc-a", {**location(), "id": "loc-b"})
    assert status == 400
    assert outcome["issue"][0]["expression"] == ["Location.id"]
    # an id the server cannot take
    status, outcome, _ = await fhir.put("Location", "bad_id!", location())
    assert status == 400


async def test_vread_and_history(client: Any) -> None:
    fhir = await Fhir.new(client)
    await fhir.put("Location", "h1", {**location(), "name": "one"})
    await fhir.put("Location", "h1", {**location(), "name": "two"})
    status, v1, headers = await fhir.get("/fhir/Location/h1/_history/1")
    assert (status, v1["name"], headers["ETag"]) == (200, "one", 'W/"1"')
    status, v2, _ = await fhir.get("/fhir/Location/h1/_history/2")
    assert (status, v2["name"], v2["meta"]["versionId"]) == (200, "two", "2")
    assert (await fhir.get("/fhir/Location/h1/_history/3"))[0] == 404
    assert (await fhir.get("/fhir/Location/h1/_history/x"))[0] == 400
    status, bundle, _ = await fhir.get("/fhir/Location/h1/_history")
    assert status == 200
    assert (bundle["type"], bundle["total"]) == ("history", 2)
    assert [e["resource"]["meta"]["versionId"] for e in bundle["entry"]] == ["2", "1"]
    assert bundle["entry"][0]["response"]["etag"] == 'W/"2"'
    assert (await fhir.get("/fhir/Location/none/_history"))[0] == 404

    status, _, _ = await fhir.call("DELETE", "/fhir/Location/h1")
    assert status == 204
    status, bundle, _ = await fhir.get("/fhir/Location/h1/_history")
    assert bundle["total"] == 3
    assert bundle["entry"][0]["request"]["method"] == "DELETE"
    assert "resource" not in bundle["entry"][0]
    assert (await fhir.get("/fhir/Location/h1/_history/3"))[0] == 410
    assert (await fhir.get("/fhir/Location/h1/_history/2"))[0] == 200


async def test_delete_then_read_is_gone_and_recreate_continues_versions(client: Any) -> None:
    fhir = await Fhir.new(client)
    rid = await fhir.created_id(location("DEL-1"))
    status, body, _ = await fhir.call("DELETE", f"/fhir/Location/{rid}")
    assert (status, body) == (204, None)
    status, outcome, _ = await fhir.get(f"/fhir/Location/{rid}")
    assert status == 410 and outcome["resourceType"] == "OperationOutcome"
    # deleting again is idempotent; an unknown id is 404
    assert (await fhir.call("DELETE", f"/fhir/Location/{rid}"))[0] == 204
    assert (await fhir.call("DELETE", "/fhir/Location/unknown"))[0] == 404
    # not in searches, and its identifier is free again
    assert await fhir.search_ids("Location") == []
    assert (await fhir.create(location("DEL-1")))[0] == 201
    status, body, headers = await fhir.put("Location", rid, location())
    assert (status, headers["ETag"]) == (201, 'W/"3"')


async def test_delete_with_if_match(client: Any) -> None:
    fhir = await Fhir.new(client)
    rid = await fhir.created_id(location())
    assert (await fhir.call("DELETE", f"/fhir/Location/{rid}", If_Match='W/"2"'))[0] == 412
    assert (await fhir.get(f"/fhir/Location/{rid}"))[0] == 200
    assert (await fhir.call("DELETE", f"/fhir/Location/{rid}", If_Match='W/"1"'))[0] == 204


async def test_delete_refuses_to_orphan_or_unbook(client: Any) -> None:
    fhir = await Fhir.new(client)
    seeded = await fhir.seed(slots=2)
    sch, (s1, s2) = seeded["schedule"], seeded["slots"]
    # a Location with schedules, a Schedule with slots: 409
    status, outcome, _ = await fhir.call("DELETE", f"/fhir/Location/{seeded['location']}")
    assert status == 409 and outcome["resourceType"] == "OperationOutcome"
    status, outcome, _ = await fhir.call("DELETE", f"/fhir/Schedule/{sch}")
    assert status == 409
    # a slot holding a booking: 409; the appointment that holds it: 409 too
    status, appt, _ = await fhir.create(appointment(f"Slot/{s1}"))
    assert status == 201, appt
    status, outcome, _ = await fhir.call("DELETE", f"/fhir/Slot/{s1}")
    assert status == 409, outcome
    assert "Appointment/" in outcome["issue"][0]["diagnostics"]
    status, outcome, _ = await fhir.call("DELETE", f"/fhir/Appointment/{appt['id']}")
    assert status == 409, outcome
    assert (await fhir.get(f"/fhir/Slot/{s1}"))[1]["status"] == "busy"
    # once cancelled, both can go
    cancelled = {**appointment(f"Slot/{s1}"), "status": "cancelled"}
    cancelled["cancelationReason"] = {
        "coding": [
            {
                "system": "http://cer-gateway.org/fhir/CodeSystem/cancellation-reason",
                "code": "provider-unavailable",
            }
        ]
    }
    status, body, _ = await fhir.put("Appointment", appt["id"], cancelled)
    assert status == 200, body
    assert (await fhir.call("DELETE", f"/fhir/Appointment/{appt['id']}"))[0] == 204
    assert (await fhir.call("DELETE", f"/fhir/Slot/{s1}"))[0] == 204
    assert (await fhir.call("DELETE", f"/fhir/Slot/{s2}"))[0] == 204
    assert (await fhir.call("DELETE", f"/fhir/Schedule/{sch}"))[0] == 204
    assert (await fhir.call("DELETE", f"/fhir/Location/{seeded['location']}"))[0] == 204


async def test_each_type_round_trips(client: Any) -> None:
    """Create, read, update, search and delete for every resource type."""
    fhir = await Fhir.new(client)
    loc = await fhir.created_id(location())
    sch = await fhir.created_id(schedule(f"Location/{loc}"))
    sl = await fhir.created_id(slot(f"Schedule/{sch}", MONDAY))
    status, appt, _ = await fhir.create(appointment(f"Slot/{sl}"))
    assert status == 201, appt
    for rtype, rid in (("Location", loc), ("Schedule", sch), ("Slot", sl)):
        status, body, _ = await fhir.get(f"/fhir/{rtype}/{rid}")
        assert status == 200 and body["resourceType"] == rtype
        assert await fhir.search_ids(rtype, {"_id": rid}) == [rid]
    status, body, _ = await fhir.get(f"/fhir/Appointment/{appt['id']}")
    assert (status, body["status"]) == (200, "booked")
    comment = {**body, "comment": "pacjent prosi o telefon"}
    status, body, headers = await fhir.put(
        "Appointment", appt["id"], comment, If_Match=headers_etag(body)
    )
    assert status == 200, body
    assert headers["ETag"] == 'W/"2"'
    # the slot stays held by the same appointment after the update
    assert (await fhir.get(f"/fhir/Slot/{sl}"))[1]["status"] == "busy"


def headers_etag(resource: dict[str, Any]) -> str:
    return f'W/"{resource["meta"]["versionId"]}"'


async def test_a_new_address_reaches_the_slots(client: Any) -> None:
    """Slots carry their facility's postal code and city for the patients' search (R-CRIT-1);
    a Location's new address and a Schedule's new Location reach them."""
    from gateway import constants as c
    from gateway.http.keys import SERVICES

    store = client.server.app[SERVICES].store
    fhir = await Fhir.new(client)
    seeded = await fhir.seed(slots=2)

    async def slot_places() -> set[tuple[str, str, str]]:
        docs = await store.find(c.RESOURCES, {"tenant": fhir.id, "type": "Slot"})
        return {
            (d["central"]["location_id"], d["central"]["postal_code"], d["central"]["city"])
            for d in docs
        }

    assert await slot_places() == {(seeded["location"], "31-147", "Kraków")}
    moved = location()
    moved["address"] = {"city": "Wieliczka", "postalCode": "32-020"}
    status, body, _ = await fhir.put("Location", seeded["location"], moved)
    assert status == 200, body
    assert await slot_places() == {(seeded["location"], "32-020", "Wieliczka")}
    # the slots' FHIR resources did not change
    _, _, headers = await fhir.get(f"/fhir/Slot/{seeded['slots'][0]}")
    assert headers["ETag"] == 'W/"1"'
    # the schedule moves to another facility
    other = await fhir.created_id(location(city="Tarnów"))
    status, body, _ = await fhir.put("Schedule", seeded["schedule"], schedule(f"Location/{other}"))
    assert status == 200, body
    assert await slot_places() == {(other, "31-147", "Tarnów")}


async def test_if_none_exist_matches_any_identifier_of_the_resource(client: Any) -> None:
    fhir = await Fhir.new(client)
    two = location("VENDOR-1")
    two["identifier"].insert(
        0, {"system": "urn:oid:2.16.840.1.113883.3.4424.2.3.1", "value": "000000001234"}
    )
    first = await fhir.created_id(two)
    for cond in (
        f"identifier={VENDOR}/location|VENDOR-1",
        "identifier=urn:oid:2.16.840.1.113883.3.4424.2.3.1|000000001234",
        f"identifier=VENDOR-1&_id={first}",
    ):
        status, body, _ = await fhir.create(two, If_None_Exist=cond)
        assert (status, body["id"]) == (200, first), cond
    status, body, _ = await fhir.create(location(), If_None_Exist="identifier=VENDOR-1&_id=other")
    assert status == 201
