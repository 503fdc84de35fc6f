"""Waiting-room benchmark (issue 5, item 7): ``python -m bench.waiting_room``.

On the gateway's real wiring (``bootstrap.build_services`` + ``bootstrap.start`` with
the workers and, as ``cer-gateway serve`` has it, the garbage-collector policy of the
embedded store; sandbox clock, embedded store; the embedded bus by default, RabbitMQ
with ``--bus rabbitmq`` on the ``cer-bench-waiting`` vhost):

1. **Setup** (not timed): ``--providers`` facilities (default 50) in five cities push
   ``--slots`` free first-time cardiology slots (default 10,000; 70 % first-stable,
   30 % first-urgent, 07:00-19:00) for the Monday 41 days ahead, through ``fhir.write``
   transactions: beyond the patients' window, so nobody may take them yet.
   ``--entries`` waiting-room entries (default 100,000) are written straight into the
   store as ``waiting_room.enter`` writes them (each with its e-referral), with mixed
   criteria: a city (35 %), a facility (15 %), a postal prefix (15 %) or anywhere;
   weekdays (30 %), hours (30 %), dates (10 %); 30 % urgent, 5 % privileged.
2. **Unlock** (timed): the sandbox clock moves to 23:50:01 Warsaw, the waiting room's
   nightly unlock (R-SCHED-6): one plan for every slot and entry, then
   ``waiting-room.assign`` commands on each provider's partition booking through the
   write path. Timed from the clock move until the last assignment is in the store
   (the last entry's ``assigned_at``): **assignments/s** (target >= 2,000/s on the
   embedded default). The process's CPU until then gives **assignments per
   CPU-second**, which depends less on the machine's load than the wall rate; its CPU
   until everything the unlock caused is done (the patients' messages, the entries'
   FHIR faces) gives the CPU per assignment. The bench watches without scanning the
   entries (it runs in the gateway's process) and reports the event loop's lag
   meanwhile (what an API request waits). Checked after: no slot booked twice, no
   entry assigned twice, every pair meets the entry's criteria. Beside it, the
   machine's speed just before and after (``common.speed_probe``: a fixed loop in a
   fresh interpreter): on a 2-vCPU cloud machine it varies by 20-30 % and more from
   one minute to the next, and the rate with it.
3. **Cancellation to the provider's event** (timed): every provider subscribes a
   local HTTP receiver (this process); ``--cancellations`` (default 300) patients
   cancel their assigned visit (``patient.cancel``, as the patient API sends it),
   ``--rate`` a second (default 5; the pilot's 162.9 thousand cancellations in
   months, R-CAN-4, are far fewer). More than 72 h ahead, so R-CAN-2 gives
   each slot to the next waiting entry: the latency is from the cancellation until
   the provider's endpoint receives the new visit booked by the waiting room (and,
   for reference, the cancelled one): p50 / p95 / p99 (target p99 < 1 s with RabbitMQ).

``--entries 20000 --slots 2000`` is a quick look. Latest figures (2026-11-26, Python
3.11, 2 vCPUs, nothing else running; the README has the table). AMD EPYC (load average
0.4-1.3): embedded with ``--cancellations 0``, 2,786-4,303 assignments/s over 42 runs
(median 3,510), 0.52-0.81 ms of CPU an assignment with everything it causes;
cancellation -> provider's event p99 14 ms at 5/s; RabbitMQ (``--cancellations 150``),
1,657 assignments/s, p99 39 ms at 5/s, 52 ms at 50/s, saturated at 100/s (one
process). Intel Xeon the same day: 1,307-2,479 assignments/s over 29 runs (median
1,953; its speed moved by 20-30 % from one minute to the next), about 1.07 ms of CPU
an assignment; RabbitMQ 751 assignments/s, p99 82 ms at 5/s. The EPYC again, 15:25-15:45
UTC, 2-3 times slower than at 14:27-15:00 (the probe 248-486 ms against 103-179):
942-1,624 assignments/s over 13 runs (median 1,279), 1.1-1.6 ms of CPU an assignment.
With the commands taking turns (``gateway/turns.py``) and removals from big index
buckets marked dead (``adapters/memory_store._Bucket``), against the code before them
(fe50a35), six pairs of runs alternated (17:51-17:57 UTC, the probe 183-312 ms): 2,012-2,311
-> 2,282-3,073 assignments/s (medians 2,154 -> 2,655; ratios median 1.25); RabbitMQ
943 -> 934 /s. That evening, with the Slot read and the claim shared, the residual filter
and pending inserts into big buckets, against c6a61fc: 14 pairs alternated (19:19-19:47
UTC, the probe 150-271 ms), medians 3,120 -> 3,416 assignments/s (ratios median 1.085);
ten runs of the final code (19:45-19:49, the probe 168-294 ms) 2,286-3,455, median 2,915.
The same code in a later session, twenty runs (20:37-20:50 UTC, the probe 168-290 ms):
2,357-3,774, median 3,101 (the session's first run, just after boot, the probe at 369 ms:
1,898); RabbitMQ 1,265 /s, cancellation -> provider's event p99 91 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import os
import platform
import random
import socket
import statistics
import sys
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from aiohttp import web

from adapters.clock import SandboxClock
from bench import common
from gateway import bootstrap, gc_policy, patients, pesel
from gateway import constants as c
from gateway import subscriptions as subs
from gateway import waiting_rules as rules
from gateway.bootstrap import Services
from gateway.events import command, new_id
from gateway.logging import configure_logging
from gateway.settings import Settings
from gateway.timeutil import from_store, to_store
from mappings import codes

WARSAW = ZoneInfo("Europe/Warsaw")
NOON = datetime(2027, 1, 5, 12, 0, tzinfo=WARSAW)  # a Tuesday
UNLOCK = datetime(2027, 1, 5, 23, 50, 1, tzinfo=WARSAW)
DAY = date(2027, 2, 15)  # Monday: day 41 from 2027-01-05, unlocked at 23:50
CITIES = [
    ("Kraków", "31-147"),
    ("Warszawa", "00-950"),
    ("Gdańsk", "80-001"),
    ("Łódź", "90-001"),
    ("Poznań", "60-101"),
]
QUEUES = ["stable", "urgent"]
BENCH_VHOST = "cer-bench-waiting"
AMQP_DEFAULT = f"amqp://guest:guest@127.0.0.1/{BENCH_VHOST}"


# --------------------------------------------------------------------------- wiring


def settings_for(args: argparse.Namespace) -> Settings:
    # Production mode (no sandbox capture of every message); the sandbox clock is
    # given to the wiring explicitly (bootstrap follows any SandboxClock).
    return Settings(
        cer_mode="production",
        amqp_url=(args.amqp_url if args.bus == "rabbitmq" else None),
        prefetch=args.prefetch,
        outbox_poll_seconds=0.05,
        log_level="WARNING",
        webhook_allow_private_addresses=True,
        token_ttl_seconds=7 * 86400,
        command_timeout_seconds=120.0,
    )


async def purge(settings: Settings) -> None:
    await common.purge(settings, BENCH_VHOST, extra_groups=("bench-probe",))


async def set_clock(services: Services, clock: SandboxClock, when: datetime) -> None:
    clock.set(when)
    await bootstrap.save_clock(services)


async def quiet(services: Services, seconds: float = 0.3) -> None:
    """Until the outbox is empty and the embedded bus's queues are drained."""
    depths_of = getattr(services.bus, "queue_depths", None)
    calm = 0
    while calm < 3:
        await asyncio.sleep(seconds)
        pending = await services.store.pending_events(1)
        try:
            busy = sum((await depths_of()).values()) if depths_of is not None else 0
        except Exception:  # the broker connection is reconnecting: ask again
            busy = 1
        calm = calm + 1 if not pending and busy == 0 else 0


