"""Command handlers: plain async functions that name what they need.

``COMMAND_HANDLERS`` maps a command type to its handler. A handler returns
the reply (a dict) or raises ``FhirError`` for a rule violated; the worker
turns either into the reply the API is waiting for.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from gateway import resources
from gateway.ports import Clock, Envelope, Reject, Store

Handler = Callable[[Store, Clock, Envelope], Awaitable[dict[str, Any]]]


async def put_resource(store: Store, clock: Clock, msg: Envelope) -> dict[str, Any]:
    b = msg.body
    if msg.tenant is None:
        raise Reject("resource.put without a tenant")
    written = await resources.apply_put(
        store,
        now=clock.now(),
        tenant=msg.tenant,
        rtype=b["type"],
        rid=b["id"],
        resource=b["resource"],
        central=b.get("central") or {},
        if_match=b.get("if_match"),
        msg_id=msg.id,
        correlation_id=msg.correlation_id,
        ident_key=b.get("ident_key"),
    )
    return written.to_reply()


async def delete_resource(store: Store, clock: Clock, msg: Envelope) -> dict[str, Any]:
    b = msg.body
    if msg.tenant is None:
        raise Reject("resource.delete without a tenant")
    version = await resources.apply_delete(
        store,
        now=clock.now(),
        tenant=msg.tenant,
        rtype=b["type"],
        rid=b["id"],
        msg_id=msg.id,
        correlation_id=msg.correlation_id,
    )
    return {"status": 204 if version is not None else 404, "version": version}


COMMAND_HANDLERS: dict[str, Handler] = {
    "resource.put": put_resource,
    "resource.delete": delete_resource,
}
