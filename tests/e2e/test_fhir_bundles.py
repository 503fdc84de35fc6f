"""Transaction and batch Bundles at ``POST /fhir`` (issue 3 items 2 and 8), on both backends:
the week example all at once and idempotent on a resend, all or nothing with the bad
entry's FHIRPath, ``urn:uuid`` resolution, batch entry by entry, and the asynchronous
request pattern (``Prefer: respond-async``)."""

from __future__ import annotations

import asyncio
import copy
import functools
from datetime import timedelta
from typing import Any

import pytest

from gateway import handlers
from tests.e2e.fhir_support import (
    MONDAY,
    VENDOR,
    Fhir,
    appointment,
    entry,
    example,
    expressions,
    location,
    path_of,
    poll,
    schedule,
    slot,
    transaction,
)

WEEK = "transaction-week-cardiology.json"


async def counts(fhir: Fhir) -> dict[str, int]:
    out = {}
    for rtype in ("Location", "Schedule", "Slot", "Appointment"):
        out[rtype] = (await fhir.search(rtype, {"_count": "0"}))["total"]
    return out


async def test_week_transaction_creates_everything_then_resend_changes_nothing(
    client: Any,
) -> None:
    fhir = await Fhir.new(client)
    week = example(WEEK)
    n = len(week["entry"])
    status, bundle, _ = await fhir.post_bundle(week)
    assert status == 200, bundle
    assert bundle["type"] == "transaction-response"
    assert len(bundle["entry"]) == n
    assert all(e["response"]["status"].startswith("201") for e in bundle["entry"])
    assert all(e["response"]["etag"] == 'W/"1"' for e in bundle["entry"])
    assert await counts(fhir) == {"Location": 1, "Schedule": 1, "Slot": n - 2, "Appointment": 0}
    locations = [e["response"]["location"] for e in bundle["entry"]]

    # urn:uuid references now point at the assigned ids
    loc_id = locations[0].split("/")[1]
    sch_id = locations[1].split("/")[1]
    status, sch, _ = await fhir.get(f"/fhir/Schedule/{sch_id}")
    assert sch["actor"][0]["reference"] == f"Location/{loc_id}"
    slots = await fhir.search("Slot", {"schedule": sch_id, "_count": "100"})
    assert slots["total"] == n - 2
    assert {e["resource"]["schedule"]["reference"] for e in slots["entry"]} == {
        f"Schedule/{sch_id}"
    }
    # the week's categories, as the generator made them
    privileged = await fhir.search("Slot", {"appointment-type": "first-privileged"})
    assert privileged["total"] == 2

    # the same Bundle again: every entry matches its identifier, nothing is written
    status, again, _ = await fhir.post_bundle(week)
    assert status == 200, again
    assert all(e["response"]["status"].startswith("200") for e in again["entry"])
    assert [e["response"]["location"] for e in again["entry"]] == locations
    assert await counts(fhir) == {"Location": 1, "Schedule": 1, "Slot": n - 2, "Appointment": 0}
    every = await fhir.search("Slot", {"_count": "100"})
    assert {e["resource"]["meta"]["versionId"] for e in every["entry"]} == {"1"}
    # Prefer: return=representation gives the resources
    status, rep, _ = await fhir.post_bundle(week, Prefer="return=representation")
    assert status == 200
    assert rep["entry"][0]["resource"]["resourceType"] == "Location"


def week_with(mutate: Any) -> dict[str, Any]:
    week = copy.deepcopy(example(WEEK))
    mutate(week["entry"])
    return week


async def assert_nothing_stored(fhir: Fhir) -> None:
    assert await counts(fhir) == {"Location": 0, "Schedule": 0, "Slot": 0, "Appointment": 0}


