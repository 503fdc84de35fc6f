"""The initial import over HTTP (R-SCHED-5): an asynchronous bulk job fed chunk by chunk.

- ``POST /fhir/$import`` starts a job for the signed-in provider: 202 with
  ``Content-Location`` of its status URL ``/fhir/_import/{job}``. From now on
  the provider's schedule is frozen (``gateway.imports``).
- ``POST /fhir/_import/{job}?seq=&file=&file_index=&format=&first=`` sends one
  chunk: ``application/fhir+ndjson``, one resource per line (``format=ndjson``)
  or one Bundle entry per line (``format=bundle``: ``{"fullUrl", "resource"}``);
  ``first`` is the position of the body's first line in its file (line number,
  or entry index). The resources are validated and mapped here exactly as the
  FHIR API does (``gateway.http.fhir.prepare``); the chunk is applied as one
  ``import.chunk`` command in the provider's partition; the answer (200) gives
  the chunk's counts and the job's totals and checkpoint.
- ``GET /fhir/_import/{job}``: the status (202 with ``X-Progress`` while
  running, 200 once ended), with counts per file and the checkpoint.
- ``GET /fhir/_import/{job}/errors``: the error file, NDJSON of one
  OperationOutcome per rejected resource (file, line or entry, resource).
- ``POST /fhir/_import/{job}/$complete`` ends it; ``DELETE`` cancels it
  (what was applied stays). Either ends the freeze.

How a resource gets its id, so that running an import twice finds the same
resources: its own ``id`` (the vendor's); else the resource already holding its
first business identifier; else an id derived from that identifier (UUID v5);
else, in a Bundle, the ``urn:uuid`` of its ``fullUrl``. ``urn:uuid`` references
are rewritten to those ids (across chunks too: a target found by identifier is
remembered in the job as an alias).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from gateway import constants as c
from gateway import imports, resources
from gateway.errors import FhirError, Issue
from gateway.events import command
from gateway.http.auth import provider_id
from gateway.http.fhir import ID_RE, base_url, prepare
from gateway.http.keys import CORRELATION_ID, IMPORT_POOL, IMPORT_TURNS, SERVICES
from gateway.http.responses import json_response
from gateway.ports import RequestTimeout
from mappings.references import URN_UUID
from mappings.validation import too_deep

NDJSON_TYPES = ("application/fhir+ndjson", "application/x-ndjson", "application/ndjson")
# A reference to a urn:uuid entry not seen yet: its type from the element naming it.
REFERENCE_TARGET = {
    "actor": "Location",
    "location": "Location",
    "schedule": "Schedule",
    "slot": "Slot",
}
CHUNK_TIMEOUT_FLOOR = 120.0  # seconds a chunk may take in the worker at least
TURN_WAIT = 60.0  # seconds a chunk waits for the one before it to be sent


@dataclass
class Turnstile:
    """Chunks of one job go to the bus in their order, while the next ones are validated.

    The client keeps a few chunks in flight so that validating chunk n+1 here
    overlaps applying chunk n in the worker; the bus keeps a provider's order,
    so sending in ``seq`` order is enough. The worker checks the order anyway
    (several API processes, a lost chunk): this only avoids needless refusals.
    """

    last_sent: dict[str, int] = field(default_factory=dict)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def wait(self, job: str, seq: int, applied: int) -> None:
        async with self.changed:
            self.last_sent.setdefault(job, applied)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.changed.wait_for(lambda: self.last_sent.get(job, 0) >= seq - 1),
                    TURN_WAIT,
                )

    async def done(self, job: str, seq: int) -> None:
        async with self.changed:
            self.last_sent[job] = max(self.last_sent.get(job, 0), seq)
            self.changed.notify_all()

    def forget(self, job: str) -> None:
        self.last_sent.pop(job, None)


# (position in the chunk, type, id, resource, FHIRPath root) of a resource to prepare
ToPrepare = tuple[int, str, str, dict[str, Any], str | None]


@dataclass
class PreparedChunk:
    """The import writes of a chunk's resources, and the error reply of each refused one
    by its position. ``ops_json``: the writes as the validation process serialised
    them, sent on in the ``import.chunk`` command as they are (``Built.for_command``):
    unpickling them here only to serialise them again cost the event loop ~16 us a
    resource."""

    errors: list[tuple[int, dict[str, Any]]]
    ops: list[dict[str, Any]] | None = None
    ops_json: bytes | None = None


def prepare_ops(items: list[ToPrepare]) -> tuple[list[dict[str, Any]], list[tuple[int, Any]]]:
    """Validate and map resources for import writes (``prepare``, as the FHIR API does);
    an Appointment that declares no booking channel gets ``import``. Pure."""
    ops: list[dict[str, Any]] = []
    errors: list[tuple[int, Any]] = []
    for index, rtype, rid, resource, root in items:
        try:
            op = prepare("PUT", rtype, rid, resource, root=root)
        except FhirError as err:
            errors.append((index, err.to_reply()["error"]))
            continue
        if rtype == "Appointment" and not _has_channel(resource):
            op["central"]["channel"] = "import"  # booked outside CeR, brought in by the import
        op["index"] = index
        ops.append(op)
    return ops, errors


def prepare_many(items: list[ToPrepare]) -> PreparedChunk:
    """``prepare_ops`` in this process: the writes as dicts."""
    ops, errors = prepare_ops(items)
    return PreparedChunk(errors, ops=ops)


def prepare_many_json(items: list[ToPrepare]) -> PreparedChunk:
    """``prepare_ops`` in the validation process: the writes as JSON."""
    ops, errors = prepare_ops(items)
    return PreparedChunk(errors, ops_json=orjson.dumps(ops))


class ValidationPool:
    """``IMPORT_VALIDATION_PROCESSES`` processes that validate chunks off the event loop.

    Structural validation (fhir.resources) is most of the API's work on an import
    and it is pure CPU: in its own process it runs on another core while this
    process applies the previous chunk (with the embedded store, API and worker
    share one process). 0 processes: inline. Started at the first chunk.
    """

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self.pool: ProcessPoolExecutor | None = None

    async def run(self, items: list[ToPrepare]) -> PreparedChunk:
        if self.processes <= 0 or not items:
            return prepare_many(items)
        if self.pool is None:
            # spawn, not fork: this process has threads and an event loop
            self.pool = ProcessPoolExecutor(
                self.processes, mp_context=multiprocessing.get_context("spawn")
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, prepare_many_json, items)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None


def status_url(request: web.Request) -> str:
    return f"{base_url(request)}/fhir/_import/{{job}}"


async def start(request: web.Request) -> web.Response:
    """``POST /fhir/$import``: a new job (optional JSON body ``{"label": "..."}``)."""
    tenant = provider_id(request)
    services = request.app[SERVICES]
    label = ""
    if request.can_read_body:
        raw = await request.read()
        if raw.strip():
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise FhirError(400, [Issue("structure", f"the body is not JSON: {exc}")]) from exc
            if not isinstance(body, dict) or not isinstance(body.get("label", ""), str):
                raise FhirError(400, [Issue("value", 'the body is {"label": "<text>"}')])
            label = body.get("label", "")
    job = await imports.start_job(
        services.store,
        now=services.clock.now(),
        tenant=tenant,
        status_url=status_url(request),
        stale_seconds=services.settings.import_stale_seconds,
        label=label,
    )
    return json_response(
        imports.status_body(job), 202, headers={"Content-Location": job["status_url"]}
    )


async def status(request: web.Request) -> web.Response:
    tenant = provider_id(request)
    services = request.app[SERVICES]
    job = await imports.current(
        services.store, request.match_info["job"], tenant, services.clock.now()
    )
    body = imports.status_body(job)
    if job["status"] == imports.RUNNING:
        n = body["counts"]
        progress = (
            f"{n['read']} read, {n['created']} created, {n['updated']} updated, "
            f"{n['unchanged']} unchanged, {n['rejected']} rejected"
        )
        return json_response(body, 202, headers={"X-Progress": progress, "Retry-After": "2"})
    return json_response(body)


async def complete(request: web.Request) -> web.Response:
    """``POST .../$complete``: the client sent everything; the freeze ends."""
    return await _end(request, "completed", "all chunks sent")


async def cancel(request: web.Request) -> web.Response:
    """``DELETE`` of the status URL: stop the import; what was applied stays."""
    return await _end(request, "cancelled", "cancelled by the provider")


async def _end(request: web.Request, status_: str, reason: str) -> web.Response:
    tenant = provider_id(request)
    services = request.app[SERVICES]
    now = services.clock.now()
    job = await imports.current(services.store, request.match_info["job"], tenant, now)
    done = await imports.end_job(services.store, job, now, status_, reason)
    request.app[IMPORT_TURNS].forget(job["_id"])
    return json_response(imports.status_body(done))


async def errors(request: web.Request) -> web.StreamResponse:
    """The error file: NDJSON, one OperationOutcome per rejected resource, in file order."""
    tenant = provider_id(request)
    services = request.app[SERVICES]
    job = await imports.current(
        services.store, request.match_info["job"], tenant, services.clock.now()
    )
    response = web.StreamResponse(headers={"Content-Type": "application/fhir+ndjson"})
    await response.prepare(request)
    after = -1
    while True:
        page = await services.store.find(
            c.IMPORT_ERRORS,
            {"job": job["_id"], "order": {"$gt": after}},
            sort=[("order", 1)],
            limit=1000,
        )
        if not page:
            break
        await response.write(b"".join(orjson.dumps(d["outcome"]) + b"\n" for d in page))
        after = page[-1]["order"]
    await response.write_eof()
    return response


# --------------------------------------------------------------------------- chunks


def _int_param(request: web.Request, name: str, minimum: int) -> int:
    raw = request.query.get(name)
    try:
        value = int(raw) if raw is not None else None
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise FhirError(
            400, [Issue("value", f"query parameter {name} must be an integer >= {minimum}")]
        )
    return value


async def chunk(request: web.Request) -> web.Response:
    tenant = provider_id(request)
    services = request.app[SERVICES]
    job_id = request.match_info["job"]
    seq = _int_param(request, "seq", 1)
    file_index = _int_param(request, "file_index", 0)
    first = _int_param(request, "first", 0)
    fmt = request.query.get("format", "ndjson")
    if fmt not in ("ndjson", "bundle"):
        raise FhirError(400, [Issue("value", "format is ndjson or bundle")])
    name = request.query.get("file") or f"file-{file_index}"
    if request.content_type not in NDJSON_TYPES:
        raise FhirError(
            415,
            [Issue("not-supported", "send Content-Type: application/fhir+ndjson")],
            code="unsupported-media-type",
        )
    limit = services.settings.max_body_bytes
    body = await request.read()
    if len(body) > limit:
        raise FhirError(413, [Issue("too-costly", f"a chunk may not exceed {limit} bytes")])
    now = services.clock.now()
    job = await imports.current(services.store, job_id, tenant, now)
    if job["status"] in ("completed", "cancelled"):
        raise FhirError(
            409,
            [Issue("conflict", f"the import is {job['status']}; start a new one")],
            code="import-ended",
        )
    lines = body.split(b"\n")
    built = await build_ops(
        services.store, tenant, job, lines, first, fmt, request.app[IMPORT_POOL].run
    )
    if built.aliases:
        await services.store.update_one(
            c.IMPORT_JOBS,
            {"_id": job_id},
            {"$set": {f"aliases.{k}": v for k, v in built.aliases.items()}},
        )
    last = first + max(len(lines) - 1, 0)
    if lines and not lines[-1].strip():
        last -= 1  # the body's final newline ends a line; it is not one
    msg = command(
        "import.chunk",
        {
            "job": job_id,
            "seq": seq,
            "file": {"key": f"f{file_index}", "name": name[:300], "format": fmt},
            "last": max(last, first),
            "positions": built.positions,
            "ops": built.for_command(),
            "rejected": built.rejected,
        },
        tenant=tenant,
        correlation_id=request[CORRELATION_ID],
        now=now,
    )
    turns = request.app[IMPORT_TURNS]
    await turns.wait(job_id, seq, int(job["last_seq"]))
    services.metrics.published("command")
    timeout = max(services.settings.command_timeout_seconds, CHUNK_TIMEOUT_FLOOR)
    try:
        reply = await services.bus.request(msg, timeout)
    except RequestTimeout as exc:
        raise FhirError(
            503,
            [Issue("timeout", "the chunk is queued but not applied yet; send it again")],
            code="timeout",
        ) from exc
    finally:
        await turns.done(job_id, seq)
    if "error" in reply:
        raise FhirError.from_reply(reply["error"])
    return json_response(reply)


@dataclass
class Built:
    ops: list[dict[str, Any]]  # empty when they came as ``ops_json``
    rejected: list[dict[str, Any]]
    positions: list[int]
    aliases: dict[str, str]
    ops_json: bytes | None = None

    def for_command(self) -> list[dict[str, Any]] | orjson.Fragment:
        return self.ops if self.ops_json is None else orjson.Fragment(self.ops_json)


@dataclass
class _Read:
    index: int
    rtype: str
    resource: dict[str, Any]
    full_url: str | None
    rid: str | None = None
    urns: bool = False  # the line mentions urn:uuid (references to rewrite)


def _reject(index: int, err: FhirError, what: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"index": index, "outcome": err.outcome()}
    if what:
        out["resource"] = what
    return out


def first_identifier(resource: dict[str, Any]) -> tuple[str, str] | None:
    for ident in resource.get("identifier") or []:
        if isinstance(ident, dict):
            system, value = ident.get("system"), ident.get("value")
            if isinstance(system, str) and isinstance(value, str) and system and value:
                return system, value
    return None


def derived_id(rtype: str, system: str, value: str) -> str:
    """A stable id for a resource known by its identifier only (the same on every run)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"{rtype}|{system}|{value}").hex


