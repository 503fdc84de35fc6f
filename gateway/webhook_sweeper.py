"""The webhook sweeper: the clock-driven part of delivery, started with the workers.

Every ``webhook_sweep_seconds`` (and at once when the sandbox clock moves) it

* sends a due try itself when the broker's copy of it is not due back yet in
  real time (the sandbox clock ran ahead, or a Retry-After longer than the
  tier) or is late by ``webhook_sweep_grace_seconds`` (lost with a worker);
* sends a heartbeat to an active subscription after ``heartbeatPeriod`` without
  notifications (the Backport IG's keep-alive: a quiet channel, not a busy one,
  needs it): an event numbered within the period pushes the heartbeat back;
* forgets events and log lines older than the retention.

Everything is measured on the app clock (``Clock.now()``), so the sandbox clock
advances retries and heartbeats; leases and copy times are wall time.
"""

from __future__ import annotations

import asyncio
import os
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from gateway import constants as c
from gateway import subscriptions as subs
from gateway.ports import Document
from gateway.timeutil import from_store
from gateway.webhook_numbering import ts, wall

if TYPE_CHECKING:
    from gateway.webhooks import Webhooks

log = structlog.get_logger("gateway.webhooks")

SWEEP_BATCH = 500


class Sweeper:
    """See the module docstring. One per worker process; several may run at once."""

    def __init__(self, hooks: Webhooks) -> None:
        self.hooks = hooks
        self._background: set[asyncio.Task[Any]] = set()
        self._slots = asyncio.Semaphore(32)
        self._next_prune: datetime | None = None

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(set(self._background), timeout=5)

    async def run(self) -> None:
        """Forever: due deliveries whose broker copy is late, heartbeats, retention.

        Wakes every ``webhook_sweep_seconds`` and at once when the sandbox clock moves.
        """
        while True:
            busy = False
            try:
                busy = await self.sweep_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("webhook.sweep_failed", error=repr(exc))
            if not busy:
                await self.hooks.clock.wait_changed(self.hooks.settings.webhook_sweep_seconds)

    async def sweep_once(self) -> bool:
        """One pass; True when there may be more due right now.

        A pending try is sent again when it is due by the app clock and its broker
        copy either is not due yet in real time (the sandbox clock jumped ahead, or
        a Retry-After longer than the tier) or is late by the grace (lost: a crash
        between a state change and its publish).
        """
        app_now = self.hooks.clock.now()
        now = ts(app_now)
        wall_dt = wall()
        wall_s = ts(wall_dt)
        lost = ts(wall_dt - timedelta(seconds=self.hooks.settings.webhook_sweep_grace_seconds))
        due: list[Document] = []
        for copy_at in ({"$gt": wall_s}, {"$lt": lost}):
            due += await self.hooks.store.find(
                c.WEBHOOK_EVENTS,
                {
                    "status": "pending",
                    "copy_at": copy_at,
                    "next_attempt_at": {"$lte": now},
                    "claim_until": {"$lt": wall_s},
                },
                limit=SWEEP_BATCH,
            )
        due.sort(key=lambda ev: ev["next_attempt_at"])
        swept = 0
        for ev in due:
            mine = await self.hooks.store.update_one(
                c.WEBHOOK_EVENTS,
                {
                    "_id": ev["_id"],
                    "round": ev["round"],
                    "attempts": ev["attempts"],
                    "copy_at": ev["copy_at"],
                },
                {"$set": {"copy_at": wall_s}},
            )
            if mine is not None:
                await self.hooks.dispatch(mine, "sweeper")
                swept += 1
        if swept:
            log.info("webhook.swept", deliveries=swept)
        await self._heartbeats(app_now)
        await self._prune(app_now)
        return len(due) >= SWEEP_BATCH

    async def _heartbeats(self, now: datetime) -> None:
        due = await self.hooks.store.find(
            c.SUBSCRIPTIONS,
            {"status": "active", "next_heartbeat_at": {"$lte": ts(now)}},
            limit=200,
        )
        for sub in due:
            period = timedelta(seconds=int(sub.get("heartbeat") or 60))
            counter = await self.hooks.store.get(c.WEBHOOK_COUNTERS, sub["_id"])
            last = (counter or {}).get("last_event_at") or ""
            quiet = not last or last <= ts(now - period)
            # Traffic within the period: no heartbeat, the next one a period after it.
            nxt = ts(now + period) if quiet else ts(from_store(last) + period)
            mine = await self.hooks.store.update_one(
                c.SUBSCRIPTIONS,
                {"_id": sub["_id"], "next_heartbeat_at": sub["next_heartbeat_at"]},
                {"$set": {"next_heartbeat_at": nxt}},
            )
            if mine is not None and quiet:
                task = asyncio.get_running_loop().create_task(self._heartbeat(mine, now))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _heartbeat(self, sub: Document, now: datetime) -> None:
        async with self._slots:
            try:
                bundle = subs.notification_bundle(
                    sub,
                    base=self.hooks.base,
                    kind="heartbeat",
                    events_since=await self.hooks.events_count(sub["_id"]),
                    now=now,
                )
                result = await self.hooks.post(sub, bundle, f"hb-{os.urandom(16).hex()}", now)
                await self.hooks.log_attempt(
                    sub, result, now, kind="heartbeat", trigger="heartbeat"
                )
                if result.ok:
                    await self.hooks.note_success(sub)
                elif result.status == 410:
                    await self.hooks.disable(sub, "the endpoint answered 410 Gone to a heartbeat")
                else:
                    await self.hooks.note_failure(sub, now, result)
            except Exception as exc:
                log.warning("webhook.heartbeat_failed", error=repr(exc))

    async def _prune(self, now: datetime) -> None:
        """Forget events (not pending ones) and log lines older than the retention."""
        if self._next_prune is not None and now < self._next_prune:
            return
        self._next_prune = now + timedelta(minutes=10)
        cutoff = ts(now - timedelta(days=self.hooks.settings.webhook_event_retention_days))
        gone = await self.hooks.store.delete_many(
            c.WEBHOOK_EVENTS, {"at": {"$lt": cutoff}, "status": {"$ne": "pending"}}
        )
        gone += await self.hooks.store.delete_many(c.WEBHOOK_ATTEMPTS, {"at": {"$lt": cutoff}})
        gone += await self.hooks.store.delete_many(c.SANDBOX_INBOX, {"at": {"$lt": cutoff}})
        if gone:
            log.info("webhook.pruned", documents=gone)
