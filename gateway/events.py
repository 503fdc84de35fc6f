"""Commands and domain events as they travel: plain dicts in an ``Envelope``.

Command types are the keys of ``gateway.handlers.COMMAND_HANDLERS``; event
types are topic routing keys (``resource.Slot.updated``, ``booking.cancelled``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from gateway.ports import Envelope
from gateway.timeutil import to_store


def new_id() -> str:
    """A random (version 4) UUID as 32 hex digits, as ``uuid.uuid4().hex`` gives, without
    building a ``UUID`` object: a message or event id each, several per written resource.
    The version and variant bits are set in the random bytes and ``bytes.hex`` writes the
    digits; the bytes come from ``os.urandom`` 4 kB at a time (``_random16``): one
    ``getrandom`` call per id was 2-3 % of the ingest loop under py-spy."""
    b = bytearray(_random16())
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    return b.hex()


def _random16() -> bytes:
    """16 bytes from ``os.urandom``, each handed out once: ``list.pop`` is atomic, so two
    threads never get the same; a forked child drops what it inherited."""
    try:
        return _POOL.pop()
    except IndexError:
        raw = os.urandom(16 * 256)
        _POOL.extend([raw[i : i + 16] for i in range(16, len(raw), 16)])
        return raw[:16]


_POOL: list[bytes] = []
os.register_at_fork(after_in_child=_POOL.clear)


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
    return new_envelope(
        ev["id"],
        ev["type"],
        ev["body"],
        ev.get("tenant"),
        ev.get("correlation_id", ""),
        ev.get("created_at", ""),
        {},
    )


def new_envelope(
    id: str,
    type: str,
    body: dict[str, Any],
    tenant: str | None,
    correlation_id: str,
    created_at: str,
    headers: Mapping[str, Any],
) -> Envelope:
    """``Envelope(id, type, body, tenant, correlation_id, 0, None, created_at, headers)``,
    a new event's envelope, made without the frozen dataclass's ``__init__``: it sets
    each of the nine fields through ``object.__setattr__`` (2.7 -> 0.7 us; one envelope
    per event where the relay publishes it and another where a consumer unpacks it, a
    few per ingested Slot). Equal to the constructor's in every field
    (tests/unit/test_events.py keeps the two in step)."""
    env = _new(Envelope)
    env.__dict__.update(
        id=id,
        type=type,
        body=body,
        tenant=tenant,
        correlation_id=correlation_id,
        attempt=0,
        reply_to=None,
        created_at=created_at,
        headers=headers,
    )
    return env


_new = object.__new__