# --------------------------------------------------------------------------- setup


def scope_coding() -> list[dict[str, Any]]:
    return [{"coding": [{"system": codes.SCOPE_SYSTEM, "code": "cardiology"}]}]


async def write(services: Services, tenant: str, ops: list[dict[str, Any]]) -> None:
    from gateway.operations import central_of

    body_ops = []
    for op in ops:
        res = op["resource"]
        body_ops.append(
            {
                "method": "PUT",
                "type": res["resourceType"],
                "id": res["id"],
                "resource": res,
                "central": central_of(res["resourceType"], res),
            }
        )
    msg = command(
        "fhir.write",
        {"mode": "transaction", "ops": body_ops, "representation": False},
        tenant=tenant,
        correlation_id=new_id(),
        now=services.clock.now(),
    )
    reply = await services.bus.request(msg, 120)
    if "error" in reply:
        raise RuntimeError(f"setup write failed: {reply['error']}")


async def setup_slots(
    services: Services, providers: int, slots: int, rng: random.Random
) -> list[dict[str, str]]:
    """Facilities with a schedule and their slots on ``DAY``; returns the facilities."""
    facilities = []
    per = slots // providers
    for i in range(providers):
        tenant = f"wr-bench-{i:03d}"
        city, postal = CITIES[i % len(CITIES)]
        await services.store.insert(
            c.PROVIDERS, {"_id": tenant, "name": f"Poradnia {i}", "client_id": f"bench-{tenant}"}
        )
        head = [
            {
                "resource": {
                    "resourceType": "Location",
                    "id": "loc",
                    "status": "active",
                    "name": f"Poradnia {i}",
                    "address": {"line": ["ul. Długa 5"], "city": city, "postalCode": postal},
                }
            },
            {
                "resource": {
                    "resourceType": "Schedule",
                    "id": "sch",
                    "active": True,
                    "serviceType": scope_coding(),
                    "actor": [{"reference": "Location/loc"}],
                }
            },
        ]
        await write(services, tenant, head)
        ops = []
        for k in range(per + (1 if i < slots % providers else 0)):
            start = datetime(DAY.year, DAY.month, DAY.day, 7, 0, tzinfo=WARSAW) + timedelta(
                minutes=5 * (k % 144)
            )
            category = "first-urgent" if rng.random() < 0.3 else "first-stable"
            ops.append(
                {
                    "resource": {
                        "resourceType": "Slot",
                        "id": f"s{k}",
                        "serviceType": scope_coding(),
                        "appointmentType": {
                            "coding": [{"system": codes.SLOT_CATEGORY_SYSTEM, "code": category}]
                        },
                        "schedule": {"reference": "Schedule/sch"},
                        "status": "free",
                        "start": start.isoformat(),
                        "end": (start + timedelta(minutes=5)).isoformat(),
                    }
                }
            )
        for j in range(0, len(ops), 250):
            await write(services, tenant, ops[j : j + 250])
        facilities.append({"tenant": tenant, "city": city, "postal": postal})
    return facilities


