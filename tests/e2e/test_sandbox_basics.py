"""Sandbox endpoints: only in sandbox mode; providers, patients, clock, reset."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from gateway import pesel
from gateway.http.app import create_app
from tests.e2e.conftest import auth, new_provider, settings_for

SANDBOX_CALLS = [
    ("POST", "/sandbox/providers"),
    ("POST", "/sandbox/patients"),
    ("GET", "/sandbox/clock"),
    ("POST", "/sandbox/clock"),
    ("POST", "/sandbox/reset"),
    ("POST", "/sandbox/referrals"),
    ("POST", "/sandbox/screenings"),
    ("GET", "/sandbox/inbox/prov-x"),
    ("DELETE", "/sandbox/inbox/prov-x"),
    ("GET", "/sandbox/outbox"),
    ("DELETE", "/sandbox/outbox"),
    ("POST", "/sandbox/conformance/prov-x"),
]


@pytest.mark.parametrize(("method", "path"), SANDBOX_CALLS)
async def test_production_mode_exposes_no_sandbox(
    aiohttp_client: Any, method: str, path: str
) -> None:
    client = await aiohttp_client(create_app(settings_for("embedded", cer_mode="production")))
    resp = await client.request(method, path, json={})
    assert resp.status == 404


async def test_patients_have_valid_pesels_of_the_requested_age_and_sex(client: Any) -> None:
    resp = await client.post(
        "/sandbox/patients", json={"birth_date": "1968-03-05", "sex": "female"}
    )
    assert resp.status == 201
    body = await resp.json()
    assert pesel.is_valid(body["pesel"])
    assert pesel.birth_date(body["pesel"]).isoformat() == "1968-03-05"
    assert pesel.sex(body["pesel"]) == "female"
    resp = await client.post("/sandbox/patients", json={"birth_date": "1968-13-05"})
    assert resp.status == 400


async def test_clock_set_and_advance(client: Any) -> None:
    resp = await client.post("/sandbox/clock", json={"set": "2027-01-11T08:00:00+01:00"})
    assert resp.status == 200
    now = datetime.fromisoformat((await resp.json())["now"].replace("Z", "+00:00"))
    assert abs((now - datetime.fromisoformat("2027-01-11T07:00:00+00:00")).total_seconds()) < 5
    resp = await client.post("/sandbox/clock", json={"advance": "P2DT3H"})
    now2 = datetime.fromisoformat((await resp.json())["now"].replace("Z", "+00:00"))
    assert 2 * 86400 + 3 * 3600 - 5 < (now2 - now).total_seconds() < 2 * 86400 + 3 * 3600 + 5
    assert (await client.post("/sandbox/clock", json={"advance": "-P1D"})).status == 400
    assert (await client.post("/sandbox/clock", json={"set": "2027-01-11T08:00:00"})).status == 400
    assert (await client.post("/sandbox/clock", json={})).status == 400


async def test_reset_one_provider_keeps_the_others(client: Any) -> None:
    a, b = await new_provider(client), await new_provider(client)
    loc = {"resourceType": "Location", "status": "active", "name": "X"}
    for p in (a, b):
        resp = await client.put("/fhir/Location/l1", json=loc, headers=auth(p["token"]))
        assert resp.status == 201
    resp = await client.post("/sandbox/reset", json={"provider_id": a["provider_id"]})
    assert resp.status == 200
    assert (await resp.json())["removed"]["resources"] == 1
    assert (await client.get("/fhir/Location/l1", headers=auth(b["token"]))).status == 200
    # a's data is gone, and a's client is gone with it
    services = client.server.app
    from gateway import constants as c
    from gateway.http.keys import SERVICES

    store = services[SERVICES].store
    assert await store.get(c.PROVIDERS, a["provider_id"]) is None
    assert await store.count(c.RESOURCES, {"tenant": a["provider_id"]}) == 0
    resp = await client.post("/sandbox/reset", json={})
    assert resp.status == 200
    assert await store.count(c.RESOURCES, {}) == 0


async def test_tokens_follow_the_wall_clock_not_the_sandbox_clock(client: Any) -> None:
    """Advancing the sandbox clock by weeks must not expire a tester's tokens."""
    from datetime import UTC
    from datetime import datetime as dt

    from gateway.auth import make_client_assertion

    prov = await new_provider(client)
    resp = await client.post("/sandbox/clock", json={"advance": "P30D"})
    assert resp.status == 200
    resp = await client.get("/fhir/Location?_count=1", headers=auth(prov["token"]))
    assert resp.status == 200
    audience = str(client.make_url("/auth/token"))
    assertion = make_client_assertion(
        prov["private_key_pem"], prov["client_id"], audience, dt.now(UTC)
    )
    resp = await client.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        },
    )
    assert resp.status == 200, await resp.text()