async def test_one_bad_entry_fails_the_whole_transaction(client: Any) -> None:
    fhir = await Fhir.new(client)

    def end_before_start(entries: list[dict[str, Any]]) -> None:
        res = entries[7]["resource"]
        res["end"], res["start"] = res["start"], res["end"]

    def unknown_schedule(entries: list[dict[str, Any]]) -> None:
        entries[9]["resource"]["schedule"] = {"reference": "Schedule/does-not-exist"}

    def wrong_scope(entries: list[dict[str, Any]]) -> None:
        entries[11]["resource"]["serviceType"][0]["coding"][0]["code"] = "kardiologia"

    def scope_not_of_schedule(entries: list[dict[str, Any]]) -> None:
        entries[12]["resource"]["serviceType"][0]["coding"][0]["code"] = "mammography"

    def unknown_urn(entries: list[dict[str, Any]]) -> None:
        entries[1]["resource"]["actor"][0]["reference"] = "urn:uuid:nobody"

    def unknown_element(entries: list[dict[str, Any]]) -> None:
        entries[20]["resource"]["colour"] = "red"

    def bad_method(entries: list[dict[str, Any]]) -> None:
        entries[3]["request"]["method"] = "PATCH"

    cases = [
        (end_before_start, {422}, "Bundle.entry[7].resource.end"),
        (unknown_schedule, {404, 422}, "Bundle.entry[9].resource.schedule"),
        (wrong_scope, {422}, "Bundle.entry[11].resource.serviceType[0].coding[0].code"),
        (scope_not_of_schedule, {422}, "Bundle.entry[12].resource.serviceType"),
        (unknown_urn, {422}, "Bundle.entry[1].resource.actor[0].reference"),
        (unknown_element, {400}, "Bundle.entry[20].resource.colour"),
        (bad_method, {400}, "Bundle.entry[3].request.method"),
    ]
    for mutate, statuses, where in cases:
        status, outcome, _ = await fhir.post_bundle(week_with(mutate))
        assert status in statuses, (mutate.__name__, status, outcome)
        assert outcome["resourceType"] == "OperationOutcome"
        assert where in expressions(outcome), (mutate.__name__, outcome)
        await assert_nothing_stored(fhir)


async def test_transaction_reports_every_bad_entry_at_once(client: Any) -> None:
    fhir = await Fhir.new(client)

    def two_bad(entries: list[dict[str, Any]]) -> None:
        entries[5]["resource"]["status"] = "open"
        entries[6]["resource"]["end"] = entries[6]["resource"]["start"]

    status, outcome, _ = await fhir.post_bundle(week_with(two_bad))
    assert status == 422
    found = expressions(outcome)
    assert "Bundle.entry[5].resource.status" in found
    assert "Bundle.entry[6].resource.end" in found
    await assert_nothing_stored(fhir)


async def test_transaction_failing_in_the_worker_writes_nothing(client: Any) -> None:
    """Problems only the store can tell (a taken slot, an identifier already used)."""
    fhir = await Fhir.new(client)
    seeded = await fhir.seed(slots=2)
    s1, s2 = seeded["slots"]
    before = await counts(fhir)
    # the second appointment's slot is taken by the first: all or nothing
    bundle = transaction(
        entry(location("NEW-LOC")),
        entry(appointment(f"Slot/{s2}")),
        entry(appointment(f"Slot/{s2}")),
    )
    status, outcome, _ = await fhir.post_bundle(bundle)
    assert status == 409, outcome
    assert "Bundle.entry[2].resource.slot[0]" in expressions(outcome)
    assert await counts(fhir) == before
    assert (await fhir.get(f"/fhir/Slot/{s2}"))[1]["status"] == "free"

    # an identifier another Location already has
    await fhir.created_id(location("TAKEN"))
    before = await counts(fhir)
    status, outcome, _ = await fhir.post_bundle(
        transaction(
            entry(slot(f"Schedule/{seeded['schedule']}", ident="NEW")), entry(location("TAKEN"))
        )
    )
    assert status == 409, outcome
    assert "Bundle.entry[1].resource.identifier[0]" in expressions(outcome)
    assert await counts(fhir) == before

    # two entries with one identifier in one transaction
    status, outcome, _ = await fhir.post_bundle(
        transaction(entry(location("TWICE")), entry(location("TWICE")))
    )
    assert status in (400, 409), outcome
    assert await counts(fhir) == before
    assert (await fhir.get(f"/fhir/Slot/{s1}"))[1]["status"] == "free"