def criteria_for(rng: random.Random, facilities: list[dict[str, str]]) -> dict[str, Any]:
    crit: dict[str, Any] = {}
    r = rng.random()
    if r < 0.35:
        crit["city"] = rng.choice(CITIES)[0]
    elif r < 0.50:
        f = rng.choice(facilities)
        crit["facility"] = f"{f['tenant']}~loc"
    elif r < 0.65:
        crit["postal_code"] = rng.choice(CITIES)[1][:2]
    if rng.random() < 0.3:
        crit["weekdays"] = sorted(rng.sample(range(1, 6), rng.randint(1, 4)))
    if rng.random() < 0.3:
        lo = rng.randint(7, 15)
        crit["hours"] = f"{lo:02d}:00-{lo + rng.randint(2, 4):02d}:00"
    if rng.random() < 0.1:
        crit["from"], crit["to"] = "2027-02-01", "2027-03-31"
    return crit


async def seed_entries(
    services: Services, n: int, facilities: list[dict[str, str]], rng: random.Random
) -> None:
    """``n`` entries as ``waiting_room.enter`` writes them, each with its e-referral."""
    settings = services.settings
    urgent = timedelta(days=settings.waiting_room_urgent_credit_days)
    privileged_credit = timedelta(days=settings.waiting_room_privileged_credit_days)
    now = services.clock.now()
    used: set[str] = set()
    for i in range(n):
        born = date(1940 + rng.randint(0, 60), rng.randint(1, 12), rng.randint(1, 28))
        number = pesel.generate(born, rng.choice(["female", "male"]), rng=rng)
        while number in used:
            number = pesel.generate(born, rng.choice(["female", "male"]), rng=rng)
        used.add(number)
        medical = "urgent" if rng.random() < 0.3 else "stable"
        privileged = rng.random() < 0.05
        key = f"B{i:019d}"
        await services.store.insert(
            c.REFERRALS,
            {
                "_id": key,
                "key": key,
                "code": "1234",
                "pesel": number,
                "scope": "cardiology",
                "category": medical,
                "privileged": privileged,
                "status": patients.REFERRAL_ISSUED,
                "appointment_id": None,
                "issued": to_store(now),
            },
        )
        raw = criteria_for(rng, facilities)
        crit = patients.parse_criteria(rules.criteria_query("cardiology", raw))
        queued = now - timedelta(days=rng.random() * 90)
        eid = f"00000000-0000-4000-8000-{i:012d}"
        queue = rules.queue_of(medical)
        await services.store.insert(
            c.WAITING_ROOM,
            {
                "_id": eid,
                "pesel": number,
                "scope": "cardiology",
                "queue": queue,
                "privileged": privileged,
                "referral": {"key": key, "code": "1234"},
                "criteria": rules.criteria_to_store(crit),
                "loc_key": rules.location_key(rules.criteria_to_store(crit)),
                "criteria_input": raw,
                "contact": {"phone": f"+48600{i:06d}", "email": None},
                "phone_key": f"48600{i:06d}",
                "status": rules.WAITING,
                "active_key": f"cardiology|{key}",
                "queued_at": to_store(queued),
                "rank": rules.rank_of(
                    eid,
                    queued,
                    queue,
                    privileged,
                    urgent_credit=urgent,
                    privileged_credit=privileged_credit,
                ),
                "entered_at": to_store(queued),
                "updated_at": to_store(queued),
                "channel": "portal",
                "gave_up": [],
                "rev": 1,
            },
        )


