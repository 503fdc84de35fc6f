"""Commands and domain events as they travel: plain dicts in an ``Envelope``.

Command types are the keys of ``gateway.handlers.COMMAND_HANDLERS``; event
types are topic routing keys (``resource.Slot.updated``, ``booking.cancelled``).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from gateway.ports import Envelope
from gateway.timeutil import to_store


def new_id() -> str:
    return uuid.uuid4().hex


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