async def test_urn_uuid_references_between_entries(client: Any) -> None:
    fhir = await Fhir.new(client)
    bundle = transaction(
        # the appointment comes first and references a slot created later in the Bundle
        entry(appointment("urn:uuid:s1"), "urn:uuid:a1"),
        entry(slot("urn:uuid:sch", MONDAY), "urn:uuid:s1"),
        entry(schedule("urn:uuid:loc"), "urn:uuid:sch"),
        entry(location(), "urn:uuid:loc"),
    )
    status, body, _ = await fhir.post_bundle(bundle, Prefer="return=representation")
    assert status == 200, body
    appt, sl, sch, loc = (e["resource"] for e in body["entry"])
    assert sch["actor"][0]["reference"] == f"Location/{loc['id']}"
    assert sl["schedule"]["reference"] == f"Schedule/{sch['id']}"
    assert appt["slot"][0]["reference"] == f"Slot/{sl['id']}"
    status, stored_slot, _ = await fhir.get(f"/fhir/Slot/{sl['id']}")
    assert stored_slot["status"] == "busy"
    # PUT entries with client ids may be referenced as Type/id within the Bundle
    status, body, _ = await fhir.post_bundle(
        transaction(
            {"resource": location(), "request": {"method": "PUT", "url": "Location/loc-x"}},
            {
                "resource": schedule("Location/loc-x"),
                "request": {"method": "PUT", "url": "Schedule/sch-x"},
            },
        )
    )
    assert status == 200, body
    assert [e["response"]["location"] for e in body["entry"]] == [
        "Location/loc-x/_history/1",
        "Schedule/sch-x/_history/1",
    ]


async def test_batch_answers_entry_by_entry(client: Any) -> None:
    fhir = await Fhir.new(client)
    seeded = await fhir.seed(slots=1)
    sch = f"Schedule/{seeded['schedule']}"
    bad_slot = slot(sch)
    bad_slot["end"] = bad_slot["start"]
    batch = transaction(
        entry(location("B-1")),
        entry(bad_slot),
        entry(slot("Schedule/unknown")),
        {"request": {"method": "DELETE", "url": f"Slot/{seeded['slots'][0]}"}},
        {"request": {"method": "DELETE", "url": "Slot/never-was"}},
        {"request": {"method": "GET", "url": "Slot"}},
        entry(slot(sch, MONDAY + timedelta(hours=1))),
        kind="batch",
    )
    status, body, _ = await fhir.post_bundle(batch)
    assert status == 200, body
    assert body["type"] == "batch-response"
    got = [e["response"]["status"].split()[0] for e in body["entry"]]
    assert got[0] == "201"
    assert got[1] == "422"
    assert got[2] in ("404", "422")
    assert got[3] == "204"
    assert got[4] == "404"
    assert got[5] == "400"
    assert got[6] == "201"
    outcome = body["entry"][1]["response"]["outcome"]
    assert outcome["resourceType"] == "OperationOutcome"
    assert "Bundle.entry[1].resource.end" in expressions(outcome)
    assert "Bundle.entry[2].resource.schedule" in expressions(
        body["entry"][2]["response"]["outcome"]
    )
    assert await counts(fhir) == {"Location": 2, "Schedule": 1, "Slot": 1, "Appointment": 0}


