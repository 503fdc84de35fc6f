"""Command handlers: plain async functions that name what they need.

``COMMAND_HANDLERS`` maps a command type to its handler. A handler returns
the reply (a dict) or raises ``FhirError`` for a rule violated; the worker
turns either into the reply the API is waiting for.

A handler names its dependencies as parameters and the worker passes them by
name (``invoke``, as cosmicpython's bootstrap injects by signature): ``msg``
is the command's ``Envelope``; ``store`` and ``clock`` are always there; other
ports (``eligibility``, ...) and ``settings`` are what ``bootstrap`` gives the worker.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from functools import cache
from typing import Any

from gateway import constants as c
from gateway import imports, operations, patients, waiting_assign, waiting_room
from gateway.errors import FhirError
from gateway.ports import Clock, Envelope, Reject, Store
from gateway.timeutil import to_store

Handler = Callable[..., Awaitable[dict[str, Any]]]


@cache
def _parameters(handler: Handler) -> tuple[str, ...]:
    return tuple(inspect.signature(handler).parameters)


def invoke(handler: Handler, msg: Envelope, deps: Mapping[str, Any]) -> Awaitable[dict[str, Any]]:
    """Call ``handler`` with ``msg`` and the dependencies it names (see the module doc)."""
    kwargs: dict[str, Any] = {}
    for name in _parameters(handler):
        if name == "msg":
            kwargs[name] = msg
        elif name in deps:
            kwargs[name] = deps[name]
        else:
            raise Reject(f"{msg.type}: the worker has no {name!r} for its handler")
    return handler(**kwargs)


async def fhir_write(store: Store, clock: Clock, msg: Envelope) -> dict[str, Any]:
    """A provider's write: one resource, a transaction or a batch (``gateway.operations``).

    With a ``job_id`` (``Prefer: respond-async``) the outcome is also kept in
    the job document for the status URL.
    """
    b = msg.body
    if msg.tenant is None:
        raise Reject("fhir.write without a tenant")
    job_id = b.get("job_id")

    async def progress(done: int) -> None:
        if job_id:
            await store.update_one(c.JOBS, {"_id": job_id}, {"$set": {"done": done}})

    try:
        # R-SCHED-5: while the provider's initial import runs its schedule is frozen.
        await imports.refuse_during_import(store, clock, msg.tenant)
        reply = await operations.run_write(
            store,
            now=clock.now(),
            tenant=msg.tenant,
            msg_id=msg.id,
            correlation_id=msg.correlation_id,
            mode=b["mode"],
            ops_body=b["ops"],
            channel=b.get("channel", "provider"),
            representation=b.get("representation", True),
            progress=progress,
        )
    except FhirError as err:
        if job_id:
            await finish_job(store, clock, job_id, err.to_reply())
        raise
    if job_id:
        await finish_job(store, clock, job_id, reply)
    return reply


async def finish_job(store: Store, clock: Clock, job_id: str, reply: dict[str, Any]) -> None:
    await store.update_one(
        c.JOBS,
        {"_id": job_id},
        {
            "$set": {
                "status": "error" if "error" in reply else "complete",
                "finished": to_store(clock.now()),
                "reply": reply,
            }
        },
    )


COMMAND_HANDLERS: dict[str, Handler] = {
    "fhir.write": fhir_write,
    # The initial import (R-SCHED-5, gateway.imports): a chunk of a job, channel import.
    "import.chunk": imports.handle_chunk,
    # The patient channel (gateway.patients), on the partition of the slot's provider.
    "patient.book": patients.book,
    "patient.reschedule": patients.book,
    "patient.cancel": patients.cancel,
    # The waiting room (issue 5): entries on the waiting room's own partition
    # (gateway.waiting_room); slots on the partition of their provider
    # (gateway.waiting_assign: R-WAIT-3 assignment, R-CAN-2 proposals, R-WAIT-6).
    "waiting-room.enter": waiting_room.handle_enter,
    "waiting-room.change": waiting_room.handle_change,
    "waiting-room.leave": waiting_room.handle_leave,
    "waiting-room.offer": waiting_assign.handle_offer,
    "waiting-room.released": waiting_assign.handle_released,
    "waiting-room.assign": waiting_assign.handle_assign,
    "waiting-room.accept": waiting_assign.handle_accept,
    "waiting-room.decline": waiting_assign.handle_decline,
    "waiting-room.expire": waiting_assign.handle_decline,
    "waiting-room.withdraw": waiting_assign.handle_decline,
}