# --------------------------------------------------------------------------- receiver


class Receiver:
    """The providers' webhook endpoint: when each Appointment notification arrived."""

    def __init__(self) -> None:
        self.arrivals: dict[tuple[str, str], float] = {}  # (slot, status/channel) -> time
        self.port = 0
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.hook)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def hook(self, request: web.Request) -> web.Response:
        now = time.perf_counter()
        body = orjson.loads(await request.read())
        for e in body.get("entry") or []:
            res = e.get("resource") or {}
            if res.get("resourceType") != "Appointment" or not res.get("slot"):
                continue
            channel = next(
                (
                    x["valueCoding"]["code"]
                    for x in res.get("extension") or []
                    if x.get("url") == codes.EXT_BOOKING_CHANNEL
                ),
                "provider",
            )
            tenant = request.headers.get("x-tenant", "")
            key = (
                f"{tenant}~{res['slot'][0]['reference'].split('/')[-1]}",
                f"{res['status']}/{channel}",
            )
            self.arrivals.setdefault(key, now)
        return web.Response(status=200)


async def subscribe(services: Services, tenant: str, url: str) -> None:
    assert services.webhooks is not None
    data = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "bench",
        "criteria": subs.TOPIC_ALL,
        "channel": {
            "type": "rest-hook",
            "endpoint": url,
            "payload": "application/fhir+json",
            "header": [f"x-tenant: {tenant}"],
            "_payload": {
                "extension": [{"url": subs.EXT_PAYLOAD_CONTENT, "valueCode": "full-resource"}]
            },
        },
    }
    spec = subs.parse(data, min_heartbeat=60, max_timeout=15.0, now=services.clock.now())
    await services.webhooks.create(tenant, spec)


