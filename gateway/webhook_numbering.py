"""Webhook event numbers: one document per (subscription, domain event), numbered 1, 2, 3...

Gap-free and stable under redelivery and concurrency (see ``gateway.webhooks``):
after the dedupe guard (the document's ``_id`` ``<subscription>:<event id>``),
the subscription's counter (``webhook_counters``) is incremented in the same
atomic update that records which event holds the new number
(``pending_event``, a lock on the counter); the document is inserted with that
number and the reservation released. A copy that finds itself holding the
reservation resumes it; a number not needed after all is given back (nobody
else can have moved the counter meanwhile); a reservation left by a dead worker
is taken over, with its number, after ``STALE_RESERVATION``; the unique
(subscription, number) index stops two documents from ever sharing a number.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from gateway import constants as c
from gateway.ports import Document, DuplicateKey, Envelope, Retry, Store

STALE_RESERVATION = timedelta(seconds=60)


def ts(dt: datetime) -> str:
    """``timeutil.to_store`` (fixed-width UTC, milliseconds), without strftime's cost."""
    return dt.astimezone(UTC).isoformat(timespec="milliseconds")[:23] + "Z"


def wall() -> datetime:
    """Wall time, for leases (a crash-recovery timer, not a domain one)."""
    return datetime.now(UTC)


async def record(
    store: Store, sid: str, msg: Envelope, now: datetime
) -> tuple[Document | None, bool]:
    """The event's document for subscription ``sid``, numbered (the same on a redelivery);
    True when this call made it. None when the subscription is gone.

    Holding the subscription's reservation (``pending_event``) is a lock on its
    counter: nobody else increments it meanwhile, so a number that turns out
    not to be needed (a copy of this event got there first) is given back.
    """
    key = f"{sid}:{msg.id}"
    existing = await store.get(c.WEBHOOK_EVENTS, key)
    if existing is not None:
        return existing, False  # a redelivery: the same document, the same number
    wall_at = wall()
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
        "status": "pending",
        "round": 0,
        "attempts": 0,
        "next_attempt_at": ts(now),
        "claim_until": "",
        # the first try's message is published right after the insert
        "copy_at": ts(wall_at),
    }
    for spin in range(200):
        held = await store.update_one(
            c.WEBHOOK_COUNTERS,
            {"_id": sid, "pending_event": None},
            {
                "$inc": {"events_count": 1},
                "$set": {"pending_event": key, "pending_since": ts(wall_at)},
            },
        )
        if held is None:
            current = await store.get(c.WEBHOOK_COUNTERS, sid)
            if current is None:
                return None, False
            holder = current.get("pending_event")
            outcome = "mine" if holder == key else await _take_over(store, current, key)
            if outcome != "mine":
                if outcome == "wait":
                    await asyncio.sleep(min(0.005 * (spin + 1), 0.2))
                existing = await store.get(c.WEBHOOK_EVENTS, key)
                if existing is not None:
                    return existing, False
                continue
            held = current
        number = int(held["events_count"])
        try:
            await store.insert(c.WEBHOOK_EVENTS, {**doc, "number": number})
        except DuplicateKey:
            existing = await store.get(c.WEBHOOK_EVENTS, key)
            unused = existing is not None and existing.get("number") != number
            await _release(store, sid, key, number, give_back=unused)
            if existing is not None:
                return existing, False  # a copy of this event was numbered meanwhile
            continue  # the number went to the event we took it over from
        await _release(store, sid, key, number, give_back=False)
        return {**doc, "number": number}, True
    raise Retry(f"could not number event {key}")


async def _release(store: Store, sid: str, key: str, number: int, *, give_back: bool) -> None:
    update: Document = {"$set": {"pending_event": None}}
    flt: Document = {"_id": sid, "pending_event": key}
    if give_back:
        flt["events_count"] = number
        update["$inc"] = {"events_count": -1}
    await store.update_one(c.WEBHOOK_COUNTERS, flt, update)


async def _take_over(store: Store, sub: Document, key: str) -> str:
    """Another event holds the reservation: ``wait``, ``cleared`` it, or made it ``mine``.

    A holder whose event is numbered died before releasing (cleared); a
    reservation older than ``STALE_RESERVATION`` is a dead worker's: its
    number is taken over (the unique (subscription, number) settles a late holder).
    """
    holder, count = sub["pending_event"], sub["events_count"]
    wall_at = wall()
    stale = sub.get("pending_since", "") < ts(wall_at - STALE_RESERVATION)
    other = await store.get(c.WEBHOOK_EVENTS, holder)
    guard = {"_id": sub["_id"], "pending_event": holder, "events_count": count}
    if other is not None and other.get("number") == count:
        done = await store.update_one(c.WEBHOOK_COUNTERS, guard, {"$set": {"pending_event": None}})
        return "cleared" if done is not None else "wait"
    if not stale:
        return "wait"
    if other is not None:
        # A copy of an event numbered before: its reservation is not needed.
        await store.update_one(
            c.WEBHOOK_COUNTERS,
            guard,
            {"$set": {"pending_event": None}, "$inc": {"events_count": -1}},
        )
        return "cleared"
    taken = await store.update_one(
        c.WEBHOOK_COUNTERS,
        guard,
        {"$set": {"pending_event": key, "pending_since": ts(wall_at)}},
    )
    return "mine" if taken is not None else "wait"
