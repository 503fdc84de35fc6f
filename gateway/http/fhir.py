"""FHIR R4 REST for providers: ``/fhir``.

Reads and searches come from the store; writes are ``fhir.write`` commands sent
through the bus to the workers, and the API awaits their outcome so ordinary
FHIR clients get ordinary answers (201 + Location + ETag, 409, 412, 422).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from gateway import constants as c
from gateway import resources, search, waiting_fhir
from gateway.errors import FhirError, Issue
from gateway.events import command, new_id
from gateway.http.auth import provider_id
from gateway.http.keys import CORRELATION_ID, SERVICES
from gateway.http.responses import fhir_response
from gateway.operations import central_of
from gateway.ports import RequestTimeout
from gateway.timeutil import from_store, to_fhir
from mappings.validation import parse_json, validate_resource

ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
FHIR_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")
TYPES = "|".join(resources.RESOURCE_TYPES)


def check_id(rid: str, rtype: str) -> str:
    if not ID_RE.match(rid):
        raise FhirError(
            400, [Issue("value", "a resource id is 1-64 of A-Z a-z 0-9 - .", [f"{rtype}.id"])]
        )
    return rid


def new_resource_id() -> str:
    """A created resource's id: a random UUID's 32 hex digits (``events.new_id``)."""
    return new_id()


def new_resource_ids() -> Iterator[str]:
    """``new_resource_id`` s for one Bundle's creates."""
    while True:
        yield new_id()


async def read_body(request: web.Request) -> Any:
    return parse_json(await read_raw(request))


async def read_raw(request: web.Request) -> bytes:
    """The body's bytes, once its content type and size are acceptable."""
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
    return body


def parse_if_match(value: Any, where: str | None = None) -> int | None:
    """``W/"3"`` (or ``"3"``) -> 3; anything else is 400 (at ``where`` inside a Bundle)."""
    if value is None:
        return None
    m = re.fullmatch(r'\s*(?:W/)?"(\d{1,18})"\s*', value) if isinstance(value, str) else None
    if not m:
        raise FhirError(
            400, [Issue("value", 'If-Match must look like W/"3"', [where] if where else [])]
        )
    return int(m.group(1))


IF_NONE_EXIST_PARAMS = ("identifier", "_id")


def parse_if_none_exist(value: Any, where: str | None = None) -> str | None:
    """Check an ``If-None-Exist`` query (``identifier=system|value`` or ``_id=x``).

    Checked here so that a mistake is a 400 at once, with its FHIRPath inside a
    Bundle; the worker runs the query.
    """
    if value is None:
        return None
    query = value.strip().lstrip("?") if isinstance(value, str) else ""
    if query and "&" not in query and "%" not in query and "+" not in query:
        # One parameter without escapes (a vendor's Bundle of 500 slots is 500
        # conditional creates): the checks below of that one, when it passes them.
        name, _, val = query.partition("=")
        if name in IF_NONE_EXIST_PARAMS:
            system, sep, code = val.partition("|")
            if (code if sep else system).strip():
                return query
    expr = [where] if where else []
    if "%" in query or "+" in query:
        params = parse_qsl(query, keep_blank_values=True)
    else:
        # What parse_qsl gives for a query without escapes (a vendor's bundle of 500
        # slots is 500 conditional creates): a tenth of the cost.
        params = [(name, val) for name, _, val in (f.partition("=") for f in query.split("&") if f)]
    if not params:
        raise FhirError(400, [Issue("value", "If-None-Exist must be a search query", expr)])
    for name, val in params:
        if name not in IF_NONE_EXIST_PARAMS:
            raise FhirError(
                400,
                [
                    Issue(
                        "not-supported",
                        f"If-None-Exist supports {' and '.join(IF_NONE_EXIST_PARAMS)}, "
                        f"not {name!r}",
                        expr,
                    )
                ],
            )
        system, sep, code = val.partition("|")
        if not (code if sep else system).strip():
            raise FhirError(400, [Issue("value", f"If-None-Exist: {name} has no value", expr)])
    return query


def http_date(stored: str) -> str:
    return from_store(stored).strftime("%a, %d %b %Y %H:%M:%S GMT")


def base_url(request: web.Request) -> str:
    configured = request.app[SERVICES].settings.public_base_url.rstrip("/")
    return configured or str(request.url.origin())


def reroot(issues: list[Issue], rtype: str, root: str) -> list[Issue]:
    """``Slot.end`` -> ``Bundle.entry[3].resource.end`` for issues inside a Bundle."""
    for issue in issues:
        issue.expression = [
            root + e[len(rtype) :] if e == rtype or e.startswith(rtype + ".") else e
            for e in issue.expression
        ]
    return issues


