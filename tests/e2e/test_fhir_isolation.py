"""Tenant isolation (issue 3 item 7), on both backends: for every interaction another
provider's resource answers as if it did not exist, and is never seen or changed."""

from __future__ import annotations

from typing import Any

from tests.e2e.fhir_support import (
    Fhir,
    appointment,
    entry,
    expressions,
    location,
    path_of,
    poll,
    schedule,
    slot,
    transaction,
)


async def two_tenants(client: Any) -> tuple[Fhir, Fhir, dict[str, Any]]:
    a, b = await Fhir.new(client), await Fhir.new(client)
    seeded = await a.seed(slots=2)
    status, appt, _ = await a.create(appointment(f"Slot/{seeded['slots'][0]}"))
    assert status == 201, appt
    seeded["appointment"] = appt["id"]
    return a, b, seeded


def a_ids(seeded: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        ("Location", seeded["location"]),
        ("Schedule", seeded["schedule"]),
        ("Slot", seeded["slots"][0]),
        ("Appointment", seeded["appointment"]),
    ]


async def test_reads_of_another_tenant_are_404(client: Any) -> None:
    a, b, seeded = await two_tenants(client)
    for rtype, rid in a_ids(seeded):
        for path in (
            f"/fhir/{rtype}/{rid}",
            f"/fhir/{rtype}/{rid}/_history",
            f"/fhir/{rtype}/{rid}/_history/1",
        ):
            status, body, _ = await b.get(path)
            assert status == 404, (path, body)
            assert body["resourceType"] == "OperationOutcome"
            assert rid not in str(body) or "not found" in str(body)
            assert (await a.get(path))[0] == 200


async def test_searches_never_show_another_tenant(client: Any) -> None:
    a, b, seeded = await two_tenants(client)
    queries = [
        ("Location", {}),
        ("Schedule", {}),
        ("Slot", {}),
        ("Appointment", {}),
        ("Location", {"_id": seeded["location"]}),
        ("Slot", {"schedule": seeded["schedule"]}),
        ("Slot", {"_id": seeded["slots"][0]}),
        ("Slot", {"status": "busy"}),
        ("Appointment", {"slot": seeded["slots"][0]}),
        ("Appointment", {"_id": seeded["appointment"]}),
        ("Schedule", {"actor": f"Location/{seeded['location']}"}),
    ]
    for rtype, params in queries:
        bundle = await b.search(rtype, params)
        assert (bundle["total"], bundle.get("entry", [])) == (0, []), (rtype, params)
        assert (await a.search(rtype, params))["total"] >= 1, (rtype, params)


async def test_writes_cannot_touch_another_tenant(client: Any) -> None:
    a, b, seeded = await two_tenants(client)
    for rtype, rid in a_ids(seeded):
        # delete: 404, and A's resource stays
        status, body, _ = await b.call("DELETE", f"/fhir/{rtype}/{rid}")
        assert status == 404, (rtype, body)
        assert body["resourceType"] == "OperationOutcome"
        # update with If-Match: as for an id that does not exist
        status, body, _ = await b.put("Location", rid, location(), If_Match='W/"1"')
        assert status == 412, body
        status_a, res_a, headers = await a.get(f"/fhir/{rtype}/{rid}")
        assert status_a == 200 and res_a["resourceType"] == rtype
    # update-as-create under the same id makes B's own resource; A's is untouched
    loc = seeded["location"]
    status, body, headers = await b.put("Location", loc, {**location(), "name": "B's"})
    assert (status, headers["ETag"]) == (201, 'W/"1"')
    status, mine, headers = await a.get(f"/fhir/Location/{loc}")
    assert mine["name"] != "B's"
    assert headers["ETag"] == 'W/"1"'


async def test_references_to_another_tenant_do_not_resolve(client: Any) -> None:
    a, b, seeded = await two_tenants(client)
    free_slot = seeded["slots"][1]
    status, outcome, _ = await b.create(schedule(f"Location/{seeded['location']}"))
    assert status in (404, 422), outcome
    assert "Schedule.actor" in expressions(outcome)
    status, outcome, _ = await b.create(slot(f"Schedule/{seeded['schedule']}"))
    assert status in (404, 422), outcome
    assert "Slot.schedule" in expressions(outcome)
    status, outcome, _ = await b.create(appointment(f"Slot/{free_slot}"))
    assert status in (404, 422), outcome
    assert "Appointment.slot[0]" in expressions(outcome)
    # the message says "not found", never "taken": B learns nothing about A's slots
    status, outcome, _ = await b.create(appointment(f"Slot/{seeded['slots'][0]}"))
    assert status in (404, 422)
    assert "does not exist" in outcome["issue"][0]["diagnostics"]
    # conditional create does not match another tenant's identifier
    status, body, _ = await b.create(location(), If_None_Exist=f"_id={seeded['location']}")
    assert status == 201 and body["id"] != seeded["location"]
    # A's free slot is still free
    assert (await a.get(f"/fhir/Slot/{free_slot}"))[1]["status"] == "free"


async def test_transactions_cannot_reach_another_tenant(client: Any) -> None:
    a, b, seeded = await two_tenants(client)
    bundle = transaction(
        entry(location("B-LOC")),
        entry(slot(f"Schedule/{seeded['schedule']}")),
        entry(appointment(f"Slot/{seeded['slots'][1]}")),
        {"request": {"method": "DELETE", "url": f"Slot/{seeded['slots'][1]}"}},
    )
    status, outcome, _ = await b.post_bundle(bundle)
    assert status in (404, 422), outcome
    found = expressions(outcome)
    assert "Bundle.entry[1].resource.schedule" in found
    assert "Bundle.entry[2].resource.slot[0]" in found
    assert (await b.search("Location"))["total"] == 0
    # as a batch: each entry on its own; the delete of A's slot is 404
    bundle["type"] = "batch"
    status, body, _ = await b.post_bundle(bundle)
    assert status == 200
    got = [e["response"]["status"].split()[0] for e in body["entry"]]
    assert got[0] == "201"
    assert got[1] in ("404", "422") and got[2] in ("404", "422")
    assert got[3] == "404"
    assert (await a.get(f"/fhir/Slot/{seeded['slots'][1]}"))[1]["status"] == "free"


async def test_async_status_url_of_another_tenant_is_404(client: Any) -> None:
    a, b, _ = await two_tenants(client)
    resp = await client.post(
        "/fhir", json=transaction(entry(location())), headers=a.h(Prefer="respond-async")
    )
    assert resp.status == 202
    path = path_of(resp.headers["Content-Location"])
    status, body, _ = await b.get(path)
    assert status == 404 and body["resourceType"] == "OperationOutcome"
    assert (await b.call("DELETE", path))[0] == 404
    # A still gets its result
    seen, body, _ = await poll(a, path)
    assert seen[-1] == 200 and body["type"] == "transaction-response"
    assert (await b.get("/fhir/_async/not-a-job"))[0] == 404
