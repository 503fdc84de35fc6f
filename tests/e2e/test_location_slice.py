"""The vertical slice of the foundation: PUT Location -> broker -> worker -> store ->
outbox event -> published; GET returns it with an ETag. On both backends."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.http.keys import SERVICES
from tests.e2e.conftest import auth, new_provider

LOCATION = {
    "resourceType": "Location",
    "status": "active",
    "name": "Poradnia Kardiologiczna",
    "address": {"line": ["ul. Długa 5"], "city": "Kraków", "postalCode": "31-147"},
}


async def test_put_then_get_location_with_etag_and_event(client: Any) -> None:
    services = client.server.app[SERVICES]
    seen: list[Any] = []

    async def on_event(msg: Any) -> None:
        seen.append(msg)

    await services.bus.consume_events("test-slice", ["resource.Location.*"], on_event)
    prov = await new_provider(client)
    resp = await client.put(
        "/fhir/Location/clinic-1", json={**LOCATION, "id": "clinic-1"}, headers=auth(prov["token"])
    )
    assert resp.status == 201, await resp.text()
    assert resp.headers["ETag"] == 'W/"1"'
    assert resp.headers["Location"].endswith("/fhir/Location/clinic-1/_history/1")
    resp = await client.get("/fhir/Location/clinic-1", headers=auth(prov["token"]))
    assert resp.status == 200
    body = await resp.json()
    assert body["address"]["postalCode"] == "31-147"
    assert body["meta"]["versionId"] == "1"
    assert resp.headers["ETag"] == 'W/"1"'

    # update with the right If-Match -> version 2; a stale one -> 412
    headers = {**auth(prov["token"]), "If-Match": 'W/"1"'}
    resp = await client.put(
        "/fhir/Location/clinic-1", json={**LOCATION, "name": "Nowa nazwa"}, headers=headers
    )
    assert resp.status == 200, await resp.text()
    assert resp.headers["ETag"] == 'W/"2"'
    resp = await client.put("/fhir/Location/clinic-1", json=LOCATION, headers=headers)
    assert resp.status == 412
    outcome = await resp.json()
    assert outcome["resourceType"] == "OperationOutcome"

    for _ in range(100):
        if len(seen) >= 2:
            break
        await asyncio.sleep(0.05)
    types = [m.type for m in seen]
    assert types[:2] == ["resource.Location.created", "resource.Location.updated"]
    assert all(m.tenant == prov["provider_id"] for m in seen)
    # The relay clears an event from the outbox after the broker confirmed it, which
    # can be just after a consumer got it.
    for _ in range(100):
        if not await services.store.pending_events(10):
            break
        await asyncio.sleep(0.05)
    assert await services.store.pending_events(10) == []


async def test_other_tenant_gets_404(client: Any) -> None:
    a = await new_provider(client)
    b = await new_provider(client)
    resp = await client.put("/fhir/Location/x1", json=LOCATION, headers=auth(a["token"]))
    assert resp.status == 201
    resp = await client.get("/fhir/Location/x1", headers=auth(b["token"]))
    assert resp.status == 404
    assert (await resp.json())["resourceType"] == "OperationOutcome"


async def test_bad_input_is_an_operation_outcome(client: Any) -> None:
    prov = await new_provider(client)
    h = auth(prov["token"])
    resp = await client.put("/fhir/Location/x1", data=b"{not json", headers=h)
    assert resp.status == 400
    resp = await client.put("/fhir/Location/x1", json={**LOCATION, "bogus": 1}, headers=h)
    assert resp.status == 400
    issue = (await resp.json())["issue"][0]
    assert issue["expression"] == ["Location.bogus"]
    resp = await client.put(
        "/fhir/Location/x1", json={**LOCATION, "resourceType": "Slot"}, headers=h
    )
    assert resp.status == 400
    resp = await client.put(
        "/fhir/Location/x1",
        json={**LOCATION, "address": {"postalCode": "31147"}},
        headers=h,
    )
    assert resp.status == 422
    assert (await resp.json())["issue"][0]["expression"] == ["Location.address.postalCode"]
    resp = await client.get("/fhir/Location/x1")
    assert resp.status == 401
    resp = await client.get("/fhir/Location/x1", headers=h)
    assert resp.status == 404