def prepare(
    method: str,
    rtype: str,
    rid: str,
    data: Any,
    *,
    if_match: int | None = None,
    if_none_exist: str | None = None,
    root: str | None = None,
    full_url: str | None = None,
    shallow: bool = False,
) -> dict[str, Any]:
    """Validate and map one write for the worker; raises 400/422 with FHIRPaths.

    ``shallow``: ``data`` is known to be within the depth limit (``validate_resource``).
    In two halves, ``checked`` and ``mapped``, for a Bundle that does each for all
    its entries in turn (``bundles.prepare_bundle``).
    """
    op = op_head(method, rtype, rid, if_match, if_none_exist, full_url)
    if method == "DELETE":
        return op
    return mapped(op, checked(method, rtype, rid, data, root=root, shallow=shallow), root)


def op_head(
    method: str,
    rtype: str,
    rid: str,
    if_match: int | None,
    if_none_exist: str | None,
    full_url: str | None,
) -> dict[str, Any]:
    """What a write's op says before its resource: ``prepare`` adds the rest (``mapped``)."""
    return {
        "method": method,
        "type": rtype,
        "id": rid,
        "if_match": if_match,
        "if_none_exist": if_none_exist,
        "full_url": full_url,
    }


def checked(
    method: str, rtype: str, rid: str, data: Any, *, root: str | None = None, shallow: bool = False
) -> dict[str, Any]:
    """``prepare``'s first half: ``data`` structurally valid (or 400), with ``rid`` for id."""
    res = validate_resource(data, rtype, path=root, shallow=shallow)
    if method == "PUT" and res.get("id") not in (None, rid):
        raise FhirError(
            400,
            [
                Issue(
                    "invalid",
                    "the id in the body differs from the id in the URL",
                    [f"{root or rtype}.id"],
                )
            ],
        )
    return {**res, "id": rid}


def mapped(op: dict[str, Any], res: dict[str, Any], root: str | None = None) -> dict[str, Any]:
    """``prepare``'s second half: ``op`` with the central model of ``checked`` ``res`` (or 422)
    and ``res`` itself."""
    rtype = op["type"]
    try:
        op["central"] = central_of(rtype, res)
    except FhirError as err:
        if root:
            reroot(err.issues, rtype, root)
        raise
    op["resource"] = res
    return op


async def send_and_wait(
    request: web.Request,
    body: dict[str, Any],
    tenant: str,
) -> dict[str, Any]:
    services = request.app[SERVICES]
    msg = command(
        "fhir.write",
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


def write_response(request: web.Request, result: dict[str, Any]) -> web.Response:
    rtype, rid, version = result["type"], result["id"], result["version"]
    headers = {
        "ETag": f'W/"{version}"',
        "Location": f"{base_url(request)}/fhir/{rtype}/{rid}/_history/{version}",
        "Last-Modified": http_date(result["last_updated"]),
    }
    if request.headers.get("Prefer", "").replace(" ", "") == "return=minimal":
        return web.Response(status=result["status"], headers=headers)
    return fhir_response(result["resource"], result["status"], headers)


async def single_write(request: web.Request, op: dict[str, Any], tenant: str) -> dict[str, Any]:
    reply = await send_and_wait(request, {"mode": "single", "ops": [op]}, tenant)
    result: dict[str, Any] = reply["results"][0]
    return result


async def create(request: web.Request) -> web.Response:
    """``POST /fhir/{type}``: create with a server id; ``If-None-Exist`` makes it conditional."""
    tenant = provider_id(request)
    rtype = request.match_info["type"]
    data = await read_body(request)
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in ("id", "meta")}
    op = prepare(
        "POST",
        rtype,
        new_resource_id(),
        data,
        if_none_exist=parse_if_none_exist(request.headers.get("If-None-Exist")),
    )
    return write_response(request, await single_write(request, op, tenant))


async def update(request: web.Request) -> web.Response:
    """``PUT /fhir/{type}/{id}``: update, or create with the client's id; honours If-Match."""
    tenant = provider_id(request)
    rtype = request.match_info["type"]
    rid = check_id(request.match_info["id"], rtype)
    data = await read_body(request)
    op = prepare("PUT", rtype, rid, data, if_match=parse_if_match(request.headers.get("If-Match")))
    return write_response(request, await single_write(request, op, tenant))


async def delete(request: web.Request) -> web.Response:
    tenant = provider_id(request)
    rtype = request.match_info["type"]
    rid = check_id(request.match_info["id"], rtype)
    doc = await request.app[SERVICES].store.get(c.RESOURCES, resources.doc_id(tenant, rtype, rid))
    if doc is None:
        raise FhirError(404, [Issue("not-found", f"{rtype}/{rid} not found")], code="not-found")
    op = prepare(
        "DELETE", rtype, rid, None, if_match=parse_if_match(request.headers.get("If-Match"))
    )
    await single_write(request, op, tenant)
    return web.Response(status=204)


async def read(request: web.Request) -> web.Response:
    tenant = provider_id(request)
    rtype = request.match_info["type"]
    rid = check_id(request.match_info["id"], rtype)
    doc = await resources.read(request.app[SERVICES].store, tenant, rtype, rid)
    etag = f'W/"{doc["version"]}"'
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag})
    return fhir_response(
        doc["resource"], 200, {"ETag": etag, "Last-Modified": http_date(doc["last_updated"])}
    )