# --------------------------------------------------------------------------- the run


ASSIGNED_FILTER = {"scope": "cardiology", "status": rules.ASSIGNED, "queue": {"$in": QUEUES}}


async def calm(services: Services) -> bool:
    """Nothing left to do: the unlock planned, the outbox empty, the bus's queues drained
    (with the embedded bus, nothing in hand either).

    Cheap (no scan of the entries): the bench runs in the gateway's process, so what it
    does while watching is taken from the gateway's event loop.
    """
    state = await services.store.get(c.WAITING_ROOM_STATE, "unlock:cardiology")
    if state is None or state.get("lease") is not None:
        return False
    if await services.store.pending_events(1):
        return False
    # The embedded bus's messages being handled (a queue's depth leaves them out, and
    # one of them may be a batch of a hundred events).
    if getattr(services.bus, "_inflight", None):
        return False
    depths_of = getattr(services.bus, "queue_depths", None)
    try:
        return depths_of is None or sum((await depths_of()).values()) == 0
    except Exception:  # the broker connection is reconnecting
        return False


async def watch_unlock(services: Services, t0: float, timeout: float) -> int:
    """Until the unlock is over; the number of entries assigned.

    Over when, calm (``calm``) at least a second apart, two counts of the assigned
    entries agree; or when the count has not moved for 4 s (a consumer retrying).
    The count reads every assigned entry (tens of ms at 10,000): it runs when calm,
    and otherwise every 2 s. The rate's end is the last ``assigned_at`` (``assigned_times``),
    not when the bench noticed.
    """
    last_n, last_at, last_count = -1, t0, t0
    while True:
        await asyncio.sleep(0.25)
        now = time.perf_counter()
        quiet_now = await calm(services)
        if not quiet_now and now - last_count < 2.0:
            if now - t0 > timeout:
                return max(last_n, 0)
            continue
        n = await services.store.count(c.WAITING_ROOM, ASSIGNED_FILTER)
        last_count = now
        if n != last_n:
            last_n, last_at = n, now
        elif n and ((quiet_now and now - last_at >= 1.0) or now - last_at >= 4.0):
            return n
        if now - t0 > timeout:
            return n


async def loop_lag(lags: list[float], cpu: list[tuple[float, float]], period: float = 0.01) -> None:
    """How late a task that sleeps ``period`` wakes up: what an API request waits for the
    event loop while the unlock runs (appended to ``lags`` until cancelled); and the
    process's CPU time by then (``cpu``: (perf_counter, process_time) pairs)."""
    while True:
        t = time.perf_counter()
        await asyncio.sleep(period)
        now = time.perf_counter()
        lags.append(now - t - period)
        cpu.append((now, time.process_time()))


def cpu_at(cpu: list[tuple[float, float]], when: float) -> float:
    """The process's CPU time at ``when`` (perf_counter), from the samples of ``loop_lag``."""
    i = bisect.bisect_left(cpu, (when, 0.0))
    return cpu[min(i, len(cpu) - 1)][1] if cpu else time.process_time()


