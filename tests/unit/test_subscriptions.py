"""Reading a provider's Subscription (R4 + Backport IG) and building notification Bundles."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from gateway import subscriptions as subs
from gateway.errors import FhirError

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def resource(**channel: Any) -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "r",
        "criteria": subs.TOPIC_ALL,
        "channel": {"type": "rest-hook", "endpoint": "https://example.org/hook", **channel},
    }


def parse(data: dict[str, Any]) -> subs.SubscriptionSpec:
    return subs.parse(data, min_heartbeat=60, max_timeout=15.0, now=NOW)


def problem(data: dict[str, Any]) -> FhirError:
    with pytest.raises(FhirError) as info:
        parse(data)
    return info.value


def test_topics_criteria_and_filters() -> None:
    assert parse(resource()).types == ["Appointment", "Slot"]
    assert parse({**resource(), "criteria": "Slot?"}).types == ["Slot"]
    assert parse({**resource(), "criteria": "Appointment"}).topic.endswith("/appointment-changes")
    narrowed = {
        **resource(),
        "_criteria": {"extension": [{"url": subs.EXT_FILTER, "valueString": "Appointment?"}]},
    }
    assert parse(narrowed).types == ["Appointment"]
    err = problem({**resource(), "criteria": "Appointment?status=booked"})
    assert err.status == 422 and err.issues[0].expression == ["Subscription.criteria"]
    assert problem({**resource(), "criteria": "Patient?"}).status == 422


def test_payload_content_defaults_and_extension() -> None:
    assert parse(resource()).content == "empty"  # R4: no payload, no body
    assert parse(resource(payload="application/fhir+json")).content == "full-resource"
    ext = {"extension": [{"url": subs.EXT_PAYLOAD_CONTENT, "valueCode": "id-only"}]}
    assert parse(resource(payload="application/fhir+json", _payload=ext)).content == "id-only"
    assert problem(resource(payload="application/xml")).status == 422


def test_channel_checks() -> None:
    assert problem({**resource(), "channel": {"type": "websocket"}}).status == 422
    assert problem(resource(endpoint="")).issues[0].expression == ["Subscription.channel.endpoint"]
    assert problem(resource(header=["webhook-signature: forged"])).status == 422
    assert problem(resource(header=["no colon"])).status == 422
    assert parse(resource(header=["X-Api-Key:  k1 "])).headers == ["X-Api-Key: k1"]
    hb = [{"url": subs.EXT_HEARTBEAT, "valueUnsignedInt": 30}]
    assert problem(resource(extension=hb)).status == 422
    hb[0]["valueUnsignedInt"] = 120
    assert parse(resource(extension=hb)).heartbeat == 120
    to = [{"url": subs.EXT_TIMEOUT, "valueUnsignedInt": 60}]
    assert parse(resource(extension=to)).timeout == 15.0
    assert problem({**resource(), "status": "error"}).status == 422
    assert parse({**resource(), "status": "off"}).wants_off
    assert problem({**resource(), "end": "2020-01-01T00:00:00Z"}).status == 422
    assert problem({**resource(), "bogus": 1}).status == 400


def test_the_secret_extension_sent_back_is_ignored() -> None:
    data = {**resource(), "extension": [{"url": subs.EXT_SECRET, "valueString": "whsec_x"}]}
    assert "extension" not in parse(data).resource


def test_notification_bundle_shape() -> None:
    doc = {
        "_id": "s1",
        "topic": subs.TOPIC_ALL,
        "status": "active",
        "content": "full-resource",
        "error": None,
    }
    ev = {
        "_id": "s1:e1",
        "number": 7,
        "at": "2026-11-25T12:00:00.000Z",
        "type": "Slot",
        "rid": "x",
        "version": 3,
        "action": "updated",
    }
    slot = {"resourceType": "Slot", "id": "x"}
    bundle = subs.notification_bundle(
        doc,
        base="https://gw",
        kind="event-notification",
        events_since=9,
        now=NOW,
        events=[ev],
        resources={"s1:e1": slot},
    )
    assert bundle["type"] == "history"
    status, changed = bundle["entry"]
    params = {p["name"]: p for p in status["resource"]["parameter"]}
    assert params["events-since-subscription-start"]["valueString"] == "9"
    assert params["type"]["valueCode"] == "event-notification"
    parts = {p["name"]: p for p in params["notification-event"]["part"]}
    assert parts["event-number"]["valueString"] == "7"
    assert parts["focus"]["valueReference"]["reference"] == "https://gw/fhir/Slot/x"
    assert status["request"]["url"] == "https://gw/fhir/Subscription/s1/$status"
    assert changed["resource"] == slot
    assert changed["request"] == {"method": "PUT", "url": "Slot/x"}
    assert changed["response"] == {"status": "200", "etag": 'W/"3"'}
    empty = subs.notification_bundle(
        doc, base="https://gw", kind="heartbeat", events_since=9, now=NOW, content="empty"
    )
    assert len(empty["entry"]) == 1
