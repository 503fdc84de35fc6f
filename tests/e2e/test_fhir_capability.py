"""The CapabilityStatement tells the truth (issue 3 item 3), on both backends: the requests
are generated from the statement itself; every advertised interaction and search parameter
answers, and the advertised behaviours (conditional create, update-as-create, versioned
update, history) hold."""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from mappings import codes
from tests.e2e.fhir_support import (
    Fhir,
    a_pesel,
    appointment,
    location,
    schedule,
    slot,
    transaction,
)

SAMPLE = {"token": "x", "reference": "x", "string": "x", "date": "ge2027-01-11", "number": "1"}
SPECIAL = {
    "active": "true",
    "patient:identifier": f"{codes.PESEL_SYSTEM}|{a_pesel()}",
    "service-type": "cardiology",
}


async def test_metadata_is_a_valid_r4_capability_statement(client: Any) -> None:
    resp = await client.get("/fhir/metadata")  # public, like every FHIR server's
    assert resp.status == 200
    assert resp.content_type == "application/fhir+json"
    body = await resp.json()
    CapabilityStatement.model_validate(body)
    assert body["fhirVersion"] == "4.0.1"
    assert body["kind"] == "instance"
    (rest,) = body["rest"]
    assert rest["mode"] == "server"
    assert {r["type"] for r in rest["resource"]} == {
        "Location",
        "Schedule",
        "Slot",
        "Appointment",
        "Subscription",
    }
    (sub,) = [r for r in rest["resource"] if r["type"] == "Subscription"]
    assert {o["name"] for o in sub["operation"]} == {
        "status",
        "events",
        "replay",
        "deliveries",
        "rotate-secret",
    }
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch"}
    token_url = rest["security"]["extension"][0]["extension"][0]["valueUri"]
    assert token_url.endswith("/auth/token")
    # the contract's search parameters are there
    params = {r["type"]: {p["name"] for p in r["searchParam"]} for r in rest["resource"]}
    for rtype in ("Location", "Schedule", "Slot", "Appointment"):
        assert {"_id", "_lastUpdated"} <= params[rtype]
    assert {"schedule", "start", "status", "service-type"} <= params["Slot"]
    assert {"status", "date", "slot", "patient:identifier"} <= params["Appointment"]


