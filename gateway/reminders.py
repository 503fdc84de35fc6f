"""Visit reminders 7 days and 1 day before (R-NOT-2): due times in the store, one task.

A visit's reminders are documents in ``reminders`` (``<tenant>/<appointment>/<kind>``)
with a due time, planned and re-planned by the notification service on every
change of the visit (``plan``: a moved visit gets new due times, ``cancel``:
a cancelled one gets none). "N days before" is the visit's wall-clock time N
calendar days earlier in Europe/Warsaw (DOMAIN.md Time): across a DST change
the distance is N x 24 h +- 1 h. A reminder whose due time has already passed
when the visit is booked is not sent (``too-late``); the booking confirmation
went out just now.

One task per worker process (``run``) follows the app clock: it takes the due
reminders, moves each from ``pending`` to ``queued`` with a conditional update
that writes a ``reminder.due`` event into the same document's outbox (one
event per reminder whatever the number of workers; nothing lost in a crash),
then sleeps until the next due time, a new plan in this process, or a change
of the sandbox clock. No task sleeps per visit; the state is in the store, so
reminders survive a restart. The event is handled by the notification
service, which checks the visit's current state at send time.
"""

from __future__ import annotations

import asyncio
from datetime import date, datetime, time, timedelta
from typing import Any

import structlog

from gateway import constants as c
from gateway.events import event, new_id
from gateway.metrics import Metrics
from gateway.ports import Clock, Store
from gateway.timeutil import WARSAW, from_store, to_store

log = structlog.get_logger("gateway.reminders")

# Reminder kind (also the template's name) -> calendar days before the visit.
REMINDERS: dict[str, int] = {"reminder-7d": 7, "reminder-1d": 1}
BATCH = 200


def due_time(start: datetime, days: int) -> datetime:
    """The same Europe/Warsaw wall-clock time ``days`` calendar days before ``start``."""
    local = start.astimezone(WARSAW)
    day: date = local.date() - timedelta(days=days)
    wall = datetime.combine(day, time(local.hour, local.minute, local.second), tzinfo=WARSAW)
    # A wall time inside the spring-forward gap does not exist: zoneinfo maps it
    # with the offset before the change, i.e. an hour later in summer time.
    return wall.astimezone(start.tzinfo or WARSAW)


class Reminders:
    """Plans reminders and queues them when due (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        metrics: Metrics,
        outbox_signal: asyncio.Event,
        *,
        poll_seconds: float = 30.0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.outbox_signal = outbox_signal
        self.poll_seconds = poll_seconds
        self.wake = asyncio.Event()

    async def plan(self, tenant: str, appointment_id: str, start: str) -> None:
        """Reminders for a booked visit starting at ``start`` (store instant)."""
        begins = from_store(start)
        now = self.clock.now()
        for kind, days in REMINDERS.items():
            rem_id = f"{tenant}/{appointment_id}/{kind}"
            existing = await self.store.get(c.REMINDERS, rem_id)
            if existing is not None and existing.get("start") == start:
                continue  # already planned for this date (pending, queued or done)
            due = due_time(begins, days)
            status = "pending" if due > now else "too-late"
            fields = {
                "tenant": tenant,
                "appointment_id": appointment_id,
                "kind": kind,
                "start": start,
                "due": to_store(due),
                "status": status,
            }
            await self.store.update_one(
                c.REMINDERS, {"_id": rem_id}, {"$set": fields}, upsert=True, fields=()
            )
            outcome = "scheduled" if status == "pending" else "skipped"
            self.metrics.labelled(self.metrics.reminders_total, kind, outcome).inc()
        self.wake.set()

    async def cancel(self, tenant: str, appointment_id: str) -> None:
        """No reminder for a visit that is no longer booked."""
        n = await self.store.update_many(
            c.REMINDERS,
            {"tenant": tenant, "appointment_id": appointment_id, "status": "pending"},
            {"$set": {"status": "cancelled"}},
        )
        if n:
            self.metrics.reminders_total.labels("any", "cancelled").inc(n)

    async def finish(self, rem_id: str, start: str, status: str, why: str | None = None) -> None:
        """Mark a queued reminder ``sent`` or ``skipped`` (when it was for ``start``)."""
        fields: dict[str, Any] = {"status": status, "done_at": to_store(self.clock.now())}
        if why:
            fields["why"] = why
        await self.store.update_one(
            c.REMINDERS,
            {"_id": rem_id, "status": "queued", "start": start},
            {"$set": fields},
            fields=(),
        )

    async def queue_due(self, batch: int = BATCH) -> int:
        """Turn due reminders into ``reminder.due`` events (outbox); how many were queued."""
        now = self.clock.now()
        due = await self.store.find(
            c.REMINDERS,
            {"status": "pending", "due": {"$lte": to_store(now)}},
            sort=[("due", 1)],
            limit=batch,
        )
        queued = 0
        for rem in due:
            ev = event(
                "reminder.due",
                {
                    "reminder_id": rem["_id"],
                    "appointment_id": rem["appointment_id"],
                    "kind": rem["kind"],
                    "start": rem["start"],
                },
                tenant=rem["tenant"],
                correlation_id=new_id(),
                now=now,
            )
            done = await self.store.update_one(
                c.REMINDERS,
                {"_id": rem["_id"], "status": "pending", "start": rem["start"]},
                {"$set": {"status": "queued", "queued_at": to_store(now)}},
                events=[ev],
                fields=(),
            )
            if done is not None:
                queued += 1
                self.metrics.reminders_total.labels(rem["kind"], "queued").inc()
        if queued:
            self.outbox_signal.set()
        return queued

    async def next_due(self) -> datetime | None:
        nxt = await self.store.find_one(c.REMINDERS, {"status": "pending"}, sort=[("due", 1)])
        return from_store(nxt["due"]) if nxt is not None else None

    async def run(self) -> None:
        """Forever: queue due reminders, then sleep until the next one or a clock change."""
        while True:
            # Armed before looking, so a clock change during the look is not missed.
            clock_changed = asyncio.ensure_future(self.clock.wait_changed(self.poll_seconds))
            timeout = self.poll_seconds
            try:
                await asyncio.sleep(0)  # let the waiter start: it now sees any change
                self.wake.clear()
                if await self.queue_due() >= BATCH:
                    timeout = 0.0
                else:
                    nxt = await self.next_due()
                    if nxt is not None:
                        wait = (nxt - self.clock.now()).total_seconds()
                        timeout = min(max(wait, 0.01), self.poll_seconds)
            except asyncio.CancelledError:
                clock_changed.cancel()
                raise
            except Exception as exc:  # store down: try again soon
                log.warning("reminders.failed", error=repr(exc))
                timeout = min(self.poll_seconds, 2.0)
            await self._sleep(timeout, clock_changed)

    async def _sleep(self, timeout: float, clock_changed: asyncio.Future[None]) -> None:
        woken: asyncio.Future[Any] = asyncio.ensure_future(self.wake.wait())
        waiters: set[asyncio.Future[Any]] = {clock_changed, woken}
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Cancelled, not awaited: awaiting them with CancelledError suppressed
            # would swallow this task's own cancellation at shutdown.
            clock_changed.cancel()
            woken.cancel()
