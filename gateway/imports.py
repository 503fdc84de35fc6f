"""Initial import (*import inicjalny*, R-SCHED-5): jobs, chunks and the import-day freeze.

A provider joining central e-registration moves all its schedules, slots and
future appointments over. An import is a **job** (``import_jobs``) that a client
feeds chunk by chunk (``gateway.http.imports``; the CLI is
``cer-gateway import``). Each chunk is one ``import.chunk`` command on the
provider's partition, applied by ``handle_chunk`` as a ``batch`` of writes
through the same write path as the FHIR API (``gateway.operations``, channel
``import``): the same checks, the same mappings, entry by entry.

- **Idempotent**: the API turns each resource into a PUT on a stable id (the
  vendor's id, the id of the resource already holding its identifier, or one
  derived from the identifier), and a write whose content equals the stored
  one changes nothing (``resources.same_content``): running an import twice
  adds no version and no event.
- **Resumable**: chunks carry a sequence number; the job keeps the last one
  applied and the checkpoint (file and line) in the same update, so after a
  crash of the client, the API or a worker the client asks the job where it
  stopped and goes on from there. A chunk sent twice (its answer was lost) is
  recognised by its number and not counted twice (re-applying it would change
  nothing anyway).
- **The freeze** (R-SCHED-5: nothing in the schedule may change on the day of
  the import): while a job runs, its ``active_key`` (the provider; a unique,
  sparse index, so one running import per provider) makes every other write of
  the provider's Locations, Schedules, Slots and Appointments answer 423
  (``refuse_during_import``). It ends when the job completes, is cancelled, or
  fails because its client sent nothing for ``import_stale_seconds`` (a crashed
  client must not freeze a provider for ever). Patients' bookings through
  CeR's own channels are not frozen: the rule binds the facility's schedule,
  and a patient's booking reaches the facility by webhook as always (R-SCHED-4).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import structlog

from gateway import constants as c
from gateway import operations
from gateway.errors import FhirError, Issue
from gateway.events import new_id
from gateway.ports import Clock, Document, DuplicateKey, Envelope, Reject, Store
from gateway.timeutil import from_store, to_fhir, to_store

log = structlog.get_logger("gateway.imports")

RUNNING = "in-progress"
ENDED = ("completed", "failed", "cancelled")
COUNTS = ("read", "created", "updated", "unchanged", "rejected")
IMPORT_SOURCE = "http://cer-gateway.org/fhir/StructureDefinition/import-source"
# Orders a job's rejections by chunk, then position, in one sortable number.
ORDER_STRIDE = 1_000_000


def empty_counts() -> dict[str, int]:
    return dict.fromkeys(COUNTS, 0)


async def start_job(
    store: Store,
    *,
    now: datetime,
    tenant: str,
    status_url: str,
    stale_seconds: float,
    label: str = "",
) -> Document:
    """A new running job for ``tenant``; 409 with the running one's URL if there is one."""
    job_id = new_id()
    doc: Document = {
        "_id": job_id,
        "tenant": tenant,
        "active_key": tenant,
        "status": RUNNING,
        "label": label[:200],
        "created": to_store(now),
        "heartbeat": to_store(now),
        "finished": None,
        "reason": None,
        "stale_seconds": stale_seconds,
        "status_url": status_url.replace("{job}", job_id),
        "last_seq": 0,
        "checkpoint": None,
        "counts": empty_counts(),
        "files": {},
    }
    for _ in range(3):
        try:
            await store.insert(c.IMPORT_JOBS, doc)
            return doc
        except DuplicateKey:
            running = await running_import(store, tenant, now)
            if running is not None:
                raise already_running(running) from None
    raise FhirError(409, [Issue("conflict", "another import is starting; try again")])


def already_running(job: Document) -> FhirError:
    return FhirError(
        409,
        [
            Issue(
                "conflict",
                f"an import of this provider is already running (since "
                f"{to_fhir(from_store(job['created']))}): {job['status_url']}; finish, cancel "
                "or resume that one",
            )
        ],
        code="import-running",
        extra={"job": job["_id"], "status_url": job["status_url"]},
    )


def is_stale(job: Document, now: datetime) -> bool:
    seconds = float(job.get("stale_seconds") or 0)
    return bool(seconds) and from_store(job["heartbeat"]) + timedelta(seconds=seconds) < now


async def running_import(store: Store, tenant: str, now: datetime) -> Document | None:
    """The provider's running import, if any; a stale one is failed on the way."""
    job = await store.find_one(c.IMPORT_JOBS, {"active_key": tenant})
    if job is None:
        return None
    if is_stale(job, now):
        await fail_stale(store, job, now)
        return None
    return job


async def fail_stale(store: Store, job: Document, now: datetime) -> None:
    seconds = int(float(job.get("stale_seconds") or 0))
    await store.update_one(
        c.IMPORT_JOBS,
        {"_id": job["_id"], "status": RUNNING, "heartbeat": job["heartbeat"]},
        {
            "$set": {
                "status": "failed",
                "finished": to_store(now),
                "reason": f"stale: no chunk for {seconds} s (the client stopped); run the "
                "same import again to resume it",
            },
            "$unset": {"active_key": ""},
        },
    )
    log.warning("import.stale", job=job["_id"])


