"""Many domain events of one type and tenant in one broker message (both buses).

The outbox relay publishes what one transaction wrote (hundreds of events) as
a few messages instead of one per event (``MessageBus.publish_batch``). On the
queue a batch is an ``Envelope`` of the events' type and tenant whose body
lists the events and whose header ``BATCH_HEADER`` counts them; the bus unpacks
it before any handler runs, so consumers only ever see single events. (The
embedded bus keeps a batch in a more compact form of its own, after ``check``.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.events import new_envelope
from gateway.ports import Envelope

BATCH_HEADER = "cer-batch"


def check(msgs: Sequence[Envelope]) -> None:
    """``ValueError`` unless ``msgs`` can make a batch: one type and one tenant, new events."""
    if not msgs:
        raise ValueError("an empty batch")
    first = msgs[0]
    for m in msgs:
        if m.type != first.type or m.tenant != first.tenant:
            raise ValueError("a batch carries events of one type and one tenant")
        if m.reply_to is not None or m.attempt:
            raise ValueError("a batch carries new events only (no reply_to, attempt 0)")


def pack(msgs: Sequence[Envelope]) -> Envelope:
    """One envelope carrying ``msgs`` (same type and tenant, no reply, first attempt)."""
    check(msgs)
    first = msgs[0]
    events: list[dict[str, Any]] = []
    for m in msgs:
        item: dict[str, Any] = {
            "id": m.id,
            "body": m.body,
            "correlation_id": m.correlation_id,
            "created_at": m.created_at,
        }
        if m.headers:
            item["headers"] = dict(m.headers)
        events.append(item)
    return Envelope(
        id=f"{first.id}+{len(msgs) - 1}",
        type=first.type,
        body={"events": events},
        tenant=first.tenant,
        correlation_id=first.correlation_id,
        created_at=first.created_at,
        headers={BATCH_HEADER: len(msgs)},
    )


def is_batch(env: Envelope) -> bool:
    return BATCH_HEADER in env.headers


def unpack(env: Envelope) -> list[Envelope]:
    """The events of a batch, as their publisher made them."""
    events = env.body.get("events")
    if not isinstance(events, list):
        raise ValueError("a batch without its events")
    type_, tenant = env.type, env.tenant
    return [
        new_envelope(
            item["id"],
            type_,
            item["body"],
            tenant,
            item.get("correlation_id", ""),
            item.get("created_at", ""),
            item.get("headers") or {},
        )
        for item in events
    ]