async def assigned_times(services: Services) -> list[float]:
    """Seconds from the unlock to each assignment (the entries' ``assigned_at``: the sandbox
    clock, which was set to ``UNLOCK`` when the timing started and flows like the wall clock)."""
    docs = await services.store.find(c.WAITING_ROOM, ASSIGNED_FILTER, fields=("assigned_at",))
    base = UNLOCK.astimezone(UTC)
    return [(from_store(d["assigned_at"]) - base).total_seconds() for d in docs]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    settings = settings_for(args)
    await purge(settings)
    clock = SandboxClock()
    services = bootstrap.build_services(settings, clock=clock)
    if args.no_notifications:
        services.notifier = None  # the waiting room and the booking path alone
    out: dict[str, Any] = {}
    gc_task = None
    if gc_policy.wanted(settings):
        # As ``cer-gateway serve`` runs the embedded default (gateway/gc_policy.py).
        gc_task = asyncio.create_task(
            gc_policy.freeze_survivors(settings.gc_freeze_seconds, settings.gc_thaw_seconds)
        )
    await bootstrap.start(services, workers=True)
    receiver = Receiver()
    await receiver.start()
    try:
        await set_clock(services, clock, NOON)
        await asyncio.sleep(0.3)  # the waiting room's task takes the clock in
        t = time.perf_counter()
        facilities = await setup_slots(services, args.providers, args.slots, rng)
        await seed_entries(services, args.entries, facilities, rng)
        await quiet(services)
        out["setup_s"] = time.perf_counter() - t
        out["probe_before"] = common.speed_probe()
        # Printed now: a profiler attached from outside (py-spy) starts on this line.
        print(f"setup (not timed): {out['setup_s']:.1f} s", flush=True)

        # --- the unlock
        store = services.store
        profiler = None
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        await set_clock(services, clock, UNLOCK)
        lags: list[float] = []
        cpu: list[tuple[float, float]] = []
        lag_task = asyncio.create_task(loop_lag(lags, cpu))
        n = await watch_unlock(services, t0, args.timeout)
        lag_task.cancel()
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        out["unlock_cpu_s"] = time.process_time() - cpu0
        out["assigned"] = n
        times = await assigned_times(services)
        out["unlock_s"] = max(times, default=0.0)
        out["rate"] = n / out["unlock_s"] if out["unlock_s"] > 0 else 0.0
        # The CPU the process had until the last assignment: the rate per CPU-second is
        # what the unlock does with a core of its own (the wall rate depends on the load).
        out["window_cpu_s"] = cpu_at(cpu, t0 + out["unlock_s"]) - cpu0
        out["loop_lag"] = lags
        out["timeline"] = [
            (round(t, 2), i)
            for i, t in enumerate(sorted(times), 1)
            if i % max(1, len(times) // 40) == 0 or i == len(times)
        ]
        out.update(await check(services))
        out["retried"] = {
            m.labels: m.value
            for metric in services.metrics.messages_retried_total.collect()
            for m in metric.samples
            if m.name.endswith("_total") and m.value
        }
        await quiet(services)
        out["probe_after"] = common.speed_probe()

        # --- cancellations to the provider's event (``--cancellations 0``: none)
        booked_at: dict[str, float] = {}
        if args.cancellations <= 0:
            out.update(cancellations=0, reassigned=[], cancelled_seen=[], booked_in_gateway=[])
            out["cancel_wall_s"] = 0.0
            return out

        async def probe(msg: Any) -> None:
            if msg.body.get("channel") == "waiting-room":
                booked_at.setdefault(f"{msg.tenant}~{msg.body['slot_id']}", time.perf_counter())

        await services.bus.consume_events("bench-probe", ["booking.booked"], probe)
        url = f"http://127.0.0.1:{receiver.port}/hook"
        for f in facilities:
            await subscribe(services, f["tenant"], url)
        visits = await store.find(
            c.RESOURCES,
            {"type": "Appointment", "central.channel": "waiting-room", "central.status": "booked"},
            limit=args.cancellations,
        )
        rng.shuffle(visits)
        started: dict[str, float] = {}

        async def cancel_one(i: int, doc: dict[str, Any]) -> None:
            # An open-loop arrival: the i-th cancellation at i / rate seconds.
            await asyncio.sleep(max(0.0, t1 + i / args.rate - time.perf_counter()))
            slot_gid = f"{doc['tenant']}~{doc['central']['slot_ids'][0]}"
            msg = command(
                "patient.cancel",
                {
                    "pesel": doc["central"]["patient_pesel"],
                    "appointment": doc["rid"],
                    "reason": "patient-request",
                },
                tenant=doc["tenant"],
                correlation_id=new_id(),
                now=services.clock.now(),
            )
            started[slot_gid] = time.perf_counter()
            reply = await services.bus.request(msg, 60)
            if "error" in reply:
                started.pop(slot_gid, None)

        t1 = time.perf_counter()
        if args.profile_cancel:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        await asyncio.gather(*(cancel_one(i, d) for i, d in enumerate(visits)))
        deadline = time.perf_counter() + 30
        while time.perf_counter() < deadline:
            got = sum(1 for s in started if (s, "booked/waiting-room") in receiver.arrivals)
            if got >= len(started):
                break
            await asyncio.sleep(0.1)
        out["cancel_wall_s"] = time.perf_counter() - t1
        if args.profile_cancel and profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile_cancel)
        reassigned = [
            receiver.arrivals[(s, "booked/waiting-room")] - t0_
            for s, t0_ in started.items()
            if (s, "booked/waiting-room") in receiver.arrivals
        ]
        cancelled = [
            receiver.arrivals[(s, "cancelled/portal")] - t0_
            for s, t0_ in started.items()
            if (s, "cancelled/portal") in receiver.arrivals
        ]
        out["booked_in_gateway"] = [
            booked_at[s] - t0_ for s, t0_ in started.items() if s in booked_at
        ]
        out["cancellations"] = len(started)
        out["reassigned"] = reassigned
        out["cancelled_seen"] = cancelled
    finally:
        await receiver.stop()
        await bootstrap.stop(services)
        if gc_task is not None:
            gc_task.cancel()
    return out