async def current(store: Store, job_id: str, tenant: str, now: datetime) -> Document:
    """A job of ``tenant`` (404 otherwise), failed first if it went stale."""
    job = await store.get(c.IMPORT_JOBS, job_id)
    if job is None or job.get("tenant") != tenant:
        raise FhirError(404, [Issue("not-found", "no such import job")], code="not-found")
    if job["status"] == RUNNING and is_stale(job, now):
        await fail_stale(store, job, now)
        job = await store.get(c.IMPORT_JOBS, job_id) or job
    return job


async def end_job(store: Store, job: Document, now: datetime, status: str, reason: str) -> Document:
    """Complete or cancel a running job: the freeze ends. What was applied stays."""
    if job["status"] != RUNNING:
        raise FhirError(
            409,
            [Issue("conflict", f"the import is {job['status']} already")],
            code="import-ended",
        )
    done = await store.update_one(
        c.IMPORT_JOBS,
        {"_id": job["_id"], "status": RUNNING},
        {
            "$set": {"status": status, "finished": to_store(now), "reason": reason},
            "$unset": {"active_key": ""},
        },
    )
    if done is None:
        raise FhirError(409, [Issue("conflict", "the import changed meanwhile; read it again")])
    log.info("import.ended", job=job["_id"], status=status)
    return done


def freeze_error(job: Document) -> FhirError:
    """423 Locked: the provider's schedule is frozen by its running import (R-SCHED-5).

    423 rather than 409: nothing is wrong with the request or the resource's
    version; the provider's data is locked for a while and the same request will
    succeed once the import ends (a 409 tells a client to re-read and merge).
    """
    started = to_fhir(from_store(job["created"]))
    return FhirError(
        423,
        [
            Issue(
                "lock-error",
                f"an initial import of this provider is running since {started} (R-SCHED-5: "
                "nothing in the schedule may change during the import); changes to "
                "Locations, Schedules, Slots and Appointments are refused until it ends. "
                f"Its status: {job['status_url']}",
            )
        ],
        code="import-running",
        extra={"job": job["_id"], "status_url": job["status_url"], "started": started},
    )


async def refuse_during_import(store: Store, clock: Clock, tenant: str) -> None:
    """Raise the freeze's 423 when ``tenant`` has a running import (the write path's hook)."""
    job = await running_import(store, tenant, clock.now())
    if job is not None:
        raise freeze_error(job)


# --------------------------------------------------------------------------- chunks


async def handle_chunk(store: Store, clock: Clock, msg: Envelope) -> dict[str, Any]:
    """``import.chunk``: apply one chunk of a job as a batch of import writes.

    Body: ``job``, ``seq`` (1, 2, ...), ``file`` {key, name}, ``last`` (the
    position the chunk ends at: the checkpoint), ``ops`` (the writes, each with
    its ``index`` in ``positions``), ``positions`` (line or entry of each
    resource read, in order), ``rejected`` (``{"index", "outcome"}`` of the
    resources the API refused before sending).
    """
    if msg.tenant is None:
        raise Reject("import.chunk without a tenant")
    b = msg.body
    now = clock.now()
    job = await store.get(c.IMPORT_JOBS, b["job"])
    if job is None or job.get("tenant") != msg.tenant:
        raise FhirError(404, [Issue("not-found", "no such import job")], code="not-found")
    seq = int(b["seq"])
    if seq <= int(job["last_seq"]):
        # Applied before: its answer was lost. Counted once, not re-applied.
        return {"seq": seq, "duplicate": True, "job": job_counts(job)}
    job = await reopen_if_stale(store, job, now)
    if seq != int(job["last_seq"]) + 1:
        raise FhirError(
            409,
            [
                Issue(
                    "conflict",
                    f"chunk {seq} arrived before chunk {int(job['last_seq']) + 1}: send the "
                    "chunks of a job in order",
                )
            ],
            code="out-of-order",
            extra={"expected": int(job["last_seq"]) + 1},
        )
    ops: list[dict[str, Any]] = b["ops"]
    reply = (
        await operations.run_write(
            store,
            now=now,
            tenant=msg.tenant,
            msg_id=msg.id,
            correlation_id=msg.correlation_id,
            mode="batch",
            ops_body=ops,
            channel="import",
            representation=False,
        )
        if ops
        else {"results": []}
    )
    positions: list[int] = b["positions"]
    counts = empty_counts()
    counts["read"] = len(positions)
    errors: list[tuple[int, dict[str, Any], str | None]] = [
        (int(r["index"]), r["outcome"], r.get("resource")) for r in b.get("rejected", [])
    ]
    for op, result in zip(ops, reply["results"], strict=True):
        if "error" in result:
            err = FhirError.from_reply(result["error"])
            errors.append((int(op["index"]), err.outcome(), f"{op['type']}/{op['id']}"))
        elif result.get("unchanged"):
            counts["unchanged"] += 1
        elif result["status"] == 201:
            counts["created"] += 1
        else:
            counts["updated"] += 1
    counts["rejected"] = len(errors)
    file = b["file"]
    for index, outcome, what in sorted(errors, key=lambda e: e[0]):
        doc = error_doc(job["_id"], seq, index, positions[index], file, outcome, what)
        try:
            await store.insert(c.IMPORT_ERRORS, doc)
        except DuplicateKey:
            pass  # a redelivered chunk command wrote it already
    fkey = f"files.{file['key']}"
    inc = {f"counts.{k}": v for k, v in counts.items()}
    inc.update({f"{fkey}.{k}": v for k, v in counts.items()})
    updated = await store.update_one(
        c.IMPORT_JOBS,
        {"_id": job["_id"], "last_seq": seq - 1, "status": RUNNING},
        {
            "$set": {
                "last_seq": seq,
                "heartbeat": to_store(now),
                "checkpoint": {"file": file["key"], "name": file["name"], "position": b["last"]},
                f"{fkey}.name": file["name"],
                f"{fkey}.position": b["last"],
            },
            "$inc": inc,
        },
    )
    if updated is None:
        # Cancelled (or completed) while the chunk was applied: what was applied stays,
        # and the client is told the job ended.
        latest = await store.get(c.IMPORT_JOBS, job["_id"]) or job
        raise FhirError(
            409,
            [Issue("conflict", f"the import was {latest['status']} meanwhile")],
            code="import-ended",
        )
    return {"seq": seq, "duplicate": False, "chunk": counts, "job": job_counts(updated)}


