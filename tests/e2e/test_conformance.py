"""POST /sandbox/conformance/{provider_id}: the provider's data and webhook endpoint, over HTTP."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from gateway.http.app import create_app
from mappings import codes
from tests.e2e.conftest import new_provider, settings_for
from tests.e2e.webhook_support import call, secret_of, subscription

WARSAW = ZoneInfo("Europe/Warsaw")
START = datetime(2027, 1, 5, 8, 0, tzinfo=WARSAW)


class Endpoint:
    """Verifies signatures once it knows the secret (``lax``: never)."""

    def __init__(self, lax: bool = False) -> None:
        self.lax = lax
        self.secret: str | None = None

    async def handle(self, request: web.Request) -> web.Response:
        raw = (await request.read()).decode()
        if self.secret and not self.lax:
            try:
                Webhook(self.secret).verify(raw, dict(request.headers))
            except WebhookVerificationError:
                return web.Response(status=401)
        return web.Response(status=200)


async def sandbox_client(aiohttp_client: Any, mode: str = "sandbox") -> Any:
    settings = settings_for("embedded", cer_mode=mode, webhook_allow_private_addresses=True)
    return await aiohttp_client(create_app(settings))


async def push_slots(client: Any, token: str, days: int) -> None:
    scope = {"coding": [{"system": codes.SCOPE_SYSTEM, "code": "cardiology"}]}
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": "urn:uuid:loc",
            "resource": {"resourceType": "Location", "status": "active", "name": "Poradnia"},
            "request": {"method": "POST", "url": "Location"},
        },
        {
            "fullUrl": "urn:uuid:sch",
            "resource": {
                "resourceType": "Schedule",
                "active": True,
                "serviceType": [scope],
                "actor": [{"reference": "urn:uuid:loc"}],
            },
            "request": {"method": "POST", "url": "Schedule"},
        },
    ]
    for d in range(days):
        start = START + timedelta(days=d)
        res: dict[str, Any] = {
            "resourceType": "Slot",
            "serviceType": [scope],
            "schedule": {"reference": "urn:uuid:sch"},
            "status": "free",
            "start": start.isoformat(),
            "end": (start + timedelta(minutes=20)).isoformat(),
            "appointmentType": {
                "coding": [{"system": codes.SLOT_CATEGORY_SYSTEM, "code": "first-stable"}]
            },
        }
        entries.append(
            {
                "fullUrl": f"urn:uuid:s{d}",
                "resource": res,
                "request": {"method": "POST", "url": "Slot"},
            }
        )
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    status, body = await call(client, "POST", "/fhir", token, bundle)
    assert status == 200, body


async def subscribe(client: Any, token: str, endpoint: str) -> str:
    status, body = await call(client, "POST", "/fhir/Subscription", token, subscription(endpoint))
    assert status == 201, body
    return secret_of(body)


async def conformance(client: Any, provider_id: str) -> dict[str, Any]:
    resp = await client.post(f"/sandbox/conformance/{provider_id}")
    assert resp.status == 200, await resp.text()
    return dict(await resp.json())


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {ch["id"]: ch["status"] for ch in report["checks"]}


async def test_compliant_provider_passes_and_a_lax_endpoint_fails(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    client = await sandbox_client(aiohttp_client)
    resp = await client.post("/sandbox/clock", json={"set": "2027-01-04T08:00:00+01:00"})
    assert resp.status == 200
    good, lax = Endpoint(), Endpoint(lax=True)
    servers = []
    for ep in (good, lax):
        app = web.Application()
        app.router.add_post("/hook", ep.handle)
        servers.append(await aiohttp_server(app))

    prov = await new_provider(client)
    await push_slots(client, prov["token"], 45)
    good.secret = await subscribe(client, prov["token"], str(servers[0].make_url("/hook")))
    report = await conformance(client, prov["provider_id"])
    assert report["passed"] is True, json.dumps(report, indent=1)
    assert set(statuses(report).values()) == {"pass"}
    assert len(report["checks"]) == 7

    other = await new_provider(client)
    # (a cardiology slot without a category is refused at the door: the unit tests cover it)
    await push_slots(client, other["token"], 10)
    lax.secret = await subscribe(client, other["token"], str(servers[1].make_url("/hook")))
    report = await conformance(client, other["provider_id"])
    assert report["passed"] is False
    assert report["result"] == "fail"
    assert statuses(report) == {
        "schedules-cover-scopes": "pass",
        "slot-category": "pass",
        "no-overlap": "pass",
        "horizon": "fail",
        "webhook-2xx": "pass",
        "webhook-bad-signature": "fail",
        "webhook-duplicate": "pass",
    }
    assert all(ch["how_to_fix"] for ch in report["checks"] if ch["status"] == "fail")


async def test_inbox_subscription_skips_endpoint_checks(aiohttp_client: Any) -> None:
    client = await sandbox_client(aiohttp_client)
    await client.post("/sandbox/clock", json={"set": "2027-01-04T08:00:00+01:00"})
    prov = await new_provider(client)
    report = await conformance(client, prov["provider_id"])
    assert statuses(report)["schedules-cover-scopes"] == "fail"
    assert statuses(report)["webhook-2xx"] == "skipped"
    await push_slots(client, prov["token"], 45)
    await subscribe(client, prov["token"], "sandbox:inbox")
    report = await conformance(client, prov["provider_id"])
    assert report["passed"] is True
    assert statuses(report)["webhook-bad-signature"] == "skipped"
    assert (await client.post("/sandbox/conformance/prov-nobody")).status == 404


async def test_production_has_no_conformance(aiohttp_client: Any) -> None:
    client = await sandbox_client(aiohttp_client, mode="production")
    assert (await client.post("/sandbox/conformance/prov-x")).status == 404
