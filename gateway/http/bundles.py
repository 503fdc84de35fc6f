"""``POST /fhir``: transaction and batch Bundles, and the asynchronous request pattern.

Transaction: every entry is validated and mapped here (all problems reported
at once, with ``Bundle.entry[i]`` FHIRPaths); ``urn:uuid`` full URLs get ids
and references between entries are rewritten; then one ``fhir.write`` command
applies it all or nothing (``gateway.operations``). Batch: entries are
independent; each gets its own response.

``Prefer: respond-async`` answers 202 with ``Content-Location`` of
``/fhir/_async/{id}``; that URL answers 202 (with ``X-Progress``) until the
worker finished, then 200 with the response Bundle, or the error's status
with an OperationOutcome.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from aiohttp import web

from gateway import constants as c
from gateway import resources
from gateway.errors import FhirError, Issue
from gateway.events import command, new_id
from gateway.http.auth import provider_id
from gateway.http.fhir import (
    base_url,
    check_id,
    checked,
    mapped,
    new_resource_ids,
    op_head,
    parse_if_match,
    parse_if_none_exist,
    read_raw,
    send_and_wait,
)
from gateway.http.keys import BUNDLE_POOL, CORRELATION_ID, SERVICES
from gateway.http.responses import fhir_response
from gateway.timeutil import from_store, to_fhir, to_store
from mappings.references import rewrite_references
from mappings.validation import model_for, nesting, parse_json

log = structlog.get_logger("gateway.bundles")

# Bundles from this size on are validated in the pool (when there is one): smaller ones
# cost less inline than the trip to another process.
POOL_MIN_BYTES = 128 * 1024
REASON = {200: "200 OK", 201: "201 Created", 204: "204 No Content", 404: "404 Not Found"}
REQUEST_ELEMENTS = frozenset(("method", "url", "ifNoneExist", "ifMatch"))
URL_RE = re.compile(rf"^(?P<type>{'|'.join(resources.RESOURCE_TYPES)})(?:/(?P<id>[^/?]+))?$")


def status_text(status: int) -> str:
    return REASON.get(status, str(status))


def parse_entries(bundle: Any) -> tuple[str, list[dict[str, Any]]]:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise FhirError(
            400, [Issue("invalid", "POST /fhir takes a Bundle", ["Bundle.resourceType"])]
        )
    btype = bundle.get("type")
    if btype not in ("transaction", "batch"):
        raise FhirError(
            400,
            [Issue("value", "Bundle.type must be transaction or batch", ["Bundle.type"])],
        )
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise FhirError(400, [Issue("structure", "Bundle.entry must be a list", ["Bundle.entry"])])
    unknown = set(bundle) - {"resourceType", "type", "entry", "id", "meta", "timestamp"}
    if unknown:
        raise FhirError(
            400,
            [
                Issue("structure", f"unknown element {k!r}", [f"Bundle.{k}"])
                for k in sorted(unknown)
            ],
        )
    return btype, entries


def entry_request(i: int, entry: Any) -> tuple[str, str, str | None, dict[str, Any]]:
    """``(method, type, id, request)`` of one entry, or 400 with its FHIRPath."""
    if not isinstance(entry, dict):
        raise FhirError(
            400, [Issue("structure", "an entry must be an object", [f"Bundle.entry[{i}]"])]
        )
    req = entry.get("request")
    if not isinstance(req, dict):
        raise FhirError(
            400, [Issue("required", "entry.request is required", [f"Bundle.entry[{i}].request"])]
        )
    method = req.get("method")
    if not REQUEST_ELEMENTS.issuperset(req):
        unknown = sorted(set(req) - REQUEST_ELEMENTS)
        raise FhirError(
            400,
            [
                Issue(
                    "not-supported",
                    f"entry.request.{name} is not supported (method, url, ifNoneExist, ifMatch)",
                    [f"Bundle.entry[{i}].request.{name}"],
                )
                for name in unknown
            ],
        )
    if method not in ("POST", "PUT", "DELETE"):
        raise FhirError(
            400,
            [
                Issue(
                    "not-supported",
                    "entry.request.method must be POST, PUT or DELETE",
                    [f"Bundle.entry[{i}].request.method"],
                )
            ],
        )
    url = req.get("url")
    url = url.split("?")[0].strip("/") if isinstance(url, str) else ""
    m = URL_RE.match(url)
    if not m or (method == "POST") != (m.group("id") is None):
        raise FhirError(
            400,
            [
                Issue(
                    "value",
                    "entry.request.url must be Type (POST) or Type/id (PUT, DELETE) of "
                    f"{', '.join(resources.RESOURCE_TYPES)}",
                    [f"Bundle.entry[{i}].request.url"],
                )
            ],
        )
    rtype, rid = m.group("type", "id")
    if rid is not None:
        try:
            check_id(rid, rtype)
        except FhirError as err:
            err.issues[0].expression = [f"Bundle.entry[{i}].request.url"]
            raise
    full_url = entry.get("fullUrl")
    if full_url is not None and (not isinstance(full_url, str) or not full_url.strip()):
        raise FhirError(
            400,
            [
                Issue(
                    "value",
                    "entry.fullUrl must be a non-empty string",
                    [f"Bundle.entry[{i}].fullUrl"],
                )
            ],
        )
    return method, rtype, rid, req


def prepare_bundle(btype: str, entries: list[Any]) -> list[dict[str, Any] | FhirError]:
    """Ops for the worker; for a batch, per-entry errors are returned in place of ops."""
    parsed: list[tuple[str, str, str, dict[str, Any], Any, str | None]] = []
    issues: list[Issue] = []
    early: dict[int, FhirError] = {}
    renames: dict[str, str] = {}
    ids = new_resource_ids()
    for i, entry in enumerate(entries):
        try:
            method, rtype, rid, req = entry_request(i, entry)
        except FhirError as err:
            issues.extend(err.issues)
            early[i] = err
            parsed.append(("", "", "", {}, None, None))
            continue
        rid = rid or next(ids)
        full_url = entry.get("fullUrl")
        if full_url is not None:
            if full_url in renames:
                twice = FhirError(
                    400,
                    [
                        Issue(
                            "duplicate",
                            f"fullUrl {full_url!r} appears twice in the Bundle",
                            [f"Bundle.entry[{i}].fullUrl"],
                        )
                    ],
                )
                issues.extend(twice.issues)
                early[i] = twice
                parsed.append(("", "", "", {}, None, None))
                continue
            renames[full_url] = f"{rtype}/{rid}"
        parsed.append((method, rtype, rid, req, entry.get("resource"), full_url))
    # Then each step for every entry before the next: the request and the depth and
    # reference walk, the structural validation, the mapping. A Bundle's 500 Slots
    # validated in a row and then mapped in a row cost some 13 % less than entry by
    # entry (the processor's caches keep one step's code and data). An entry stops
    # at its first error as before; the issues keep the order of the entries.
    ops: list[dict[str, Any] | FhirError] = []
    checking: list[tuple[int, dict[str, Any], Any, str, bool]] = []
    for i, (method, rtype, rid, req, data, full_url) in enumerate(parsed):
        if i in early:
            ops.append(early[i])
            continue
        if method != "DELETE" and data is None:
            ops.append(
                FhirError(
                    400,
                    [
                        Issue(
                            "required",
                            "entry.resource is required",
                            [f"Bundle.entry[{i}].resource"],
                        )
                    ],
                )
            )
            continue
        shallow = False
        if btype == "transaction" and data is not None:
            # One walk for the depth limit and for references to other entries.
            deep, named = nesting(data, renames)
            shallow = not deep
            if named and shallow:  # one too deep is refused as it is
                data = rewrite_references(data, renames)
        if isinstance(data, dict) and method == "POST" and ("id" in data or "meta" in data):
            data = {k: v for k, v in data.items() if k not in ("id", "meta")}
        root = f"Bundle.entry[{i}].resource"
        if_match = req.get("ifMatch")
        if_none_exist = req.get("ifNoneExist") if method == "POST" else None
        try:
            if if_match is not None:
                if_match = parse_if_match(if_match, f"Bundle.entry[{i}].request.ifMatch")
            if if_none_exist is not None:
                if_none_exist = parse_if_none_exist(
                    if_none_exist, f"Bundle.entry[{i}].request.ifNoneExist"
                )
            op = op_head(method, rtype, rid, if_match, if_none_exist, full_url)
            if method != "DELETE":
                checking.append((i, op, data, root, shallow))
            ops.append(op)
        except FhirError as err:
            ops.append(err)
    mapping: list[tuple[int, dict[str, Any], dict[str, Any], str]] = []
    for i, op, data, root, shallow in checking:
        try:
            res = checked(op["method"], op["type"], op["id"], data, root=root, shallow=shallow)
        except FhirError as err:
            ops[i] = err
            continue
        mapping.append((i, op, res, root))
    for i, op, res, root in mapping:
        try:
            mapped(op, res, root)
        except FhirError as err:
            ops[i] = err
    for i, done in enumerate(ops):
        if isinstance(done, FhirError):
            if i not in early:
                issues.extend(done.issues)
        else:
            done["index"] = i
    if btype == "transaction" and issues:
        statuses = {op.status for op in ops if isinstance(op, FhirError)}
        raise FhirError(422 if statuses == {422} else 400, issues)
    return ops


def response_bundle(
    request: web.Request, btype: str, results: list[dict[str, Any]], representation: bool
) -> dict[str, Any]:
    base = base_url(request)
    entries = []
    modified: dict[str, str] = {}  # a transaction's entries share one time: formatted once
    for r in results:
        if "error" in r:
            err = FhirError.from_reply(r["error"])
            entries.append({"response": {"status": str(err.status), "outcome": err.outcome()}})
            continue
        response: dict[str, Any] = {"status": status_text(r["status"])}
        entry: dict[str, Any] = {"response": response}
        if r.get("version") is not None:
            response["location"] = f"{r['type']}/{r['id']}/_history/{r['version']}"
            response["etag"] = f'W/"{r["version"]}"'
            at = r["last_updated"]
            if at not in modified:
                modified[at] = to_fhir(from_store(at))
            response["lastModified"] = modified[at]
            entry["fullUrl"] = f"{base}/fhir/{r['type']}/{r['id']}"
            if representation and r.get("resource") is not None:
                entry["resource"] = r["resource"]
        entries.append(entry)
    return {"resourceType": "Bundle", "type": f"{btype}-response", "entry": entries}


def prepare_body(raw: bytes) -> tuple[str, list[dict[str, Any] | FhirError]]:
    """Parse and prepare a Bundle's bytes: its type and the ops (``prepare_bundle``)."""
    btype, entries = parse_entries(parse_json(raw))
    return btype, prepare_bundle(btype, entries)