async def reopen_if_stale(store: Store, job: Document, now: datetime) -> Document:
    """A chunk for a job failed as stale re-opens it (its client came back: resume)."""
    status = job["status"]
    if status == RUNNING:
        return job
    if status != "failed" or not str(job.get("reason") or "").startswith("stale"):
        raise FhirError(
            409,
            [
                Issue(
                    "conflict",
                    f"the import is {status}; start a new one (running it again changes "
                    "nothing that was applied)",
                )
            ],
            code="import-ended",
        )
    try:
        reopened = await store.update_one(
            c.IMPORT_JOBS,
            {"_id": job["_id"], "status": "failed"},
            {
                "$set": {
                    "status": RUNNING,
                    "active_key": job["tenant"],
                    "heartbeat": to_store(now),
                    "finished": None,
                    "reason": None,
                }
            },
        )
    except DuplicateKey:
        running = await store.find_one(c.IMPORT_JOBS, {"active_key": job["tenant"]})
        raise already_running(running or job) from None
    if reopened is None:
        raise FhirError(409, [Issue("conflict", "the import changed meanwhile; try again")])
    log.info("import.resumed", job=job["_id"])
    return reopened


def error_doc(
    job_id: str,
    seq: int,
    index: int,
    position: int,
    file: dict[str, Any],
    outcome: dict[str, Any],
    what: str | None,
) -> Document:
    """One line of the error file: the OperationOutcome, with where the resource was."""
    where = "entry" if file.get("format") == "bundle" else "line"
    ext: list[dict[str, Any]] = [
        {"url": "file", "valueString": file["name"]},
        {"url": where, "valueInteger": position},
    ]
    if what:
        ext.append({"url": "resource", "valueString": what})
    return {
        "_id": f"{job_id}:{seq}:{index}",
        "job": job_id,
        "order": seq * ORDER_STRIDE + index,
        "outcome": {
            **outcome,
            "extension": [{"url": IMPORT_SOURCE, "extension": ext}],
        },
    }


def job_counts(job: Document) -> dict[str, Any]:
    return {
        "status": job["status"],
        "last_seq": job["last_seq"],
        "checkpoint": job.get("checkpoint"),
        "counts": dict(job.get("counts") or {}),
    }


def status_body(job: Document) -> dict[str, Any]:
    """The status URL's JSON (FHIR bulk-data style: ``error`` names the error file)."""
    out: dict[str, Any] = {
        "id": job["_id"],
        "status": job["status"],
        "label": job.get("label") or "",
        "started": to_fhir(from_store(job["created"])),
        "lastActivity": to_fhir(from_store(job["heartbeat"])),
        "finished": to_fhir(from_store(job["finished"])) if job.get("finished") else None,
        "reason": job.get("reason"),
        "chunks": job["last_seq"],
        "checkpoint": job.get("checkpoint"),
        "counts": dict(job.get("counts") or {}),
        "files": [
            {"key": k, **v}
            for k, v in sorted(
                (job.get("files") or {}).items(), key=lambda kv: int(kv[0].lstrip("f") or 0)
            )
        ],
        "request": job["status_url"],
        "error": [{"type": "OperationOutcome", "url": job["status_url"] + "/errors"}],
    }
    return out