async def test_every_advertised_interaction_answers(client: Any) -> None:
    fhir = await Fhir.new(client)
    statement = (await fhir.get("/fhir/metadata"))[1]
    (rest,) = statement["rest"]
    seeded = await fhir.seed(slots=2)
    bodies = {
        "Location": lambda: location(),
        "Schedule": lambda: schedule(f"Location/{seeded['location']}"),
        "Slot": lambda: slot(f"Schedule/{seeded['schedule']}"),
        "Appointment": lambda: appointment(f"Slot/{seeded['slots'][0]}"),
    }
    checked = 0
    for res in rest["resource"]:
        rtype = res["type"]
        if rtype == "Subscription":
            continue  # its interactions and operations: tests/e2e/test_webhooks.py
        codes_ = [i["code"] for i in res["interaction"]]
        rid = f"cap-{rtype.lower()}"
        # create first, then the instance-level ones on a resource made by update-as-create
        order = ["create", "update", "read", "vread", "history-instance", "search-type", "delete"]
        assert set(codes_) <= set(order), codes_
        for code in sorted(codes_, key=order.index):
            if code == "create":
                status, body, headers = await fhir.create(bodies[rtype]())
                assert status == 201, (rtype, body)
                if rtype == "Appointment":
                    # free the slot again for the update-as-create below
                    await fhir.put(
                        "Appointment",
                        body["id"],
                        {
                            **body,
                            "status": "cancelled",
                            "cancelationReason": {
                                "coding": [
                                    {
                                        "system": codes.CANCELLATION_REASON_SYSTEM,
                                        "code": "patient-request",
                                    }
                                ]
                            },
                        },
                    )
            elif code == "update":
                assert res["updateCreate"] is True
                status, body, headers = await fhir.put(rtype, rid, bodies[rtype]())
                assert status == 201, (rtype, body)
                if res["versioning"] == "versioned-update":
                    # Changed content makes version 2; the same content again is a no-op
                    # (no new version, as the initial import relies on).
                    changed = {
                        **bodies[rtype](),
                        "meta": {"tag": [{"system": "urn:t", "code": "2"}]},
                    }
                    status, body, headers = await fhir.put(rtype, rid, changed, If_Match='W/"1"')
                    assert (status, headers["ETag"]) == (200, 'W/"2"'), (rtype, body)
                    status, body, headers = await fhir.put(rtype, rid, changed, If_Match='W/"2"')
                    assert (status, headers["ETag"]) == (200, 'W/"2"'), (rtype, body)
                    status, _, _ = await fhir.put(rtype, rid, bodies[rtype](), If_Match='W/"1"')
                    assert status == 412
            elif code == "read":
                status, _, headers = await fhir.get(f"/fhir/{rtype}/{rid}")
                assert status == 200
                if res.get("conditionalRead") == "not-match":
                    etag = headers["ETag"]
                    assert (await fhir.get(f"/fhir/{rtype}/{rid}", If_None_Match=etag))[0] == 304
            elif code == "vread":
                assert (await fhir.get(f"/fhir/{rtype}/{rid}/_history/1"))[0] == 200
            elif code == "history-instance":
                status, body, _ = await fhir.get(f"/fhir/{rtype}/{rid}/_history")
                assert (status, body["type"]) == (200, "history")
            elif code == "search-type":
                assert (await fhir.search(rtype))["total"] >= 1
            elif code == "delete":
                if rtype == "Appointment":
                    cancel = {
                        **bodies[rtype](),
                        "status": "cancelled",
                        "cancelationReason": {
                            "coding": [
                                {
                                    "system": codes.CANCELLATION_REASON_SYSTEM,
                                    "code": "patient-request",
                                }
                            ]
                        },
                    }
                    assert (await fhir.put(rtype, rid, cancel))[0] == 200
                if rtype in ("Location", "Schedule", "Slot"):
                    # a leaf of its own, so that nothing references it
                    leaf = await fhir.created_id(bodies[rtype]())
                    assert (await fhir.call("DELETE", f"/fhir/{rtype}/{leaf}"))[0] == 204
                else:
                    assert (await fhir.call("DELETE", f"/fhir/{rtype}/{rid}"))[0] == 204
            checked += 1
        if res.get("conditionalCreate"):
            ident = {**location("COND"), "resourceType": "Location"}
            if rtype == "Location":
                cond = "identifier=COND"
                first = await fhir.create(ident, If_None_Exist=cond)
                second = await fhir.create(ident, If_None_Exist=cond)
                assert (first[0], second[0]) == (201, 200)
                assert first[1]["id"] == second[1]["id"]
        if res.get("readHistory"):
            assert "vread" in codes_
    assert checked >= 4 * 7
    for interaction in rest["interaction"]:
        bundle = transaction(kind=interaction["code"])
        status, body, _ = await fhir.post_bundle(bundle)
        assert (status, body["type"]) == (200, f"{interaction['code']}-response")


async def test_every_advertised_search_parameter_is_accepted(client: Any) -> None:
    fhir = await Fhir.new(client)
    statement = (await fhir.get("/fhir/metadata"))[1]
    count = 0
    for res in statement["rest"][0]["resource"]:
        for param in res["searchParam"]:
            value = SPECIAL.get(param["name"], SAMPLE[param["type"]])
            bundle = await fhir.search(res["type"], {param["name"]: value})
            assert bundle["type"] == "searchset", (res["type"], param)
            count += 1
            # a parameter that is not advertised is refused
        status, outcome, _ = await fhir.get(f"/fhir/{res['type']}?not-advertised=1")
        assert status == 400 and outcome["resourceType"] == "OperationOutcome"
    assert count >= 20
