"""Commands and domain events as they travel: plain dicts in an ``Envelope``.

Command types are the keys of ``gateway.handlers.COMMAND_HANDLERS``; event
types are topic routing keys (``resource.Slot.updated``, ``booking.cancelled``).
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from gateway.ports import Envelope
from gateway.timeutil import to_store


def new_id() -> str:
    """A random (version 4) UUID as 32 hex digits, as ``uuid.uuid4().hex`` gives, without
    building a ``UUID`` object: a message or event id each, several per written resource
    (2 us -> 0.6 us)."""
    n = int.from_bytes(os.urandom(16), "big")
    return f"{(n & _UUID4_CLEAR) | _UUID4_SET:032x}"  # version 4, RFC 4122 variant


_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def command(
    type: str,
    body: dict[str, Any],
    *,
    tenant: str | None,
    correlation_id: str,
    now: datetime,
    msg_id: str | None = None,
) -> Envelope:
    return Envelope(
        id=msg_id or new_id(),
        type=type,
        body=body,
        tenant=tenant,
        correlation_id=correlation_id,
        created_at=to_store(now),
    )


def event(
    type: str,
    body: dict[str, Any],
    *,
    tenant: str | None,
    correlation_id: str,
    now: datetime,
) -> dict[str, Any]:
    """A domain event as written into a document's outbox (see ``Store``)."""
    return {
        "id": new_id(),
        "type": type,
        "tenant": tenant,
        "correlation_id": correlation_id,
        "created_at": to_store(now),
        "body": body,
    }


def event_envelope(ev: dict[str, Any]) -> Envelope:
    return Envelope(
        id=ev["id"],
        type=ev["type"],
        body=ev["body"],
        tenant=ev.get("tenant"),
        correlation_id=ev.get("correlation_id", ""),
        created_at=ev.get("created_at", ""),
    )
