"""The conformance check's parts: data checks on store documents, the endpoint probe."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from adapters.webhook_http import HttpWebhookSender
from gateway import conformance
from gateway.timeutil import to_store

NOW = datetime(2027, 1, 4, 7, 0, tzinfo=UTC)
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def schedule(sid: str = "s1", scopes: tuple[str, ...] = ("cardiology",), active: bool = True):
    return {
        "_id": f"p/Schedule/{sid}",
        "id": sid,
        "deleted": False,
        "central": {"active": active, "scopes": list(scopes), "location_id": "l1"},
    }


def slot(
    rid: str,
    day: int,
    minute: int = 0,
    *,
    sid: str = "s1",
    scope: str = "cardiology",
    category: str | None = "first-stable",
    length: int = 20,
    status: str = "free",
):
    start = NOW + timedelta(days=day, minutes=minute)
    return {
        "_id": f"p/Slot/{rid}",
        "id": rid,
        "deleted": False,
        "central": {
            "schedule_id": sid,
            "scope": scope,
            "category": category,
            "start": to_store(start),
            "end": to_store(start + timedelta(minutes=length)),
            "status": status,
        },
    }


def compliant() -> list[dict[str, Any]]:
    return [slot(f"a{d}", d) for d in range(1, 45)]


def by_id(checks: list[conformance.Check]) -> dict[str, conformance.Check]:
    return {ch.id: ch for ch in checks}


def test_compliant_data_passes() -> None:
    checks = conformance.check_data([schedule()], compliant(), NOW)
    assert {ch.id: ch.status for ch in checks} == {
        "schedules-cover-scopes": "pass",
        "slot-category": "pass",
        "no-overlap": "pass",
        "horizon": "pass",
    }
    assert conformance.report("p", NOW, checks)["passed"] is True


@pytest.mark.parametrize(
    ("change", "failing"),
    [
        (lambda sl: [*sl, slot("x", 2, 10)], "no-overlap"),
        (lambda sl: [*sl, slot("x", 2, 30, category=None)], "slot-category"),
        (lambda sl: sl[:20], "horizon"),
        (lambda sl: [*sl, slot("x", 3, 60, scope="neurology", sid="s2")], "schedules-cover-scopes"),
    ],
)
def test_each_failing_data_check_says_how_to_fix(change: Any, failing: str) -> None:
    scheds = [schedule()]
    checks = by_id(conformance.check_data(scheds, change(compliant()), NOW))
    assert checks[failing].status == "fail", checks[failing]
    assert checks[failing].how_to_fix
    assert [i for i, ch in checks.items() if ch.status == "fail"] == [failing]


def test_inactive_schedule_and_no_slots_fail() -> None:
    checks = by_id(conformance.check_data([schedule(active=False)], compliant(), NOW))
    assert checks["schedules-cover-scopes"].status == "fail"
    empty = by_id(conformance.check_data([], [], NOW))
    assert empty["schedules-cover-scopes"].status == "fail"
    assert empty["no-overlap"].status == "skipped"


class Endpoint:
    """A receiver: ``strict`` verifies signatures; ``lax`` accepts anything; ``dup`` fails
    on a webhook-id it has seen."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.seen: set[str] = set()

    async def handle(self, request: web.Request) -> web.Response:
        raw = (await request.read()).decode()
        if self.mode != "lax":
            try:
                Webhook(SECRET).verify(raw, dict(request.headers))
            except WebhookVerificationError:
                return web.Response(status=401)
        mid = request.headers["webhook-id"]
        if self.mode == "dup" and mid in self.seen:
            return web.Response(status=500, text="duplicate key")
        self.seen.add(mid)
        return web.Response(status=204)


@pytest.fixture
async def sender() -> AsyncIterator[HttpWebhookSender]:
    s = HttpWebhookSender(allow_private=True)
    await s.start()
    yield s
    await s.close()


async def probe(aiohttp_server: Any, sender: HttpWebhookSender, mode: str) -> dict[str, Any]:
    app = web.Application()
    app.router.add_post("/hook", Endpoint(mode).handle)
    server = await aiohttp_server(app)
    checks = await conformance.probe_endpoint(
        sender, url=str(server.make_url("/hook")), secrets=(SECRET,), body=b'{"a": 1}', timeout=5
    )
    return {ch.id: ch for ch in checks}


async def test_a_correct_endpoint_passes(aiohttp_server: Any, sender: HttpWebhookSender) -> None:
    checks = await probe(aiohttp_server, sender, "strict")
    assert {i: ch.status for i, ch in checks.items()} == dict.fromkeys(
        conformance.WEBHOOK_IDS, "pass"
    )


async def test_an_endpoint_accepting_bad_signatures_fails(
    aiohttp_server: Any, sender: HttpWebhookSender
) -> None:
    checks = await probe(aiohttp_server, sender, "lax")
    assert checks["webhook-bad-signature"].status == "fail"
    assert "HMAC" in (checks["webhook-bad-signature"].how_to_fix or "")
    assert checks["webhook-2xx"].status == "pass"


async def test_an_endpoint_erroring_on_a_duplicate_id_fails(
    aiohttp_server: Any, sender: HttpWebhookSender
) -> None:
    checks = await probe(aiohttp_server, sender, "dup")
    assert checks["webhook-duplicate"].status == "fail"
    assert checks["webhook-duplicate"].how_to_fix
    assert checks["webhook-bad-signature"].status == "pass"


async def test_an_unreachable_endpoint_fails(sender: HttpWebhookSender) -> None:
    checks = await conformance.probe_endpoint(
        sender, url="http://127.0.0.1:9/hook", secrets=(SECRET,), body=b"{}", timeout=2
    )
    assert by_id(checks)["webhook-2xx"].status == "fail"
    assert by_id(checks)["webhook-duplicate"].status == "skipped"