async def test_bundle_shape_errors(client: Any) -> None:
    fhir = await Fhir.new(client)
    cases = [
        ({"resourceType": "Bundle", "type": "collection", "entry": []}, "Bundle.type"),
        ({"resourceType": "Location"}, "Bundle.resourceType"),
        ({"resourceType": "Bundle", "type": "batch", "entry": {}}, "Bundle.entry"),
        ({"resourceType": "Bundle", "type": "batch", "entry": [], "x": 1}, "Bundle.x"),
        (transaction({"resource": location()}), "Bundle.entry[0].request"),
        (
            transaction(
                {"resource": location(), "request": {"method": "POST", "url": "Location/1"}}
            ),
            "Bundle.entry[0].request.url",
        ),
        (
            transaction({"resource": location(), "request": {"method": "POST", "url": "Patient"}}),
            "Bundle.entry[0].request.url",
        ),
        (
            transaction({"request": {"method": "POST", "url": "Location"}}),
            "Bundle.entry[0].resource",
        ),
        (
            transaction(
                {"resource": slot("Schedule/x"), "request": {"method": "POST", "url": "Location"}}
            ),
            "Bundle.entry[0].resource.resourceType",
        ),
    ]

    def req(**extra: Any) -> dict[str, Any]:
        return transaction(
            {"resource": location(), "request": {"method": "POST", "url": "Location", **extra}}
        )

    cases += [
        (req(ifNoneExist=5), "Bundle.entry[0].request.ifNoneExist"),
        (req(ifNoneExist="&&"), "Bundle.entry[0].request.ifNoneExist"),
        (req(ifNoneExist="name=x"), "Bundle.entry[0].request.ifNoneExist"),
        (req(ifNoneExist="identifier="), "Bundle.entry[0].request.ifNoneExist"),
        (req(ifNoneExist="identifier=sys|"), "Bundle.entry[0].request.ifNoneExist"),
        (req(ifMatch=1), "Bundle.entry[0].request.ifMatch"),
        (req(ifMatch='W/"99999999999999999999999"'), "Bundle.entry[0].request.ifMatch"),
        (req(ifModifiedSince="2027-01-01"), "Bundle.entry[0].request.ifModifiedSince"),
        (
            transaction({"resource": location(), "request": {"method": "POST", "url": 5}}),
            "Bundle.entry[0].request.url",
        ),
        (
            transaction(
                {"resource": location(), "request": {"method": "PUT", "url": "Location/a_b"}}
            ),
            "Bundle.entry[0].request.url",
        ),
        (
            transaction(entry(location(), "urn:uuid:1"), entry(location(), "urn:uuid:1")),
            "Bundle.entry[1].fullUrl",
        ),
        (transaction({**entry(location()), "fullUrl": 7}), "Bundle.entry[0].fullUrl"),
    ]
    for bundle, where in cases:
        status, outcome, _ = await fhir.post_bundle(bundle)
        assert status == 400, (bundle, outcome)
        assert where in expressions(outcome), (where, outcome)
    # the same, entry by entry, in a batch
    batch = transaction(
        {"resource": location(), "request": {"method": "POST", "url": "Location", "ifMatch": 1}},
        entry(location()),
        kind="batch",
    )
    status, body, _ = await fhir.post_bundle(batch)
    assert status == 200
    assert [e["response"]["status"].split()[0] for e in body["entry"]] == ["400", "201"]
    made = body["entry"][1]["response"]["location"].split("/_history")[0]
    assert (await fhir.call("DELETE", f"/fhir/{made}"))[0] == 204
    # an empty transaction is fine and does nothing
    status, body, _ = await fhir.post_bundle(transaction())
    assert (status, body["entry"]) == (200, [])


async def test_respond_async_transaction(client: Any) -> None:
    fhir = await Fhir.new(client)
    week = example(WEEK)
    resp = await client.post("/fhir", json=week, headers=fhir.h(Prefer="respond-async"))
    assert resp.status == 202, await resp.text()
    status_url = resp.headers["Content-Location"]
    assert "/fhir/_async/" in status_url
    seen, body, _headers = await poll(fhir, status_url)
    assert seen[-1] == 200
    assert set(seen[:-1]) <= {202}
    assert body["type"] == "transaction-response"
    assert len(body["entry"]) == len(week["entry"])
    assert all(e["response"]["status"].startswith("201") for e in body["entry"])
    # the result stays readable until deleted
    path = path_of(status_url)
    assert (await fhir.get(path))[0] == 200
    assert (await fhir.call("DELETE", path))[0] == 202
    assert (await fhir.get(path))[0] == 404