async def check(services: Services) -> dict[str, Any]:
    """No slot booked twice, no entry assigned twice, every pair within the criteria."""
    store = services.store
    booked = await store.find(
        c.RESOURCES,
        {"type": "Appointment", "central.channel": "waiting-room", "central.status": "booked"},
    )
    per_slot = Counter((d["tenant"], d["central"]["slot_ids"][0]) for d in booked)
    entries = await store.find(
        c.WAITING_ROOM, {"scope": "cardiology", "status": rules.ASSIGNED, "queue": {"$in": QUEUES}}
    )
    per_entry = Counter(e["appointment"] for e in entries)
    bad = 0
    sample = entries[:: max(1, len(entries) // 500)]
    for e in sample:
        tenant, rid = e["slot"].split("~", 1)
        slot = await store.get(c.RESOURCES, f"{tenant}/Slot/{rid}")
        if slot is None or not rules.takes(rules.entry_facts(e), rules.slot_facts(slot)):
            bad += 1
    return {
        "double_booked_slots": sum(1 for n in per_slot.values() if n > 1),
        "entries_twice": sum(1 for n in per_entry.values() if n > 1),
        "visits": len(booked),
        "criteria_violations": bad,
        "checked": len(sample),
    }


# --------------------------------------------------------------------------- report


def machine() -> str:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"machine: nproc={os.cpu_count()}, CPU {model!r}, Python {platform.python_version()}; "
        f"load average {load}"
    )


async def main(args: argparse.Namespace) -> int:
    configure_logging("WARNING")
    print(machine())
    print(
        f"bus: {args.bus}, store: embedded; {args.providers} providers, {args.slots:,} slots "
        f"on {DAY} (day 41), {args.entries:,} waiting entries with mixed criteria"
    )
    r = await run(args)
    if args.verbose:
        print(
            "retried:",
            r["retried"],
            "timeline:",
            r["timeline"][:: max(1, len(r["timeline"]) // 20)],
        )
    print(
        f"[1] unlock at {UNLOCK.strftime('%H:%M:%S')} Warsaw: {r['assigned']:,} assignments in "
        f"{r['unlock_s']:.2f} s = {r['rate']:,.0f} assignments/s (target >= 2,000/s on the "
        f"embedded default); gateway CPU {r['unlock_cpu_s']:.1f} s until everything it caused "
        f"was done ({r['unlock_cpu_s'] / max(r['assigned'], 1) * 1e6:,.0f} us an assignment), "
        f"{r['window_cpu_s']:.1f} s until the last assignment "
        f"({r['assigned'] / max(r['window_cpu_s'], 1e-9):,.0f} assignments per CPU-second)"
    )
    print(
        f"    the machine's speed meanwhile (bench.common.speed_probe, CPU ms, lower is "
        f"faster): {r['probe_before']:.0f} before the "
        f"unlock, {r['probe_after']:.0f} after"
    )
    lag = r["loop_lag"]
    print(
        f"    the event loop's lag meanwhile (what an API request waits, ms): "
        f"p50 {pct(lag, 50) * 1000:.0f}, p99 {pct(lag, 99) * 1000:.0f}, "
        f"max {max(lag, default=0) * 1000:.0f}"
    )
    print(
        f"    checked: {r['visits']:,} waiting-room visits, slots booked twice "
        f"{r['double_booked_slots']}, entries assigned twice {r['entries_twice']}, criteria "
        f"violations {r['criteria_violations']} of {r['checked']} sampled"
    )
    lat = r["reassigned"]
    lat_c = r["cancelled_seen"]
    print(
        f"[2] {r['cancellations']} cancellations > 72 h ahead ({args.rate:g}/s, "
        f"{r['cancel_wall_s']:.1f} s): the provider received the waiting room's new visit for "
        f"{len(lat)} of them; cancellation -> provider's event (ms): "
        f"p50 {pct(lat, 50) * 1000:.0f}, p95 {pct(lat, 95) * 1000:.0f}, "
        f"p99 {pct(lat, 99) * 1000:.0f}, max {max(lat, default=0) * 1000:.0f} "
        f"(target p99 < 1,000 ms with RabbitMQ)"
    )
    inner = r["booked_in_gateway"]
    print(
        f"    cancellation -> the new visit booked in the gateway (booking.booked, ms): "
        f"p50 {pct(inner, 50) * 1000:.0f}, p99 {pct(inner, 99) * 1000:.0f}"
    )
    if lat_c:
        print(
            f"    the cancellation itself at the provider (ms): p50 {pct(lat_c, 50) * 1000:.0f}, "
            f"p99 {pct(lat_c, 99) * 1000:.0f}; mean re-assignment "
            f"{statistics.mean(lat) * 1000:.0f} ms"
        )
    ok = r["double_booked_slots"] == 0 and r["entries_twice"] == 0 and r["criteria_violations"] == 0
    return 0 if ok else 1


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--entries", type=int, default=100_000)
    p.add_argument("--slots", type=int, default=10_000)
    p.add_argument("--providers", type=int, default=50)
    p.add_argument("--cancellations", type=int, default=300)
    p.add_argument("--rate", type=float, default=5.0, help="cancellations a second")
    p.add_argument("--prefetch", type=int, default=64)
    p.add_argument("--bus", choices=("embedded", "rabbitmq"), default="embedded")
    p.add_argument("--amqp-url", default=os.environ.get("AMQP_URL_BENCH", AMQP_DEFAULT))
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--profile", default="", help="write a cProfile of the unlock to this file")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--profile-cancel", default="", help="write a cProfile of the cancellations")
    p.add_argument(
        "--no-notifications",
        action="store_true",
        help="run without the patient notification service (its share of the CPU)",
    )
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args(sys.argv[1:]))))
