"""``/fhir/Subscription``: a provider's webhook subscriptions (R4 + Subscriptions Backport IG).

CRUD and search of the provider's own subscriptions (another tenant's id
answers 404), and the operations:

* ``GET  /fhir/Subscription/{id}/$status``: a searchset Bundle with the
  Backport status ``Parameters`` (``events-since-subscription-start``);
  ``GET /fhir/Subscription/$status`` for all of the provider's.
* ``GET  /fhir/Subscription/{id}/$events?eventsSinceNumber=&eventsUntilNumber=&content=``:
  kept events (retention ``webhook_event_retention_days``) as a notification
  history Bundle, at most 500 a page with a ``next`` link.
* ``POST /fhir/Subscription/{id}/$replay`` with ``eventsSinceNumber`` (and
  ``eventsUntilNumber``) or ``since`` (an instant), in the query or a
  ``Parameters`` body: sends those events again.
* ``GET  /fhir/Subscription/{id}/$deliveries?_count=&eventNumber=``: the
  delivery log, newest first (attempt, trigger, outcome, status code,
  latency, error).
* ``POST /fhir/Subscription/{id}/$rotate-secret``: a new ``whsec_`` secret;
  the old one keeps signing (a second signature) for the overlap.

Subscriptions are configuration, not the central model: the API writes them
itself with conditional updates (a slow handshake must not hold the
provider's command partition).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import constants as c
from gateway import subscriptions as subs
from gateway.errors import FhirError, Issue, not_found
from gateway.http.auth import provider_id
from gateway.http.fhir import base_url, check_id, http_date, parse_if_match, read_body
from gateway.http.keys import SERVICES
from gateway.http.responses import fhir_response
from gateway.ports import Document
from gateway.timeutil import from_store, parse_instant, to_fhir
from gateway.webhooks import EVENTS_MAX, Webhooks, attempt_parameter

SEARCH_PARAMS = ("_id", "status", "_count", "_format")


def _webhooks(request: web.Request) -> Webhooks:
    services = request.app[SERVICES]
    if services.webhooks is None:  # pragma: no cover - always wired by bootstrap
        raise FhirError(503, [Issue("transient", "webhooks are not available")])
    return services.webhooks


async def _own(request: web.Request) -> Document:
    tenant = provider_id(request)
    sid = check_id(request.match_info["id"], "Subscription")
    doc = await request.app[SERVICES].store.get(c.SUBSCRIPTIONS, sid)
    if doc is None or doc.get("tenant") != tenant:
        raise not_found(f"Subscription/{sid}")
    return doc


def _headers(request: web.Request, doc: Document) -> dict[str, str]:
    return {
        "ETag": f'W/"{doc["version"]}"',
        "Last-Modified": http_date(doc["last_updated"]),
        "Location": f"{base_url(request)}/fhir/Subscription/{doc['_id']}",
    }


async def _spec(request: web.Request) -> subs.SubscriptionSpec:
    services = request.app[SERVICES]
    data = await read_body(request)
    spec = subs.parse(
        data,
        min_heartbeat=services.settings.webhook_min_heartbeat_seconds,
        max_timeout=services.settings.webhook_timeout_seconds,
        now=services.clock.now(),
    )
    refusal = await _webhooks(request).sender.refusal(spec.endpoint)
    if refusal is not None:
        raise FhirError(
            422, [Issue("value", f"endpoint refused: {refusal}", ["Subscription.channel.endpoint"])]
        )
    return spec


async def create(request: web.Request) -> web.Response:
    """``POST``: 201 with the Subscription, its status after the handshake and, once, its secret."""
    tenant = provider_id(request)
    spec = await _spec(request)
    doc, secret = await _webhooks(request).create(tenant, spec)
    headers = {**_headers(request, doc), "Cache-Control": "no-store"}
    return fhir_response(subs.render(doc, secret=secret), 201, headers)


async def read(request: web.Request) -> web.Response:
    doc = await _own(request)
    etag = f'W/"{doc["version"]}"'
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag})
    headers = _headers(request, doc)
    del headers["Location"]
    return fhir_response(subs.render(doc), 200, headers)


async def update(request: web.Request) -> web.Response:
    """``PUT``: change endpoint, headers, content, heartbeat, topic; ``status`` off pauses,
    requested / active resumes (with a new handshake). If-Match honoured."""
    doc = await _own(request)
    if_match = parse_if_match(request.headers.get("If-Match"))
    spec = await _spec(request)
    webhooks = _webhooks(request)
    for _ in range(5):
        if if_match is not None and doc["version"] != if_match:
            raise FhirError(
                412,
                [
                    Issue(
                        "conflict",
                        f"If-Match asks for version {if_match}, current is {doc['version']}",
                    )
                ],
                code="version-mismatch",
            )
        updated = await webhooks.update(doc, spec, if_match)
        if updated is not None:
            headers = _headers(request, updated)
            del headers["Location"]
            return fhir_response(subs.render(updated), 200, headers)
        doc = await _own(request)
    raise FhirError(409, [Issue("conflict", "the subscription is changing concurrently; retry")])


async def delete(request: web.Request) -> web.Response:
    doc = await _own(request)
    await _webhooks(request).delete(doc)
    return web.Response(status=204)


async def search(request: web.Request) -> web.Response:
    tenant = provider_id(request)
    flt: dict[str, Any] = {"tenant": tenant}
    for name, value in request.query.items():
        if name not in SEARCH_PARAMS:
            raise FhirError(
                400,
                [Issue("not-supported", f"unknown search parameter {name!r} for Subscription")],
            )
        if name == "_id":
            flt["_id"] = {"$in": value.split(",")}
        elif name == "status":
            flt["status"] = {"$in": value.split(",")}
    docs = await request.app[SERVICES].store.find(c.SUBSCRIPTIONS, flt, sort=[("created", 1)])
    base = base_url(request)
    return fhir_response(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(docs),
            "link": [{"relation": "self", "url": str(request.url)}],
            "entry": [
                {
                    "fullUrl": f"{base}/fhir/Subscription/{d['_id']}",
                    "resource": subs.render(d),
                    "search": {"mode": "match"},
                }
                for d in docs
            ],
        }
    )


async def _status_bundle(request: web.Request, docs: list[Document]) -> web.Response:
    base = base_url(request)
    webhooks = _webhooks(request)
    entries = []
    for d in docs:
        params = subs.status_parameters(
            d, base=base, kind="query-status", events_since=await webhooks.events_count(d["_id"])
        )
        entries.append(
            {
                "fullUrl": f"urn:uuid:{params['id']}",
                "resource": params,
                "search": {"mode": "match"},
            }
        )
    return fhir_response(
        {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}
    )


async def status(request: web.Request) -> web.Response:
    """``$status`` (Backport IG): a searchset Bundle of status Parameters."""
    return await _status_bundle(request, [await _own(request)])


async def status_all(request: web.Request) -> web.Response:
    tenant = provider_id(request)
    flt: dict[str, Any] = {"tenant": tenant}
    ids = [i for v in request.query.getall("id", []) for i in v.split(",") if i]
    if ids:
        flt["_id"] = {"$in": ids}
    if "status" in request.query:
        flt["status"] = {"$in": request.query["status"].split(",")}
    docs = await request.app[SERVICES].store.find(c.SUBSCRIPTIONS, flt, sort=[("created", 1)])
    return await _status_bundle(request, docs)


def _number(value: Any, name: str) -> int:
    try:
        n = int(str(value))
    except ValueError as exc:
        raise FhirError(400, [Issue("value", f"{name} must be a whole number")]) from exc
    if n < 0:
        raise FhirError(400, [Issue("value", f"{name} must not be negative")])
    return n


async def events(request: web.Request) -> web.Response:
    """``$events``: kept events as a notification Bundle (type query-event)."""
    doc = await _own(request)
    q = request.query
    since = _number(q.get("eventsSinceNumber", "1"), "eventsSinceNumber")
    until = (
        _number(q["eventsUntilNumber"], "eventsUntilNumber") if "eventsUntilNumber" in q else None
    )
    content = q.get("content") or doc["content"]
    if content not in subs.CONTENTS:
        raise FhirError(400, [Issue("value", f"content is one of {', '.join(subs.CONTENTS)}")])
    webhooks = _webhooks(request)
    kept = await webhooks.kept_events(doc, since, until)
    resources = await webhooks.resources_of(kept) if content == "full-resource" else {}
    base = base_url(request)
    bundle = subs.notification_bundle(
        doc,
        base=base,
        kind="query-event",
        events_since=await webhooks.events_count(doc["_id"]),
        now=webhooks.clock.now(),
        events=kept,
        resources=resources,
        content=content,
    )
    if len(kept) == EVENTS_MAX:
        nxt = int(kept[-1]["number"]) + 1
        url = f"{base}/fhir/Subscription/{doc['_id']}/$events?eventsSinceNumber={nxt}"
        if until is not None:
            url += f"&eventsUntilNumber={until}"
        bundle["link"] = [{"relation": "next", "url": url}]
    return fhir_response(bundle)


async def _operation_params(request: web.Request) -> dict[str, str]:
    """Parameters of an operation from the query and/or a ``Parameters`` body."""
    params = {k: v for k, v in request.query.items()}
    if request.can_read_body:
        data = await read_body(request)
        if not isinstance(data, dict) or data.get("resourceType") != "Parameters":
            raise FhirError(400, [Issue("structure", "send a Parameters resource")])
        for p in data.get("parameter") or []:
            if not isinstance(p, dict) or "name" not in p:
                continue
            for key, value in p.items():
                if key.startswith("value"):
                    params[str(p["name"])] = str(value)
    return params


async def replay(request: web.Request) -> web.Response:
    """``$replay``: send kept events again, from ``eventsSinceNumber`` or ``since``."""
    doc = await _own(request)
    params = await _operation_params(request)
    if "eventsSinceNumber" not in params and "since" not in params:
        raise FhirError(
            400, [Issue("required", "give eventsSinceNumber (and eventsUntilNumber) or since")]
        )
    if doc["status"] == "off":
        raise FhirError(
            409,
            [Issue("conflict", "the subscription is off: PUT it with status requested first")],
        )
    since_number = (
        _number(params["eventsSinceNumber"], "eventsSinceNumber")
        if "eventsSinceNumber" in params
        else None
    )
    until_number = (
        _number(params["eventsUntilNumber"], "eventsUntilNumber")
        if "eventsUntilNumber" in params
        else None
    )
    try:
        since = parse_instant(params["since"]) if "since" in params else None
    except ValueError as exc:
        raise FhirError(400, [Issue("value", "since must be an instant with a time zone")]) from exc
    numbers = await _webhooks(request).replay(
        doc, since_number=since_number, until_number=until_number, since=since
    )
    parameter: list[dict[str, Any]] = [{"name": "replayed", "valueInteger": len(numbers)}]
    if numbers:
        parameter.append({"name": "eventsSinceNumber", "valueString": str(numbers[0])})
        parameter.append({"name": "eventsUntilNumber", "valueString": str(numbers[-1])})
    return fhir_response({"resourceType": "Parameters", "parameter": parameter})


async def deliveries(request: web.Request) -> web.Response:
    """``$deliveries``: the delivery log, newest first."""
    doc = await _own(request)
    q = request.query
    limit = min(_number(q.get("_count", "50"), "_count"), 500)
    number = _number(q["eventNumber"], "eventNumber") if "eventNumber" in q else None
    rows = await _webhooks(request).attempts(doc, limit=limit, number=number)
    return fhir_response(
        {"resourceType": "Parameters", "parameter": [attempt_parameter(a) for a in rows]}
    )


async def rotate_secret(request: web.Request) -> web.Response:
    """``$rotate-secret``: the new secret, and until when the previous one still signs."""
    doc = await _own(request)
    _, secret, until = await _webhooks(request).rotate_secret(doc)
    return fhir_response(
        {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "secret", "valueString": secret},
                {"name": "previous-secret-expires", "valueInstant": to_fhir(from_store(until))},
            ],
        },
        headers={"Cache-Control": "no-store"},
    )


def routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/fhir/Subscription", search)
    r.add_post("/fhir/Subscription", create)
    r.add_get("/fhir/Subscription/$status", status_all)
    r.add_get("/fhir/Subscription/{id}", read)
    r.add_put("/fhir/Subscription/{id}", update)
    r.add_delete("/fhir/Subscription/{id}", delete)
    r.add_get("/fhir/Subscription/{id}/$status", status)
    r.add_get("/fhir/Subscription/{id}/$events", events)
    r.add_post("/fhir/Subscription/{id}/$replay", replay)
    r.add_get("/fhir/Subscription/{id}/$deliveries", deliveries)
    r.add_post("/fhir/Subscription/{id}/$rotate-secret", rotate_secret)