def prepare_raw(raw: bytes) -> tuple[str, bytes, dict[int, dict[str, Any]], int] | dict[str, Any]:
    """``prepare_body`` in the validation process: ``(type, the good ops as JSON, the
    error reply of each failed batch entry by its index, the number of entries)``,
    or the reply of the error that refuses the whole Bundle. Pure, and its arguments
    and results pickle cheaply.

    The garbage collector is paused meanwhile: the parsed Bundle (some 40 containers
    an entry) lives until the end, and the collections that the models' allocations
    set off walked it again and again to find nothing (JSON has no cycles): some
    15 % of the call. It runs again afterwards, and finds whatever cycles formed.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        try:
            btype, ops = prepare_body(raw)
        except FhirError as err:
            return err.to_reply()["error"]
        good = [op for op in ops if isinstance(op, dict)]
        errors = {
            i: op.to_reply()["error"] for i, op in enumerate(ops) if isinstance(op, FhirError)
        }
        return btype, orjson.dumps(good), errors, len(ops)
    finally:
        if collecting:
            gc.enable()


@dataclass
class PreparedBundle:
    """A Bundle's entries, ready for the worker.

    ``ops_json``: the good ops as the validation process serialised them. They go
    into the ``fhir.write`` command as they are (``for_command``): parsing them
    here only to serialise them again for the bus cost the event loop ~5 % of a
    large transaction.
    """

    btype: str
    errors: dict[int, FhirError]  # refused entries of a batch, by index
    total: int
    good: list[dict[str, Any]] | None = None
    ops_json: bytes | None = None

    def for_command(self) -> list[dict[str, Any]] | orjson.Fragment:
        if self.good is not None:
            return self.good
        assert self.ops_json is not None
        return orjson.Fragment(self.ops_json)

    def ops(self) -> list[dict[str, Any] | FhirError]:
        """Every entry in Bundle order: its op, or its error."""
        good = self.good if self.good is not None else orjson.loads(self.ops_json or b"[]")
        it = iter(good)
        return [self.errors[i] if i in self.errors else next(it) for i in range(self.total)]


def warm_up() -> bool:
    """In a pool process: import the resource models a Bundle needs (most of a new
    process's first-Bundle cost, ~0.7 s of CPU), so the first vendor's Bundle does not
    wait for it."""
    for rtype in resources.RESOURCE_TYPES:
        model_for(rtype)
    return True


class BundlePool:
    """``BUNDLE_VALIDATION_PROCESSES`` processes that validate large Bundles off the loop.

    Structural validation (fhir.resources) and the mapping are pure CPU and most
    of the API's work on a big transaction: in another process they run on
    another core while this one applies the previous Bundle (with the embedded
    store, API and worker share one process). Started at the first large Bundle.
    """

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self.pool: ProcessPoolExecutor | None = None
        self.warming: asyncio.Future[list[bool]] | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self.pool is None:
            # spawn, not fork: this process has threads and an event loop
            self.pool = ProcessPoolExecutor(
                self.processes, mp_context=multiprocessing.get_context("spawn")
            )
        return self.pool

    def warm(self) -> None:
        """Start the processes now and load the models in them (``cer-gateway serve`` and
        ``api`` do it at start-up); without it they start at the first large Bundle."""
        if self.processes > 0 and self.warming is None:
            loop = asyncio.get_running_loop()
            warming = asyncio.gather(
                *(loop.run_in_executor(self._executor(), warm_up) for _ in range(self.processes))
            )
            warming.add_done_callback(_warmed)
            self.warming = warming

    async def prepare(self, raw: bytes) -> PreparedBundle:
        if self.processes <= 0 or len(raw) < POOL_MIN_BYTES:
            btype, ops = prepare_body(raw)
            return PreparedBundle(
                btype,
                {i: op for i, op in enumerate(ops) if isinstance(op, FhirError)},
                len(ops),
                good=[op for op in ops if isinstance(op, dict)],
            )
        loop = asyncio.get_running_loop()
        done = await loop.run_in_executor(self._executor(), prepare_raw, raw)
        if isinstance(done, dict):
            raise FhirError.from_reply(done)
        btype, ops_json, errors, total = done
        return PreparedBundle(
            btype,
            {i: FhirError.from_reply(e) for i, e in errors.items()},
            total,
            ops_json=ops_json,
        )

    def close(self) -> None:
        if self.warming is not None:
            self.warming.cancel()
            self.warming = None
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None


async def post_bundle(request: web.Request) -> web.Response:
    tenant = provider_id(request)
    services = request.app[SERVICES]
    prepared = await request.app[BUNDLE_POOL].prepare(await read_raw(request))
    btype, errors, total = prepared.btype, prepared.errors, prepared.total
    prefer = request.headers.get("Prefer", "").replace(" ", "").lower()
    representation = "return=representation" in prefer
    body: dict[str, Any] = {
        "mode": btype,
        "ops": prepared.for_command(),
        "representation": representation,
    }
    if "respond-async" in prefer:
        job_id = new_id()
        now = services.clock.now()
        await services.store.insert(
            c.JOBS,
            {
                "_id": job_id,
                "tenant": tenant,
                "created": to_store(now),
                "status": "in-progress",
                "total": total,
                "btype": btype,
                "representation": representation,
                "early_errors": {str(i): e.to_reply() for i, e in errors.items()},
            },
        )
        msg = command(
            "fhir.write",
            {**body, "job_id": job_id},
            tenant=tenant,
            correlation_id=request[CORRELATION_ID],
            now=now,
        )
        await services.bus.send(msg)
        services.metrics.published("command")
        return web.Response(
            status=202,
            headers={"Content-Location": f"{base_url(request)}/fhir/_async/{job_id}"},
        )
    results: list[dict[str, Any]] = []
    if len(errors) < total:
        reply = await send_and_wait(request, body, tenant)
        results = reply["results"]
    return fhir_response(
        response_bundle(request, btype, merge(results, errors, total), representation)
    )


def merge(
    results: list[dict[str, Any]], errors: dict[int, Any], total: int
) -> list[dict[str, Any]]:
    """Put the entries refused here back in their places among the worker's results."""
    out: list[dict[str, Any]] = []
    it = iter(results)
    for i in range(total):
        if i in errors:
            e = errors[i]
            out.append(e.to_reply() if isinstance(e, FhirError) else e)
        else:
            out.append(next(it))
    return out


async def job_status(request: web.Request) -> web.Response:
    tenant = provider_id(request)
    job = await request.app[SERVICES].store.get(c.JOBS, request.match_info["job"])
    if job is None or job["tenant"] != tenant:
        raise FhirError(404, [Issue("not-found", "no such asynchronous request")], code="not-found")
    if job["status"] == "in-progress":
        progress = f"{job.get('done', 0)} of {job['total']} entries applied"
        return web.Response(status=202, headers={"X-Progress": progress, "Retry-After": "1"})
    reply = job["reply"]
    if "error" in reply:
        err = FhirError.from_reply(reply["error"])
        return fhir_response(err.outcome(), err.status)
    early = {int(k): v for k, v in job.get("early_errors", {}).items()}
    results = merge(reply["results"], early, job["total"])
    return fhir_response(response_bundle(request, job["btype"], results, job["representation"]))


async def cancel_job(request: web.Request) -> web.Response:
    """``DELETE`` of a status URL: forget a finished job (a running one finishes anyway)."""
    tenant = provider_id(request)
    store = request.app[SERVICES].store
    job = await store.get(c.JOBS, request.match_info["job"])
    if job is None or job["tenant"] != tenant:
        raise FhirError(404, [Issue("not-found", "no such asynchronous request")], code="not-found")
    if job["status"] == "in-progress":
        raise FhirError(409, [Issue("conflict", "the request is still running")])
    await store.delete_one(c.JOBS, {"_id": job["_id"]})
    return web.Response(status=202)


def _warmed(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        # the first large Bundle starts them again, and says why if it cannot
        log.warning("bundles.warm_up_failed", error=repr(fut.exception()))


async def warm_pool(app: web.Application) -> None:
    """For ``app.on_startup``: the Bundle validation processes start with the server."""
    app[BUNDLE_POOL].warm()


def routes(app: web.Application, validation_processes: int = 0) -> None:
    app[BUNDLE_POOL] = BundlePool(validation_processes)

    async def close_pool(app: web.Application) -> None:
        app[BUNDLE_POOL].close()

    app.on_cleanup.append(close_pool)
    app.router.add_post("/fhir", post_bundle)
    app.router.add_get("/fhir/_async/{job}", job_status)
    app.router.add_delete("/fhir/_async/{job}", cancel_job)
