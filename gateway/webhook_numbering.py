"""Webhook event numbers: one document per (subscription, domain event), numbered 1, 2, 3...

Gap-free and stable under redelivery and concurrency, with MongoDB's
guarantees only (a unique index and single-document conditional updates):

* the document's ``_id`` ``<subscription>:<event id>`` is the dedupe guard: a
  redelivered event's insert fails on it, finds its document, and keeps its
  number;
* a new document takes the number after the subscription's counter
  (``webhook_counters.events_count``) and is inserted under the unique
  (subscription, number) index; then the counter moves to it (a conditional
  update from the number before);
* if that number is taken, its document exists but the counter has not moved
  yet (its writer is about to, or died before): the counter is moved past it
  and the next number tried. So the counter only ever moves to a number whose
  document exists, and a number is only ever taken right after the counter:
  numbers stay contiguous, whatever crashes.

The counter also keeps ``last_event_at`` (app clock): an event's first try
follows its numbering at once, so this is when notification traffic last
flowed, and the sweeper sends a heartbeat only after a quiet period (the
Subscriptions Backport IG's heartbeat semantics).
"""

from __future__ import annotations

from datetime import UTC, datetime

from gateway import constants as c
from gateway.ports import Document, DuplicateKey, Envelope, Retry, Store


def ts(dt: datetime) -> str:
    """``timeutil.to_store`` (fixed-width UTC, milliseconds), without strftime's cost."""
    return dt.astimezone(UTC).isoformat(timespec="milliseconds")[:23] + "Z"


def wall() -> datetime:
    """Wall time, for leases (a crash-recovery timer, not a domain one)."""
    return datetime.now(UTC)


async def record(
    store: Store, sid: str, msg: Envelope, now: datetime, *, held: bool = False
) -> tuple[Document | None, bool]:
    """The event's document for subscription ``sid``, numbered (the same on a redelivery);
    True when this call made it. None when the subscription is gone. ``held``: kept
    but not sent (the subscription is disabled)."""
    key = f"{sid}:{msg.id}"
    # A redelivery finds its document when the insert below hits the unique _id
    # (rare, so not looked up first).
    doc: Document = {
        "_id": key,
        "tenant": msg.tenant,
        "subscription": sid,
        "event_id": msg.id,
        "event_type": msg.type,
        "at": msg.created_at or ts(now),
        "type": msg.body["type"],
        "rid": msg.body["id"],
        "version": msg.body.get("version"),
        "action": msg.type.rsplit(".", 1)[-1],
        "channel": msg.body.get("channel"),
        "status": "held" if held else "pending",
        "round": 0,
        "attempts": 0,
        "next_attempt_at": ts(now),
        "claim_until": "",
        # the first try is queued right after the insert
        "copy_at": "" if held else ts(wall()),
    }
    for _ in range(1000):
        counter = await store.get(c.WEBHOOK_COUNTERS, sid)
        if counter is None:
            return None, False
        number = int(counter["events_count"]) + 1
        try:
            await store.insert(c.WEBHOOK_EVENTS, {**doc, "number": number})
        except DuplicateKey:
            existing = await store.get(c.WEBHOOK_EVENTS, key)
            if existing is not None:
                return existing, False  # a redelivery, or a copy of it got there first
            await _move(store, sid, number, now)  # the number is another event's
            continue
        await _move(store, sid, number, now)
        return {**doc, "number": number}, True
    raise Retry(f"could not number event {key}")


async def _move(store: Store, sid: str, number: int, now: datetime) -> None:
    """The counter to ``number`` (whose document exists), unless it is there already."""
    await store.update_one(
        c.WEBHOOK_COUNTERS,
        {"_id": sid, "events_count": number - 1},
        {"$set": {"events_count": number, "last_event_at": ts(now)}},
    )