def urn_hex(full_url: str | None) -> str | None:
    if not full_url or not full_url.startswith(URN_UUID):
        return None
    try:
        return uuid.UUID(full_url[len(URN_UUID) :]).hex
    except ValueError:
        return None


def rewrite_urns(value: Any, refs: dict[str, str], key: str = "") -> Any:
    """Replace ``urn:uuid`` references by ``Type/id``: known ones from ``refs``, the others
    by the element's target type and the urn's own id (``urn_hex``)."""
    if isinstance(value, list):
        return [rewrite_urns(v, refs, key) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: rewrite_urns(v, refs, k) for k, v in value.items()}
    ref = out.get("reference")
    if isinstance(ref, str) and ref.startswith(URN_UUID):
        hexed = urn_hex(ref)
        if hexed is not None and hexed in refs:
            out["reference"] = refs[hexed]
        elif hexed is not None and key in REFERENCE_TARGET:
            out["reference"] = f"{REFERENCE_TARGET[key]}/{hexed}"
    return out


async def build_ops(
    store: Any,
    tenant: str,
    job: dict[str, Any],
    lines: list[bytes],
    first: int,
    fmt: str,
    validate: Callable[[list[ToPrepare]], Awaitable[PreparedChunk]] | None = None,
) -> Built:
    """Validate and map a chunk's lines into import writes (PUTs on stable ids)."""
    positions: list[int] = []
    rejected: list[dict[str, Any]] = []
    reads: list[_Read] = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        index = len(positions)
        positions.append(first + i)
        root = f"Bundle.entry[{first + i}].resource" if fmt == "bundle" else None
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            rejected.append(
                _reject(index, FhirError(400, [Issue("structure", f"not JSON: {exc}")]))
            )
            continue
        full_url = None
        if fmt == "bundle":
            if not isinstance(obj, dict) or not isinstance(obj.get("resource"), dict):
                rejected.append(
                    _reject(
                        index,
                        FhirError(
                            400,
                            [
                                Issue(
                                    "required",
                                    "the entry has no resource",
                                    [f"Bundle.entry[{first + i}]"],
                                )
                            ],
                        ),
                    )
                )
                continue
            full_url = obj.get("fullUrl") if isinstance(obj.get("fullUrl"), str) else None
            obj = obj["resource"]
        rtype = obj.get("resourceType") if isinstance(obj, dict) else None
        if rtype not in resources.RESOURCE_TYPES:
            rejected.append(
                _reject(
                    index,
                    FhirError(
                        400,
                        [
                            Issue(
                                "not-supported",
                                f"an import takes {', '.join(resources.RESOURCE_TYPES)}, "
                                f"not {rtype!r}",
                                [f"{root or 'Resource'}.resourceType"],
                            )
                        ],
                    ),
                )
            )
            continue
        assert isinstance(obj, dict)
        reads.append(_Read(index, rtype, obj, full_url, urns=b"urn:uuid:" in raw))
    # Ids: the vendor's own; else the holder of the identifier; else the urn:uuid's
    # own, else one derived from the identifier.
    keys: dict[str, _Read] = {}
    for r in reads:
        rid = r.resource.get("id")
        if isinstance(rid, str) and ID_RE.fullmatch(rid):
            r.rid = rid
            continue
        ident = first_identifier(r.resource)
        if ident is not None:
            keys[f"{tenant}|{r.rtype}|{ident[0]}|{ident[1]}"] = r
    holders: dict[str, str] = {}
    if keys:
        for doc in await store.find(c.RESOURCES, {"ident_key": {"$in": list(keys)}}):
            holders[doc["ident_key"]] = doc["rid"]
    for key, r in keys.items():
        system, value = key.split("|", 3)[2:]
        r.rid = holders.get(key) or urn_hex(r.full_url) or derived_id(r.rtype, system, value)
    aliases: dict[str, str] = {}
    refs: dict[str, str] = dict(job.get("aliases") or {})
    for r in reads:
        hexed = urn_hex(r.full_url)
        if r.rid is None:
            r.rid = hexed
        if hexed is not None and r.rid is not None:
            refs[hexed] = f"{r.rtype}/{r.rid}"
            if r.rid != hexed:
                aliases[hexed] = refs[hexed]  # later chunks cannot guess this one
    todo: list[ToPrepare] = []
    for r in reads:
        root = f"Bundle.entry[{positions[r.index]}].resource" if fmt == "bundle" else None
        if r.rid is None:
            rejected.append(
                _reject(
                    r.index,
                    FhirError(
                        422,
                        [
                            Issue(
                                "required",
                                "an imported resource needs an id or an identifier (system "
                                "and value), so that running the import again finds it",
                                [f"{root or r.rtype}.id"],
                            )
                        ],
                    ),
                )
            )
            continue
        resource = r.resource
        if r.urns and too_deep(resource, r.rtype) is None:
            resource = rewrite_urns(resource, refs)
        resource = {**resource, "id": r.rid}
        meta = resource.get("meta")
        if isinstance(meta, dict):
            # The server's own elements: the stored resource gets new ones.
            meta = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
            if meta:
                resource["meta"] = meta
            else:
                resource.pop("meta")
        todo.append((r.index, r.rtype, r.rid, resource, root))
    prepared = await (validate or _inline)(todo)
    by_index = {r.index: r for r in reads}
    for index, error in prepared.errors:
        r = by_index[index]
        rejected.append(_reject(index, FhirError.from_reply(error), f"{r.rtype}/{r.rid}"))
    return Built(prepared.ops or [], rejected, positions, aliases, prepared.ops_json)


async def _inline(items: list[ToPrepare]) -> PreparedChunk:
    return prepare_many(items)


def _has_channel(resource: dict[str, Any]) -> bool:
    return any(
        isinstance(e, dict) and str(e.get("url", "")).endswith("/booking-channel")
        for e in resource.get("extension") or []
    )


def routes(app: web.Application, validation_processes: int = 0) -> None:
    app[IMPORT_TURNS] = Turnstile()
    app[IMPORT_POOL] = ValidationPool(validation_processes)

    async def close_pool(app: web.Application) -> None:
        app[IMPORT_POOL].close()

    app.on_cleanup.append(close_pool)
    r = app.router
    r.add_post("/fhir/$import", start)
    r.add_get("/fhir/_import/{job}", status)
    r.add_post("/fhir/_import/{job}", chunk)
    r.add_delete("/fhir/_import/{job}", cancel)
    r.add_post("/fhir/_import/{job}/$complete", complete)
    r.add_get("/fhir/_import/{job}/errors", errors)