async def vread(request: web.Request) -> web.Response:
    tenant = provider_id(request)
    rtype = request.match_info["type"]
    rid = check_id(request.match_info["id"], rtype)
    try:
        version = int(request.match_info["vid"])
    except ValueError as exc:
        raise FhirError(400, [Issue("value", "a version id is a number")]) from exc
    doc = await resources.read_version(request.app[SERVICES].store, tenant, rtype, rid, version)
    if doc.get("deleted"):
        raise FhirError(
            410, [Issue("deleted", f"version {version} of {rtype}/{rid} is a deletion")]
        )
    return fhir_response(
        doc["resource"],
        200,
        {"ETag": f'W/"{version}"', "Last-Modified": http_date(doc["last_updated"])},
    )


async def history(request: web.Request) -> web.Response:
    """``GET /fhir/{type}/{id}/_history``: every version (the current one and those in
    the history), newest first."""
    tenant = provider_id(request)
    rtype = request.match_info["type"]
    rid = check_id(request.match_info["id"], rtype)
    docs = await resources.versions(
        request.app[SERVICES].store, tenant, rtype, rid, limit=search.MAX_COUNT
    )
    if not docs:
        raise FhirError(404, [Issue("not-found", f"{rtype}/{rid} not found")], code="not-found")
    base = base_url(request)
    entries = []
    for d in docs:
        entry: dict[str, Any] = {
            "fullUrl": f"{base}/fhir/{rtype}/{rid}",
            "request": {"method": "DELETE" if d["deleted"] else "PUT", "url": f"{rtype}/{rid}"},
            "response": {
                "status": "200",
                "etag": f'W/"{d["version"]}"',
                "lastModified": to_fhir(from_store(d["last_updated"])),
            },
        }
        if not d["deleted"]:
            entry["resource"] = d["resource"]
        entries.append(entry)
    return fhir_response(
        {"resourceType": "Bundle", "type": "history", "total": len(entries), "entry": entries}
    )


async def search_type(request: web.Request) -> web.Response:
    """``GET /fhir/{type}?...``: searchset Bundle, paged with ``_count`` and ``next`` links."""
    tenant = provider_id(request)
    rtype = request.match_info["type"]
    query = search.parse(rtype, tenant, list(request.query.items()))
    services = request.app[SERVICES]
    store = services.store
    patient = rtype == "Appointment" and waiting_fhir.names_patient(query.filter)
    if patient:
        # The patient's waiting-room entries too (R-WAIT-5), and an audit record.
        query.filter = waiting_fhir.with_waitlist(query.filter, tenant)
    total = await store.count(c.RESOURCES, query.filter)
    docs = (
        await store.find(
            c.RESOURCES, query.filter, sort=query.sort, skip=query.offset, limit=query.count
        )
        if query.count
        else []
    )
    rendered: dict[str, dict[str, Any]] = {}
    if patient:
        now = services.clock.now()
        for d in docs:
            if waiting_fhir.is_entry(d):
                estimator = services.waiting.estimator if services.waiting else None
                rendered[d["_id"]] = await waiting_fhir.render_entry(store, estimator, d, now)
        await waiting_fhir.audit(
            store,
            now=now,
            tenant=tenant,
            pesel=query.filter.get("central.patient_pesel"),
            entries=[d["rid"] for d in docs if waiting_fhir.is_entry(d)],
            correlation_id=request[CORRELATION_ID],
        )
    base = base_url(request)
    self_url = f"{base}/fhir/{rtype}"
    params = [(k, v) for k, v in request.query.items() if k not in ("_offset",)]

    def page(offset: int) -> str:
        from urllib.parse import urlencode

        return f"{self_url}?{urlencode([*params, ('_offset', str(offset))])}"

    links = [{"relation": "self", "url": page(query.offset)}]
    if query.count and query.offset + query.count < total:
        links.append({"relation": "next", "url": page(query.offset + query.count)})
    if query.offset > 0:
        links.append(
            {"relation": "previous", "url": page(max(0, query.offset - max(query.count, 1)))}
        )
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": [
            {
                "fullUrl": f"urn:uuid:{d['rid']}"
                if d["_id"] in rendered
                else f"{self_url}/{d['rid']}",
                "resource": rendered.get(d["_id"], d["resource"]),
                "search": {"mode": "match"},
            }
            for d in docs
        ],
    }
    return fhir_response(bundle)


def routes(app: web.Application) -> None:
    r = app.router
    r.add_get(f"/fhir/{{type:{TYPES}}}", search_type)
    r.add_post(f"/fhir/{{type:{TYPES}}}", create)
    r.add_get(f"/fhir/{{type:{TYPES}}}/{{id}}", read)
    r.add_put(f"/fhir/{{type:{TYPES}}}/{{id}}", update)
    r.add_delete(f"/fhir/{{type:{TYPES}}}/{{id}}", delete)
    r.add_get(f"/fhir/{{type:{TYPES}}}/{{id}}/_history", history)
    r.add_get(f"/fhir/{{type:{TYPES}}}/{{id}}/_history/{{vid}}", vread)
