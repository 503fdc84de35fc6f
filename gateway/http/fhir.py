"""FHIR R4 REST for providers: ``/fhir``. Reads come from the store; writes are
commands sent through the bus to the workers, and the API awaits their outcome."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from gateway import resources
from gateway.errors import FhirError, Issue
from gateway.events import command
from gateway.http.auth import provider_id
from gateway.http.keys import CORRELATION_ID, SERVICES
from gateway.http.responses import fhir_response
from gateway.ports import RequestTimeout
from mappings import location as location_map
from mappings.validation import parse_json, validate_resource

ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
FHIR_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")


def check_id(rid: str, rtype: str) -> str:
    if not ID_RE.match(rid):
        raise FhirError(
            400, [Issue("value", "a resource id is 1-64 of A-Z a-z 0-9 - .", [f"{rtype}.id"])]
        )
    return rid


async def read_body(request: web.Request) -> Any:
    if request.content_type not in FHIR_TYPES:
        raise FhirError(
            415,
            [Issue("not-supported", "send Content-Type: application/fhir+json")],
            code="unsupported-media-type",
        )
    limit = request.app[SERVICES].settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise FhirError(413, [Issue("too-costly", f"the body exceeds {limit} bytes")])
    body = await request.read()
    if len(body) > limit:
        raise FhirError(413, [Issue("too-costly", f"the body exceeds {limit} bytes")])
    return parse_json(body)


def parse_if_match(value: str | None) -> int | None:
    if value is None:
        return None
    m = re.fullmatch(r'\s*(?:W/)?"(\d+)"\s*', value)
    if not m:
        raise FhirError(400, [Issue("value", 'If-Match must look like W/"3"')])
    return int(m.group(1))


def resource_headers(
    request: web.Request, rtype: str, rid: str, version: int, last_updated: str
) -> dict[str, str]:
    base = str(request.url.origin())
    return {
        "ETag": f'W/"{version}"',
        "Location": f"{base}/fhir/{rtype}/{rid}/_history/{version}",
        "Last-Modified": last_updated,
    }


async def send_and_wait(
    request: web.Request, type_: str, body: dict[str, Any], tenant: str
) -> dict[str, Any]:
    services = request.app[SERVICES]
    msg = command(
        type_,
        body,
        tenant=tenant,
        correlation_id=request[CORRELATION_ID],
        now=services.clock.now(),
    )
    services.metrics.published("command")
    try:
        reply = await services.bus.request(msg, services.settings.command_timeout_seconds)
    except RequestTimeout as exc:
        raise FhirError(
            503,
            [
                Issue(
                    "timeout",
                    "the change is queued but was not applied in time; "
                    "read the resource again later",
                )
            ],
            code="timeout",
        ) from exc
    if "error" in reply:
        raise FhirError.from_reply(reply["error"])
    return reply


def central_for(rtype: str, res: dict[str, Any]) -> dict[str, Any]:
    if rtype == "Location":
        return location_map.to_central(res).model_dump()
    return {}


async def update(request: web.Request) -> web.Response:
    """``PUT /fhir/{type}/{id}``: update, or create with the client's id."""
    tenant = provider_id(request)
    rtype = request.match_info["type"]
    rid = check_id(request.match_info["id"], rtype)
    data = await read_body(request)
    res = validate_resource(data, rtype)
    if res.get("id") not in (None, rid):
        raise FhirError(
            400,
            [
                Issue(
                    "invalid", "the id in the body differs from the id in the URL", [f"{rtype}.id"]
                )
            ],
        )
    reply = await send_and_wait(
        request,
        "resource.put",
        {
            "type": rtype,
            "id": rid,
            "resource": res,
            "central": central_for(rtype, res),
            "if_match": parse_if_match(request.headers.get("If-Match")),
        },
        tenant,
    )
    headers = resource_headers(request, rtype, rid, reply["version"], reply["last_updated"])
    return fhir_response(reply["resource"], reply["status"], headers)


async def read(request: web.Request) -> web.Response:
    tenant = provider_id(request)
    rtype = request.match_info["type"]
    rid = check_id(request.match_info["id"], rtype)
    doc = await resources.read(request.app[SERVICES].store, tenant, rtype, rid)
    etag = f'W/"{doc["version"]}"'
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag})
    return fhir_response(doc["resource"], 200, {"ETag": etag, "Last-Modified": doc["last_updated"]})


def routes(app: web.Application) -> None:
    types = "|".join(resources.RESOURCE_TYPES)
    app.router.add_put(f"/fhir/{{type:{types}}}/{{id}}", update)
    app.router.add_get(f"/fhir/{{type:{types}}}/{{id}}", read)
