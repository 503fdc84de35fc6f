"""``POST /auth/token``: OAuth2 client credentials with a private_key_jwt assertion (RFC 7523)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from gateway.auth import make_client_assertion
from gateway.http.keys import SERVICES
from tests.e2e.conftest import auth, new_provider

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def form(assertion: str, **extra: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        "scope": "system/*.cruds",
        **extra,
    }


async def test_token_from_a_signed_assertion_works_once(client: Any) -> None:
    prov = await new_provider(client)
    now = client.server.app[SERVICES].clock.now()
    audience = str(client.make_url("/auth/token"))
    assertion = make_client_assertion(prov["private_key_pem"], prov["client_id"], audience, now)
    resp = await client.post("/auth/token", data=form(assertion))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["token_type"] == "bearer" and body["expires_in"] > 0
    resp = await client.get("/fhir/Location?_count=1", headers=auth(body["access_token"]))
    assert resp.status == 200
    # the same assertion again is a replay
    resp = await client.post("/auth/token", data=form(assertion))
    assert resp.status == 401
    assert (await resp.json())["error"] == "invalid_client"


async def test_bad_assertions_are_refused(client: Any) -> None:
    prov = await new_provider(client)
    other = await new_provider(client)
    now = client.server.app[SERVICES].clock.now()
    audience = str(client.make_url("/auth/token"))
    cases = [
        # signed with another provider's key
        make_client_assertion(other["private_key_pem"], prov["client_id"], audience, now),
        # wrong audience
        make_client_assertion(prov["private_key_pem"], prov["client_id"], "https://x/token", now),
        # expired
        make_client_assertion(
            prov["private_key_pem"], prov["client_id"], audience, now - timedelta(hours=1)
        ),
        "not-a-jwt",
    ]
    for assertion in cases:
        resp = await client.post("/auth/token", data=form(assertion))
        assert resp.status in (400, 401), assertion
        assert "error" in await resp.json()
    ok = make_client_assertion(prov["private_key_pem"], prov["client_id"], audience, now)
    resp = await client.post("/auth/token", data=form(ok, grant_type="password"))
    assert resp.status == 400
    assert (await resp.json())["error"] == "unsupported_grant_type"
    resp = await client.post("/auth/token", json={"grant_type": "client_credentials"})
    assert resp.status == 400
