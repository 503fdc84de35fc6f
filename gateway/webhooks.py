"""Webhooks to providers: numbered events, signed deliveries with retries, heartbeats.

Provider systems learn of every change of their Appointments and Slots made
outside them (R-SCHED-4, R-CAN-3): a patient's booking, cancellation or
reschedule, an SMS cancellation, the waiting room's assignment... A change the
provider made itself (``channel`` ``provider``) is not echoed back.

Data model (Svix-like, STYLE.md), one collection each:

* ``subscriptions`` (the endpoint): endpoint, headers, content, secrets with
  their expiry, status (requested, active, error, off).
* ``webhook_counters``: per subscription, the event counter
  (``gateway.webhook_numbering``); also the generation token that
  every subscription write changes, which keeps each process's cache of
  subscriptions valid.
* ``webhook_events`` (message x destination): one per subscription and domain
  event, ``_id`` ``<subscription>:<event id>`` (the dedupe guard: a
  redelivered event finds its document), born with its ``number`` (1, 2, 3...
  without gaps, unique per subscription), and the delivery state: ``status``
  (pending -> delivered | failed | cancelled | held; held: kept, not sent,
  while the subscription is disabled), ``round`` (bumped by a replay),
  ``attempts`` (tries done in this round), ``next_attempt_at`` (app clock),
  ``copy_at`` (wall clock: when the broker's copy of the next try is due back).
* ``webhook_attempts`` (the delivery log): one per HTTP try.

Delivery: the first try of a new event is made by the worker that numbered
it, at once, from an in-process *lane* per subscription (one try at a time, in
event-number order): the event message is consumed once and nothing more is
published on the happy path. Every other try goes through the broker:
``webhook.deliver`` messages carry ``{event, round, attempt}`` (ids, never
payloads), one try per message. A failed first try is ``defer``-red into the
broker's delay tier that fits the schedule's next delay; a failed later try
records the next due time in the event document and raises ``Retry(delay)``,
so the tier brings the message back. A lane is memory: its worker renews the
copy time of what has waited in it half of ``webhook_sweep_grace_seconds``;
if the worker dies, the event is still ``pending`` in the store and the sweeper
sends it once its copy is late by the grace; a lane that falls behind (more
than ``LANE_MAX`` waiting) hands new events to the broker instead.

Because tiers run on real time while the sandbox clock can jump, the sweeper
(``gateway.webhook_sweeper``) sends a try that is due by ``clock.now()`` when
its broker copy is not due back yet or is lost; copies are told apart by
``(round, attempt)`` and a claim, so one try happens once. After the last try
the event is ``failed``, its message dead-lettered (``Reject``) and the
subscription shows ``error`` until a delivery succeeds again (``$replay``).
``410 Gone`` turns the subscription off; ``429`` / ``503`` with
``Retry-After`` wait at least that long (up to a bound).

Disabling (Svix-like): the subscription remembers when its endpoint's current
run of failed tries began (``failing_since``; any 2xx ends the run). A failed
try once the run has lasted ``webhook_disable_after_days`` disables it:
status ``error`` with the reason (shown by reads and ``$status``),
``disabled_at`` set, nothing more sent; new events are still numbered and kept
(``held``) for ``$events``. A PUT of the subscription (a new handshake) or
``$replay`` enables it again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets as pysecrets
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import orjson
import structlog

from gateway import constants as c
from gateway import subscriptions as subs
from gateway.logging import bind_correlation
from gateway.metrics import Metrics
from gateway.ports import (
    Clock,
    Document,
    Envelope,
    MessageBus,
    Reject,
    Retry,
    Store,
    WebhookRequest,
    WebhookResult,
    WebhookSender,
)
from gateway.resources import version_doc
from gateway.settings import Settings
from gateway.timeutil import from_store, to_fhir
from gateway.webhook_numbering import record, ts, wall
from gateway.webhook_sweeper import Sweeper

log = structlog.get_logger("gateway.webhooks")

DELIVERIES = c.WEBHOOK_DELIVERY_GROUP

WATCHED = ("resource.Appointment.*", "resource.Slot.*")
LIVE = ("requested", "active", "error")  # statuses that collect events
NEVER = "9999-12-31T23:59:59.999Z"  # next_heartbeat_at without heartbeats
GENERATION = "__generation__"  # webhook_counters document: changes with every subscription write
CLAIM_EXTRA = timedelta(seconds=30)
EARLY_SLACK = timedelta(seconds=1)
EVENTS_MAX = 500  # events per $events answer
EXCERPT = 512
TOKEN_TTL = 0.05  # seconds another process's subscription change may go unseen
LANE_MAX = 1000  # first tries waiting in one subscription's lane before the broker takes over
LANE_IDLE = 60.0  # seconds a lane's task waits for work before it ends


def new_secret() -> str:
    return "whsec_" + base64.b64encode(pysecrets.token_bytes(24)).decode()


def _host(url: str) -> str:
    return url if url == subs.INBOX else (urlsplit(url).hostname or "?")


class Webhooks:
    """The webhook service: subscriptions' lifecycle (API side), dispatch and delivery (workers)."""

    def __init__(
        self,
        store: Store,
        bus: MessageBus,
        clock: Clock,
        sender: WebhookSender,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.bus = bus
        self.clock = clock
        self.sender = sender
        self.settings = settings
        self.schedule = [float(d) for d in settings.webhook_retry_schedule] or [0.0]
        self.base = (
            settings.public_base_url.rstrip("/") or f"http://{settings.host}:{settings.port}"
        )
        self._bus_retries = len(settings.bus_retry_delays)
        self._tiers = sorted(set(settings.bus_retry_delays))
        self.sweeper = Sweeper(self)
        # Subscriptions as last read, valid while the generation token is unchanged
        # (every write of a subscription changes it): one small read per message
        # instead of a query.
        self._token: str | None = None
        self._token_checked = 0.0
        self._by_tenant: dict[str, list[Document]] = {}
        self._by_id: dict[str, Document | None] = {}
        # First tries, per subscription (see the module docstring); open in workers.
        self._lanes: dict[str, _Lane] = {}
        self._lanes_open = False
        self._renewer: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ subscriptions

    async def _changed(self) -> None:
        """Tell every process's cache that subscriptions changed."""
        self._token = None
        await self.store.update_one(
            c.WEBHOOK_COUNTERS,
            {"_id": GENERATION},
            {"$set": {"token": uuid.uuid4().hex}},
            upsert=True,
        )

    async def _fresh(self) -> None:
        # This process's own changes clear the token at once; another process's are
        # seen within TOKEN_TTL (one read of the token then, not one per message).
        at = time.monotonic()
        if self._token is not None and at < self._token_checked + TOKEN_TTL:
            return
        doc = await self.store.get(c.WEBHOOK_COUNTERS, GENERATION)
        token = doc["token"] if doc else ""
        self._token_checked = at
        if token != self._token:
            self._token = token
            self._by_tenant.clear()
            self._by_id.clear()

    async def live_subscriptions(self, tenant: str) -> list[Document]:
        """The tenant's subscriptions that collect events (requested, active, error)."""
        await self._fresh()
        found = self._by_tenant.get(tenant)
        if found is None:
            found = await self.store.find(
                c.SUBSCRIPTIONS, {"tenant": tenant, "status": {"$in": list(LIVE)}}
            )
            self._by_tenant[tenant] = found
        return found

    async def subscription(self, sid: str) -> Document | None:
        await self._fresh()
        if sid not in self._by_id:
            self._by_id[sid] = await self.store.get(c.SUBSCRIPTIONS, sid)
        return self._by_id[sid]

    async def events_count(self, sid: str) -> int:
        """Events since the subscription started (its counter)."""
        counter = await self.store.get(c.WEBHOOK_COUNTERS, sid)
        return int(counter["events_count"]) if counter else 0

    # ================================================================== API side

    async def create(self, tenant: str, spec: subs.SubscriptionSpec) -> tuple[Document, str]:
        """Store a new subscription and shake hands with its endpoint; returns it and its secret."""
        now = self.clock.now()
        secret = new_secret()
        doc: Document = {
            "_id": uuid.uuid4().hex,
            "tenant": tenant,
            "version": 1,
            "created": ts(now),
            "last_updated": ts(now),
            "status": "off" if spec.wants_off else "requested",
            "error": None,
            "failing_since": None,
            "disabled_at": None,
            **self._spec_fields(spec, now),
            "secrets": [{"value": secret, "expires": None}],
        }
        await self.store.insert(
            c.WEBHOOK_COUNTERS, {"_id": doc["_id"], "tenant": tenant, "events_count": 0}
        )
        await self.store.insert(c.SUBSCRIPTIONS, doc)
        await self._changed()
        log.info("subscription.created", subscription=doc["_id"], endpoint=_host(spec.endpoint))
        if doc["status"] == "requested":
            doc = await self.handshake(doc)
        return doc, secret

    def _spec_fields(self, spec: subs.SubscriptionSpec, now: datetime) -> Document:
        return {
            "resource": spec.resource,
            "topic": spec.topic,
            "types": spec.types,
            "endpoint": spec.endpoint,
            "headers": spec.headers,
            "content": spec.content,
            "heartbeat": spec.heartbeat,
            "timeout": spec.timeout,
            "end": spec.end,
            "next_heartbeat_at": (
                ts(now + timedelta(seconds=spec.heartbeat)) if spec.heartbeat else NEVER
            ),
        }

    async def update(
        self, doc: Document, spec: subs.SubscriptionSpec, if_match: int | None
    ) -> Document | None:
        """Apply a PUT; None when the version moved (412 with If-Match, else try again)."""
        now = self.clock.now()
        if spec.wants_off:
            status = "off"
        elif spec.endpoint != doc["endpoint"] or doc["status"] != "active":
            status = "requested"  # a new endpoint, or a client asking to resume: shake hands
        else:
            status = "active"
        fields = self._spec_fields(spec, now)
        if doc.get("heartbeat") == spec.heartbeat and doc.get("next_heartbeat_at") != NEVER:
            fields.pop("next_heartbeat_at")
        updated = await self.store.update_one(
            c.SUBSCRIPTIONS,
            {"_id": doc["_id"], "version": doc["version"]},
            {
                "$set": {
                    **fields,
                    "status": status,
                    "error": None if status != "off" else "turned off by the provider",
                    "failing_since": None,
                    "disabled_at": None,
                    "version": doc["version"] + 1,
                    "last_updated": ts(now),
                }
            },
        )
        if updated is None:
            return None
        await self._changed()
        if status == "requested":
            updated = await self.handshake(updated)
        return updated

    async def delete(self, doc: Document) -> None:
        """Remove a subscription with its events and delivery log (pending tries are dropped)."""
        await self.store.delete_one(c.SUBSCRIPTIONS, {"_id": doc["_id"]})
        await self.store.delete_one(c.WEBHOOK_COUNTERS, {"_id": doc["_id"]})
        await self._changed()
        await self.store.delete_many(c.WEBHOOK_EVENTS, {"subscription": doc["_id"]})
        await self.store.delete_many(c.WEBHOOK_ATTEMPTS, {"subscription": doc["_id"]})

    async def rotate_secret(self, doc: Document) -> tuple[Document, str, str]:
        """A new secret signs from now on; the old one(s) also sign until the overlap ends."""
        now = self.clock.now()
        until = ts(now + timedelta(seconds=self.settings.webhook_secret_overlap_seconds))
        kept = [
            {"value": s["value"], "expires": s["expires"] or until}
            for s in self._secrets_in_force(doc, now, raw=True)
        ]
        secret = new_secret()
        updated = await self.store.update_one(
            c.SUBSCRIPTIONS,
            {"_id": doc["_id"]},
            {"$set": {"secrets": [{"value": secret, "expires": None}, *kept]}},
        )
        await self._changed()
        log.info("subscription.secret_rotated", subscription=doc["_id"])
        return updated or doc, secret, until

    def _secrets_in_force(self, doc: Document, now: datetime, raw: bool = False) -> list[Any]:
        at = ts(now)
        live = [
            s for s in doc.get("secrets") or [] if s.get("expires") is None or s["expires"] > at
        ]
        return live if raw else [s["value"] for s in live]

    async def handshake(self, doc: Document) -> Document:
        """``requested`` -> ``active`` when the endpoint answers 2xx, else ``error`` (410: off)."""
        now = self.clock.now()
        bundle = subs.notification_bundle(
            doc,
            base=self.base,
            kind="handshake",
            events_since=await self.events_count(doc["_id"]),
            now=now,
        )
        result = await self.post(doc, bundle, f"hs-{uuid.uuid4().hex}", now)
        if result.ok:
            status, error = "active", None
        elif result.status == 410:
            status, error = "off", "the endpoint answered 410 Gone to the handshake"
        else:
            status, error = "error", f"handshake failed: {result.error}"
        await self.log_attempt(doc, result, now, kind="handshake", trigger="handshake")
        updated = await self.store.update_one(
            c.SUBSCRIPTIONS,
            {"_id": doc["_id"], "status": "requested"},
            {"$set": {"status": status, "error": error}},
        )
        await self._changed()
        log.info("subscription.handshake", subscription=doc["_id"], status=status)
        return updated or (await self.store.get(c.SUBSCRIPTIONS, doc["_id"])) or doc

    async def replay(
        self,
        doc: Document,
        *,
        since_number: int | None = None,
        until_number: int | None = None,
        since: datetime | None = None,
    ) -> list[int]:
        """Send kept events again, from an event number or a time; returns their numbers."""
        flt: dict[str, Any] = {"subscription": doc["_id"], "number": {"$gte": since_number or 1}}
        if until_number is not None:
            flt["number"]["$lte"] = until_number
        if since is not None:
            flt["at"] = {"$gte": ts(since)}
        events = await self.store.find(c.WEBHOOK_EVENTS, flt, sort=[("number", 1)])
        now = self.clock.now()
        if doc.get("disabled_at"):
            # The provider asks for its events: the endpoint gets another chance.
            await self.store.update_one(
                c.SUBSCRIPTIONS,
                {"_id": doc["_id"]},
                {"$set": {"disabled_at": None, "failing_since": None}},
            )
            await self._changed()
            log.info("subscription.enabled", subscription=doc["_id"], by="replay")
        numbers = []
        for ev in events:
            updated = await self.store.update_one(
                c.WEBHOOK_EVENTS,
                {"_id": ev["_id"], "round": ev["round"]},
                {
                    "$set": {
                        "status": "pending",
                        "attempts": 0,
                        "next_attempt_at": ts(now),
                        "claim_until": "",
                        "copy_at": ts(wall()),
                    },
                    "$inc": {"round": 1},
                },
            )
            if updated is not None:
                await self.dispatch(updated, "replay")
                numbers.append(int(updated["number"]))
        log.info("subscription.replay", subscription=doc["_id"], events=len(numbers))
        return numbers

    async def kept_events(
        self, doc: Document, since_number: int, until_number: int | None
    ) -> list[Document]:
        flt: dict[str, Any] = {"subscription": doc["_id"], "number": {"$gte": since_number}}
        if until_number is not None:
            flt["number"]["$lte"] = until_number
        return await self.store.find(c.WEBHOOK_EVENTS, flt, sort=[("number", 1)], limit=EVENTS_MAX)

    async def resources_of(self, events: Sequence[Document]) -> dict[str, Document | None]:
        return {ev["_id"]: await self._resource_at(ev) for ev in events}

    async def attempts(
        self, doc: Document, *, limit: int, number: int | None = None
    ) -> list[Document]:
        flt: dict[str, Any] = {"subscription": doc["_id"]}
        if number is not None:
            flt["number"] = number
        return await self.store.find(
            c.WEBHOOK_ATTEMPTS, flt, sort=[("at", -1), ("seq", -1)], limit=limit
        )

    # ================================================================== workers

    async def start(self) -> None:
        """Consume resource events (numbering, first tries) and delivery messages (one try each)."""
        # With a one-try schedule the only try must end in the broker's dead letters.
        self._lanes_open = len(self.schedule) > 1
        if self._lanes_open and self._renewer is None:
            self._renewer = asyncio.get_running_loop().create_task(
                self._renew_lanes(), name="webhook-lane-renewer"
            )
        await self.bus.consume_events(c.WEBHOOK_GROUP, WATCHED, self.on_resource_event)
        await self.bus.consume_events(
            c.WEBHOOK_DELIVERY_GROUP, [c.WEBHOOK_DELIVER], self.on_deliver
        )

    async def close(self) -> None:
        """Stop the lanes (what they still hold is pending in the store: the broker, or
        the sweeper after the grace, sends it) and the sweeper's tasks."""
        self._lanes_open = False
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        lanes, self._lanes = list(self._lanes.values()), {}
        for lane in lanes:
            if lane.task is not None:
                lane.task.cancel()
        tasks = [lane.task for lane in lanes if lane.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for lane in lanes:
            for ev in lane.items:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.dispatch(ev, "initial"), 1.0)
        await self.sweeper.close()

    async def run_sweeper(self) -> None:
        """Due tries, heartbeats and retention on the app clock (``gateway.webhook_sweeper``)."""
        await self.sweeper.run()

    # ------------------------------------------------------------------ dispatch

    async def on_resource_event(self, msg: Envelope) -> None:
        """A resource change -> one numbered event per matching subscription, then its first try."""
        body = msg.body
        channel = body.get("channel") or "provider"
        # R-SCHED-4 / R-CAN-3: the provider's own changes are not echoed back to it; its
        # initial import (R-SCHED-5) is its own data too.
        if channel in ("provider", "import") or msg.tenant is None:
            return
        rtype = body.get("type")
        if rtype not in ("Appointment", "Slot"):
            return
        bind_correlation(msg.correlation_id or msg.id, message_id=msg.id, event=msg.type)
        now = self.clock.now()
        for sub in await self.live_subscriptions(msg.tenant):
            if rtype not in sub["types"] or (sub.get("end") and sub["end"] <= ts(now)):
                continue
            held = bool(sub.get("disabled_at"))
            ev, created = await record(self.store, sub["_id"], msg, now, held=held)
            if ev is None:
                continue
            if created and self.metrics is not None:
                self.metrics.webhook_events_total.inc()
            if ev["status"] == "pending" and ev["round"] == 0 and ev["attempts"] == 0:
                await self._first_try(ev)

    async def _first_try(self, ev: Document) -> None:
        """Queue the event's first try in its subscription's lane (or on the broker)."""
        sid = ev["subscription"]
        lane = self._lanes.get(sid)
        if lane is None:
            if not self._lanes_open:
                await self.dispatch(ev, "initial")
                return
            lane = self._lanes[sid] = _Lane()
            lane.task = asyncio.get_running_loop().create_task(
                self._run_lane(sid, lane), name=f"webhook-lane-{sid}"
            )
        if len(lane.items) >= LANE_MAX:
            await self.dispatch(ev, "initial")  # the lane is behind: the broker takes it
            return
        lane.items.append(ev)
        lane.wake.set()

    async def _run_lane(self, sid: str, lane: _Lane) -> None:
        while True:
            if not lane.items:
                lane.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lane.wake.wait(), LANE_IDLE)
                if not lane.items:
                    if self._lanes.get(sid) is lane:
                        del self._lanes[sid]
                    return
                continue
            ev = lane.items[0]
            try:
                await self._lane_try(ev)
            except Exception as exc:
                # Still pending in the store: the sweeper sends it after the grace.
                log.warning("webhook.lane_failed", subscription=sid, error=repr(exc))
            lane.items.popleft()

    async def _renew_lanes(self) -> None:
        # Every quarter of the grace, what is older than half of it: a waiting try's copy
        # time stays under three quarters of the grace, renewed about once per half.
        grace = self.settings.webhook_sweep_grace_seconds
        while True:
            await asyncio.sleep(max(grace / 4, 0.05))
            try:
                await self.renew_lanes(grace / 2)
            except Exception as exc:
                log.warning("webhook.lane_renew_failed", error=repr(exc))

    async def renew_lanes(self, older_than: float) -> int:
        """Keep the first tries waiting in this worker's lanes its own: their copy time,
        when older than ``older_than`` seconds, is renewed (one write for them all), so
        the sweeper does not take a long lane's tail for lost (under load a lane holds
        minutes of work) and the lane needs no claim. Returns how many were renewed."""
        cutoff = ts(wall() - timedelta(seconds=older_than))
        stale = [ev for lane in self._lanes.values() for ev in lane.items if ev["copy_at"] < cutoff]
        if not stale:
            return 0
        renewed = ts(wall())
        await self.store.update_many(
            c.WEBHOOK_EVENTS,
            {"_id": {"$in": [ev["_id"] for ev in stale]}, "status": "pending", "attempts": 0},
            {"$set": {"copy_at": renewed}},
        )
        for ev in stale:
            ev["copy_at"] = renewed
        return len(stale)

    async def _lane_try(self, ev: Document) -> None:
        """The first try of ``ev``, from its lane."""
        sub = await self.subscription(ev["subscription"])
        # The sweeper takes a first try over when its copy is older than the grace.
        # A young one is sent without a claim (no write); one that waited long
        # enough to meet the sweeper is claimed first, as the broker's copies are.
        lease = timedelta(seconds=(sub or {}).get("timeout") or 15.0) + EARLY_SLACK
        grace = timedelta(seconds=self.settings.webhook_sweep_grace_seconds)
        if from_store(ev["copy_at"]) + grace - lease <= wall():
            if not await self._claim(ev["_id"], ev["round"], 0, sub):
                return
        await self._try(ev, sub, attempt=0, trigger="initial", msg_attempt=None)

    async def dispatch(self, ev: Document, trigger: str) -> None:
        """A try of ``ev`` through the broker (``webhook.deliver``)."""
        await self.bus.publish(self._deliver_message(ev, ev["attempts"], trigger))

    def _deliver_message(self, ev: Document, attempt: int, trigger: str) -> Envelope:
        return Envelope(
            id=os.urandom(16).hex(),
            type=c.WEBHOOK_DELIVER,
            body={"event": ev["_id"], "round": ev["round"], "attempt": attempt, "trigger": trigger},
            # Deliveries of one subscription go one at a time, in event-number order.
            tenant=ev["subscription"],
            correlation_id=ev["event_id"],
            created_at=ts(self.clock.now()),
        )

    # ------------------------------------------------------------------ delivery

    async def on_deliver(self, msg: Envelope) -> None:
        """One try of one event (see the module docstring for the copies and the claim)."""
        b = msg.body
        key = str(b.get("event"))
        rnd = int(b.get("round", 0))
        attempt = int(b.get("attempt", 0)) + msg.attempt
        trigger = str(b.get("trigger", "initial")) if msg.attempt == 0 else "retry"
        ev = await self.store.get(c.WEBHOOK_EVENTS, key)
        if (
            ev is None
            or ev["status"] != "pending"
            or ev["round"] != rnd
            or ev["attempts"] != attempt
        ):
            return  # done by another copy, replayed since, or deleted
        now = self.clock.now()
        if ev["next_attempt_at"] > ts(now + EARLY_SLACK):
            # Early (the sandbox clock went back): no copy is on its way any more; the
            # sweeper sends the try when it is due.
            await self.store.update_one(
                c.WEBHOOK_EVENTS,
                {"_id": key, "round": rnd, "attempts": attempt, "status": "pending"},
                {"$set": {"copy_at": ""}},
            )
            return
        sub = await self.subscription(ev["subscription"])
        if trigger != "initial" or ev["claim_until"]:
            # Retries, replays and the sweeper's sends claim their try first, so two
            # copies of it (the broker's and the sweeper's) send once. The first try
            # is not claimed: a second copy of it exists only after a redelivery,
            # and the receiver drops a duplicate webhook-id.
            if not await self._claim(key, rnd, attempt, sub):
                return
        await self._try(ev, sub, attempt=attempt, trigger=trigger, msg_attempt=msg.attempt)

    async def _claim(self, key: str, rnd: int, attempt: int, sub: Document | None) -> bool:
        now_wall = wall()
        lease = timedelta(seconds=(sub or {}).get("timeout") or 15.0) + CLAIM_EXTRA
        claimed = await self.store.update_one(
            c.WEBHOOK_EVENTS,
            {
                "_id": key,
                "status": "pending",
                "round": rnd,
                "attempts": attempt,
                "claim_until": {"$lt": ts(now_wall)},
            },
            {"$set": {"claim_until": ts(now_wall + lease)}},
        )
        return claimed is not None

    async def _try(
        self,
        ev: Document,
        sub: Document | None,
        *,
        attempt: int,
        trigger: str,
        msg_attempt: int | None,
    ) -> None:
        """Send ``ev`` once and settle it. ``msg_attempt``: the bus copy's attempt, or None
        for a lane's first try (a failure is then deferred into a retry tier)."""
        key = ev["_id"]
        now = self.clock.now()
        bind_correlation(ev["event_id"], subscription=ev["subscription"], event_number=ev["number"])
        if sub is None or sub["status"] == "off":
            await self._settle(ev, {"status": "cancelled"})
            return
        if sub.get("disabled_at"):
            await self._settle(ev, {"status": "held"})
            return
        resources = {}
        if sub["content"] == "full-resource":
            resources[key] = await self._resource_at(ev)
        bundle = subs.notification_bundle(
            sub,
            base=self.base,
            kind="event-notification",
            events_since=int(ev["number"]),
            now=now,
            events=[ev],
            resources=resources,
        )
        result = await self.post(sub, bundle, f"{sub['_id']}-{ev['number']}", now)
        tries = attempt + 1
        last = {"last_status": result.status, "last_error": result.error, "attempts": tries}
        if result.ok:
            await self._settle(ev, {**last, "status": "delivered", "delivered_at": ts(now)})
            await self.log_attempt(sub, result, now, ev=ev, trigger=trigger, outcome="delivered")
            await self.note_success(sub)
            return
        if result.status == 410:
            await self._settle(ev, {**last, "status": "cancelled"})
            await self.log_attempt(sub, result, now, ev=ev, trigger=trigger, outcome="disabled")
            await self.disable(sub, "the endpoint answered 410 Gone")
            return
        if await self.note_failure(sub, now, result):
            await self._settle(ev, {**last, "status": "held"})
            await self.log_attempt(sub, result, now, ev=ev, trigger=trigger, outcome="disabled")
            return
        if tries >= len(self.schedule):
            await self._settle(ev, {**last, "status": "failed"})
            await self.log_attempt(
                sub, result, now, ev=ev, trigger=trigger, outcome="dead-lettered"
            )
            await self.store.update_one(
                c.SUBSCRIPTIONS,
                {"_id": sub["_id"], "status": {"$in": list(LIVE)}},
                {
                    "$set": {
                        "status": "error",
                        "error": (
                            f"event {ev['number']} was not delivered after {tries} tries "
                            f"(last: {result.error}); it is kept: $replay sends it again"
                        ),
                    }
                },
            )
            await self._changed()
            log.warning("webhook.dead_letter", number=ev["number"], tries=tries)
            raise Reject(f"webhook event {ev['number']} undeliverable after {tries} tries")
        delay = self.schedule[tries]
        if result.status in (429, 503) and result.retry_after is not None:
            delay = max(
                delay, min(result.retry_after, self.settings.webhook_retry_after_max_seconds)
            )
        # The broker brings a copy of this try back after the tier that fits ``delay``
        # (real time): ``copy_at`` says when, so the sweeper only steps in when the
        # app clock is ahead of that (sandbox) or the copy is lost.
        by_broker = msg_attempt is None or msg_attempt + 1 < self._bus_retries
        copy_at = ts(wall() + timedelta(seconds=self._tier(delay))) if by_broker else ""
        await self._settle(
            ev,
            {
                **last,
                "next_attempt_at": ts(now + timedelta(seconds=delay)),
                "copy_at": copy_at,
            },
        )
        await self.log_attempt(sub, result, now, ev=ev, trigger=trigger, outcome="retrying")
        if not by_broker:
            return  # the bus would dead-letter this copy: the sweeper sends the next try
        if msg_attempt is None:
            # A lane's first try: its next try is a new message in the tier (if the
            # publish fails, the copy is late and the sweeper sends it).
            await self.bus.defer(self._deliver_message(ev, tries, "retry"), delay, DELIVERIES)
            return
        raise Retry(f"webhook {result.error}", delay=delay)

    def _tier(self, delay: float) -> float:
        """The broker's wait for ``delay``: the smallest tier >= delay (as the bus picks)."""
        return next((t for t in self._tiers if t >= delay), self._tiers[-1])

    async def _settle(self, ev: Document, fields: Document) -> None:
        """End a claimed try (guarded by the round and attempt it was for)."""
        await self.store.update_one(
            c.WEBHOOK_EVENTS,
            {"_id": ev["_id"], "round": ev["round"], "attempts": ev["attempts"]},
            {"$set": {"claim_until": "", "copy_at": "", **fields}},
        )

    async def note_success(self, sub: Document) -> None:
        """A 2xx: the endpoint's run of failures (if any) is over; ``error`` -> ``active``."""
        if sub["status"] != "error" and not sub.get("failing_since"):
            return
        flt: Document = {"_id": sub["_id"]}
        fields: Document = {"failing_since": None}
        if sub["status"] == "error":
            flt["status"] = "error"
            fields.update(status="active", error=None)
        if await self.store.update_one(c.SUBSCRIPTIONS, flt, {"$set": fields}) is not None:
            await self._changed()

    async def note_failure(self, sub: Document, now: datetime, result: WebhookResult) -> bool:
        """A failed try (not a 410): start the endpoint's run of failures, or, when the run
        has lasted ``webhook_disable_after_days``, disable the subscription (True)."""
        since = sub.get("failing_since")
        if not since:
            started = await self.store.update_one(
                c.SUBSCRIPTIONS,
                {"_id": sub["_id"], "failing_since": None},
                {"$set": {"failing_since": ts(now)}},
            )
            if started is not None:
                await self._changed()
            return False
        days = self.settings.webhook_disable_after_days
        if days <= 0 or since > ts(now - timedelta(days=days)):
            return False
        reason = (
            f"disabled: every delivery failed since {since} (more than {days:g} days; "
            f"last: {result.error}); new events are kept for $events: PUT the "
            "subscription (a new handshake) or call $replay to resume"
        )
        await self.store.update_one(
            c.SUBSCRIPTIONS,
            {"_id": sub["_id"], "status": {"$in": list(LIVE)}, "disabled_at": None},
            {"$set": {"status": "error", "error": reason, "disabled_at": ts(now)}},
        )
        await self._changed()
        log.warning("subscription.disabled", subscription=sub["_id"], failing_since=since)
        return True

    async def disable(self, sub: Document, reason: str) -> None:
        await self.store.update_one(
            c.SUBSCRIPTIONS,
            {"_id": sub["_id"], "status": {"$ne": "off"}},
            {"$set": {"status": "off", "error": reason}},
        )
        await self._changed()
        log.warning("subscription.disabled", subscription=sub["_id"], reason=reason)

    async def _resource_at(self, ev: Document) -> Document | None:
        if ev.get("action") == "deleted" or ev.get("version") is None:
            return None
        doc = await version_doc(self.store, ev["tenant"], ev["type"], ev["rid"], int(ev["version"]))
        if doc is None or doc.get("deleted"):
            return None
        resource: Document | None = doc.get("resource")
        return resource

    async def post(
        self, sub: Document, bundle: Document, msg_id: str, now: datetime
    ) -> WebhookResult:
        headers: dict[str, str] = {}
        for h in sub.get("headers") or []:
            name, _, value = h.partition(":")
            headers[name.strip()] = value.strip()
        request = WebhookRequest(
            url=sub["endpoint"],
            msg_id=msg_id,
            body=orjson.dumps(bundle),
            secrets=tuple(self._secrets_in_force(sub, now)),
            headers=headers,
            timeout=min(
                float(sub.get("timeout") or self.settings.webhook_timeout_seconds),
                self.settings.webhook_timeout_seconds,
            ),
            tenant=sub["tenant"],
            subscription=sub["_id"],
        )
        try:
            result = await self.sender.send(request)
        except Exception as exc:  # a sender bug must not lose the try's bookkeeping
            log.exception("webhook.sender_failed")
            result = WebhookResult(None, 0.0, f"internal error: {type(exc).__name__}")
        log.info(
            "webhook.sent",
            subscription=sub["_id"],
            host=_host(sub["endpoint"]),
            status=result.status,
            ms=result.latency_ms,
            error=result.error,
        )
        return result

    async def log_attempt(
        self,
        sub: Document,
        result: WebhookResult,
        now: datetime,
        *,
        ev: Document | None = None,
        kind: str = "event",
        trigger: str,
        outcome: str | None = None,
    ) -> None:
        outcome = outcome or ("delivered" if result.ok else "failed")
        if self.metrics is not None:
            self.metrics.webhook_deliveries_total.labels(kind, outcome).inc()
            self.metrics.webhook_delivery_seconds.observe(result.latency_ms / 1000)
        await self.store.insert(
            c.WEBHOOK_ATTEMPTS,
            {
                "_id": os.urandom(16).hex(),
                "tenant": sub["tenant"],
                "subscription": sub["_id"],
                "kind": kind,
                "number": ev["number"] if ev else None,
                "round": ev["round"] if ev else None,
                "attempt": ev["attempts"] + 1 if ev else 1,
                "trigger": trigger,
                "outcome": outcome,
                "at": ts(now),
                "seq": wall().timestamp(),
                "status_code": result.status,
                "latency_ms": result.latency_ms,
                "error": result.error,
                "response": result.response_excerpt[:EXCERPT],
            },
        )

    # ------------------------------------------------------------------ sweeper


@dataclass
class _Lane:
    """One subscription's first tries waiting in this process, oldest first."""

    items: deque[Document] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


def attempt_parameter(a: Document) -> Document:
    """One delivery-log line as a ``Parameters.parameter`` with parts."""
    parts: list[Document] = [
        {"name": "kind", "valueCode": a["kind"]},
        {"name": "attempt", "valueInteger": int(a.get("attempt") or 1)},
        {"name": "trigger", "valueCode": a["trigger"]},
        {"name": "outcome", "valueCode": a["outcome"]},
        {"name": "timestamp", "valueInstant": to_fhir(from_store(a["at"]))},
        {"name": "latency-ms", "valueDecimal": a["latency_ms"]},
    ]
    if a.get("number") is not None:
        parts.insert(0, {"name": "event-number", "valueString": str(a["number"])})
    if a.get("status_code") is not None:
        parts.append({"name": "status-code", "valueInteger": a["status_code"]})
    if a.get("error"):
        parts.append({"name": "error", "valueString": a["error"]})
    if a.get("response"):
        parts.append({"name": "response", "valueString": a["response"]})
    return {"name": "attempt", "part": parts}