async def test_respond_async_says_202_while_the_worker_is_busy(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The status URL answers 202 (with progress) until the worker finished, then 200."""
    release = asyncio.Event()
    handler = handlers.COMMAND_HANDLERS["fhir.write"]

    @functools.wraps(handler)  # the worker passes what the handler's signature names
    async def slow(**kwargs: Any) -> dict[str, Any]:
        await release.wait()  # a worker busy with something else
        return await handler(**kwargs)

    monkeypatch.setitem(handlers.COMMAND_HANDLERS, "fhir.write", slow)
    fhir = await Fhir.new(client)
    resp = await client.post(
        "/fhir", json=transaction(entry(location("ASYNC"))), headers=fhir.h(Prefer="respond-async")
    )
    assert resp.status == 202
    url = resp.headers["Content-Location"]
    for _ in range(3):
        status, body, headers = await fhir.get(path_of(url))
        assert (status, body) == (202, None)
        assert headers["X-Progress"] == "0 of 1 entries applied"
    assert (await fhir.call("DELETE", path_of(url)))[0] == 409  # still running
    release.set()
    seen, body, _ = await poll(fhir, url)
    assert seen[-1] == 200
    assert body["entry"][0]["response"]["status"].startswith("201")


async def test_respond_async_failing_transaction_gives_its_outcome(client: Any) -> None:
    fhir = await Fhir.new(client)

    def unknown_schedule(entries: list[dict[str, Any]]) -> None:
        entries[4]["resource"]["schedule"] = {"reference": f"Schedule/nope-{VENDOR[-3:]}"}

    resp = await client.post(
        "/fhir", json=week_with(unknown_schedule), headers=fhir.h(Prefer="respond-async")
    )
    assert resp.status == 202
    seen, outcome, _ = await poll(fhir, resp.headers["Content-Location"])
    assert seen[-1] in (404, 422), (seen, outcome)
    assert outcome["resourceType"] == "OperationOutcome"
    assert "Bundle.entry[4].resource.schedule" in expressions(outcome)
    await assert_nothing_stored(fhir)
    # an async batch reports each entry
    batch = transaction(entry(location("A")), entry(slot("Schedule/none")), kind="batch")
    resp = await client.post("/fhir", json=batch, headers=fhir.h(Prefer="respond-async"))
    seen, body, _ = await poll(fhir, resp.headers["Content-Location"])
    assert seen[-1] == 200
    assert next(e["response"]["status"].split()[0] for e in body["entry"]) == "201"
    assert body["entry"][1]["response"]["status"].split()[0] in ("404", "422")


async def test_transaction_deletes_a_schedule_with_its_slots(client: Any) -> None:
    """FHIR order: the deletes of a transaction go first, and count for each other."""
    fhir = await Fhir.new(client)
    seeded = await fhir.seed(slots=2)
    deletes = [
        {"request": {"method": "DELETE", "url": f"Schedule/{seeded['schedule']}"}},
        *({"request": {"method": "DELETE", "url": f"Slot/{s}"}} for s in seeded["slots"]),
    ]
    # only some of the slots: the schedule is still referenced
    status, outcome, _ = await fhir.post_bundle(transaction(*deletes[:2]))
    assert status == 409, outcome
    assert "Bundle.entry[0]" in expressions(outcome)
    assert (await fhir.search("Slot"))["total"] == 2
    status, body, _ = await fhir.post_bundle(transaction(*deletes))
    assert status == 200, body
    assert [e["response"]["status"] for e in body["entry"]] == ["204 No Content"] * 3
    assert (await fhir.search("Slot"))["total"] == 0
    assert (await fhir.search("Schedule"))["total"] == 0
    # a new slot may not reference a schedule the same transaction deletes
    sch = await fhir.created_id(schedule(f"Location/{seeded['location']}"))
    status, outcome, _ = await fhir.post_bundle(
        transaction(
            {"request": {"method": "DELETE", "url": f"Schedule/{sch}"}},
            entry(slot(f"Schedule/{sch}")),
        )
    )
    assert status == 422, outcome
    assert "Bundle.entry[1].resource.schedule" in expressions(outcome)
    assert (await fhir.get(f"/fhir/Schedule/{sch}"))[0] == 200


async def test_two_conditional_creates_of_one_identifier_in_one_transaction(client: Any) -> None:
    fhir = await Fhir.new(client)
    cond = f"identifier={VENDOR}/location|SAME"
    status, outcome, _ = await fhir.post_bundle(
        transaction(
            entry(location("SAME"), if_none_exist=cond), entry(location("SAME"), if_none_exist=cond)
        )
    )
    assert status == 400, outcome
    assert "Bundle.entry[1].resource.identifier[0]" in expressions(outcome)
    await assert_nothing_stored(fhir)


async def test_transaction_if_match_per_entry(client: Any) -> None:
    fhir = await Fhir.new(client)
    await fhir.put("Location", "l1", location())
    put = {
        "resource": {**location(), "name": "v2"},
        "request": {"method": "PUT", "url": "Location/l1"},
    }
    stale = transaction(
        entry(location("NEW")), {**put, "request": {**put["request"], "ifMatch": 'W/"7"'}}
    )
    status, outcome, _ = await fhir.post_bundle(stale)
    assert status == 412, outcome
    assert "Bundle.entry[1]" in expressions(outcome)
    assert (await fhir.search("Location"))["total"] == 1
    good = transaction({**put, "request": {**put["request"], "ifMatch": 'W/"1"'}})
    status, body, _ = await fhir.post_bundle(good)
    assert status == 200, body
    assert body["entry"][0]["response"]["etag"] == 'W/"2"'


async def test_conditional_creates_of_a_transaction_each_find_their_own_match(
    client: Any,
) -> None:
    """The worker reads all of a transaction's ``identifier=`` conditions in one query:
    each entry still gets its own answer (issue 3 items 1 and 8)."""
    fhir = await Fhir.new(client)
    shared = {"system": "urn:oid:2.16.840.1.113883.3.4424.2.3.1", "value": "000000001234"}
    a = location("A")
    a["identifier"].append(shared)
    first = await fhir.created_id(a)
    b = location("B")
    b["identifier"].append(shared)
    await fhir.created_id(b)
    by_second = f"identifier={shared['system']}|{shared['value']}"

    status, body, _ = await fhir.post_bundle(
        transaction(
            entry(location("A"), "urn:uuid:a", if_none_exist=f"identifier={VENDOR}/location|A"),
            entry(location("C"), "urn:uuid:c", if_none_exist=f"identifier={VENDOR}/location|C"),
            entry(schedule("urn:uuid:a", ident="S-A")),
            entry(schedule("urn:uuid:c", ident="S-C")),
        )
    )
    assert status == 200, body
    answers = [e["response"]["status"] for e in body["entry"]]
    assert answers == ["200 OK", "201 Created", "201 Created", "201 Created"]
    assert body["entry"][0]["response"]["location"].split("/")[1] == first
    third = body["entry"][1]["response"]["location"].split("/")[1]
    refs = {
        e["resource"]["identifier"][0]["value"]: e["resource"]["actor"][0]["reference"]
        for e in (await fhir.search("Schedule"))["entry"]
    }
    assert refs == {"S-A": f"Location/{first}", "S-C": f"Location/{third}"}

    # one condition matching two resources fails the transaction; nothing else is kept
    status, outcome, _ = await fhir.post_bundle(
        transaction(
            entry(location("D"), if_none_exist=f"identifier={VENDOR}/location|D"),
            entry(location("E"), if_none_exist=by_second),
        )
    )
    assert status == 412, outcome
    assert "Bundle.entry[1]" in expressions(outcome)
    assert (await fhir.search("Location", {"_count": "0"}))["total"] == 3


async def test_large_bundles_go_through_the_validation_process(client: Any) -> None:
    """Bundles from ``POOL_MIN_BYTES`` on are validated in the other process and their
    ops reach the worker as that process serialised them: the same answers."""
    import orjson

    from gateway.http.bundles import POOL_MIN_BYTES

    fhir = await Fhir.new(client)
    seeded = await fhir.seed(slots=0)
    sch = f"Schedule/{seeded['schedule']}"

    def slots(kind: str) -> dict[str, Any]:
        entries = []
        for n in range(450):
            ident = f"BIG-{n:04d}"
            entries.append(
                entry(
                    slot(sch, MONDAY + timedelta(minutes=20 * n), ident=ident),
                    if_none_exist=f"identifier={VENDOR}/slot|{ident}",
                )
            )
        return transaction(*entries, kind=kind)

    big = slots("transaction")
    assert len(orjson.dumps(big)) >= POOL_MIN_BYTES
    status, body, _ = await fhir.post_bundle(big)
    assert status == 200, body
    assert [e["response"]["status"] for e in body["entry"]] == ["201 Created"] * 450
    # Idempotent: the same transaction again matches every entry and writes nothing.
    status, again, _ = await fhir.post_bundle(big)
    assert status == 200, again
    assert [e["response"]["status"] for e in again["entry"]] == ["200 OK"] * 450
    assert [e["response"]["location"] for e in again["entry"]] == [
        e["response"]["location"] for e in body["entry"]
    ]
    # A bad entry refuses the transaction, with its FHIRPath.
    bad = copy.deepcopy(big)
    bad["entry"][17]["resource"]["status"] = "maybe"
    status, outcome, _ = await fhir.post_bundle(bad)
    assert status in (400, 422), outcome
    assert "Bundle.entry[17].resource.status" in expressions(outcome)
    # A batch answers the entries the API refused in their places.
    batch = slots("batch")
    batch["entry"][3]["resource"]["status"] = "maybe"
    batch["entry"][5] = entry(
        slot("Schedule/unknown", MONDAY, ident="BIG-NEW"),
        if_none_exist=f"identifier={VENDOR}/slot|BIG-NEW",
    )
    status, body, _ = await fhir.post_bundle(batch)
    assert status == 200, body
    got = [e["response"]["status"].split()[0] for e in body["entry"]]
    assert got[3] in ("400", "422") and got[5] == "422"
    assert set(got[:3] + got[6:]) == {"200"}
    assert (await counts(fhir))["Slot"] == 450
