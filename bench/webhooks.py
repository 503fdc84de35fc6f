"""Webhook delivery benchmark (issue 6, item 7): ``python -m bench.webhooks``.

Two runs on the gateway's real wiring (``bootstrap.build_services`` +
``bootstrap.start`` with the workers, sandbox mode, embedded store; the bus is
the embedded one, or RabbitMQ with ``--bus rabbitmq``):

1. **Throughput.** ``--providers`` providers (default 50), each with one
   ``full-resource`` subscription, spread over ``--receivers`` local HTTP
   receivers (default 4 aiohttp servers in a child process, which verify every
   signature with the ``standardwebhooks`` library and count the event
   numbers). ``--events`` (default 20,000) ``resource.Slot.updated`` events
   with channel ``portal`` are published on the bus, as the outbox relay
   publishes them after a patient's change, round-robin over the providers;
   the Slot versions they name are the Slots' current documents in the store
   (notifications carry the resource). Timed from the first publish until the
   receivers have counted every event notification: deliveries/s (target at
   least 2,000/s). This measures the webhook path (dispatch, numbering,
   delivery, signing, HTTP); the FHIR write path in front of it is
   ``bench/ingest.py``'s subject.

2. **Loss.** The same wiring on the sandbox clock. One provider's receiver
   (in this process) is stopped; for ``--down-minutes`` of sandbox clock
   (default 60, one-minute steps) ``--per-minute`` events a minute (default
   100) keep coming for every provider; the failing subscription's retries
   follow the schedule on the sandbox clock. Then the receiver comes back and
   the clock advances in 5-minute steps until every receiver holds every
   number from 1 to its subscription's ``events-since-subscription-start``.
   Prints events lost (target 0), duplicates, tries and sandbox time to drain.

``--events 5000`` is a quick look.

Last run (2 vCPUs, Intel Xeon, Python 3.11.7; 2026-11-26): embedded, nothing
else running (load average 0.38), 2,296 deliveries/s, 431 us of gateway CPU per
delivery (the event loop's one core used in full), receivers 98 us; RabbitMQ,
with other work on the machine (load 1.4-3.1), 321/s, 1,553 us (bound by the
events' own confirmed publishes and three consumer groups); loss run on both: 0
of 6,000 events lost, 0 duplicates. On an AMD EPYC machine of the same size the
embedded rate was 1,467/s (679 us).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import platform
import socket
import sys
import time
import uuid
from datetime import timedelta
from importlib import metadata
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from adapters.clock import SandboxClock
from bench import common
from bench.common import cpu_model
from gateway import bootstrap, gc_policy, resources
from gateway import constants as c
from gateway import subscriptions as subs
from gateway.bootstrap import Services
from gateway.logging import configure_logging
from gateway.ports import Envelope
from gateway.settings import Settings
from gateway.timeutil import to_store

# A vhost of its own (made with rabbitmqctl when it can), so nothing else on the broker is touched.
BENCH_VHOST = "cer-bench-webhooks"
AMQP_DEFAULT = f"amqp://guest:guest@127.0.0.1/{BENCH_VHOST}"


# --------------------------------------------------------------------------- receivers


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Counter:
    """What a receiver saw: verified event numbers per subscription, and failures."""

    def __init__(self) -> None:
        self.secrets: dict[str, Any] = {}
        self.numbers: dict[str, list[int]] = {}
        self.bad = 0
        self.other = 0

    def record(self, raw: bytes, headers: dict[str, str]) -> None:
        body = orjson.loads(raw)
        params = {p["name"]: p for p in body["entry"][0]["resource"]["parameter"]}
        sid = params["subscription"]["valueReference"]["reference"].rsplit("/", 1)[1]
        hook = self.secrets.get(sid)
        if hook is None:
            self.other += 1
            return
        try:
            # The body was parsed above (orjson): the library checks the signature only.
            hook.verify(raw, headers, json_parse=False)
        except Exception:
            self.bad += 1
            return
        if params["type"]["valueCode"] != "event-notification":
            self.other += 1
            return
        for p in body["entry"][0]["resource"]["parameter"]:
            if p["name"] == "notification-event":
                for part in p["part"]:
                    if part["name"] == "event-number":
                        self.numbers.setdefault(sid, []).append(int(part["valueString"]))

    def app(self) -> web.Application:
        from standardwebhooks.webhooks import Webhook

        async def hook(request: web.Request) -> web.Response:
            self.record(await request.read(), dict(request.headers))
            return web.Response(status=204)

        async def secrets(request: web.Request) -> web.Response:
            for sid, secret in (await request.json()).items():
                self.secrets[sid] = Webhook(secret)
            return web.Response(status=204)

        async def stats(request: web.Request) -> web.Response:
            return web.json_response(
                {
                    "count": sum(len(v) for v in self.numbers.values()),
                    "bad": self.bad,
                    "other": self.other,
                    "numbers": self.numbers if request.query.get("numbers") else {},
                }
            )

        app = web.Application()
        app.router.add_post("/hook", hook)
        app.router.add_post("/_secrets", secrets)
        app.router.add_get("/_stats", stats)
        return app


def receiver_process(ports: list[int]) -> None:
    """Child process: one counter behind ``ports`` (one aiohttp site per port)."""

    async def serve() -> None:
        counter = Counter()
        runner = web.AppRunner(counter.app(), access_log=None)
        await runner.setup()
        for port in ports:
            await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        await asyncio.Event().wait()

    asyncio.run(serve())


class LocalReceiver:
    """A receiver in this process that can go down (connection refused) and come back."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.counter = Counter()
        self._runner: web.AppRunner | None = None

    async def up(self) -> None:
        self._runner = web.AppRunner(self.counter.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def down(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


# --------------------------------------------------------------------------- gateway side


def settings_for(args: argparse.Namespace) -> Settings:
    return Settings(
        cer_mode="sandbox",
        amqp_url=(args.amqp_url if args.bus == "rabbitmq" else None),
        prefetch=args.prefetch,
        outbox_poll_seconds=0.05,
        log_level="WARNING",
        webhook_allow_private_addresses=True,
        webhook_sweep_seconds=0.2,
        token_ttl_seconds=7 * 86400,
    )


async def purge(settings: Settings) -> None:
    await common.purge(settings, BENCH_VHOST)


def slot_central(n: int) -> dict[str, Any]:
    return {
        "status": "busy",
        "scope": "cardiology",
        "category": "first-stable",
        "schedule_id": "s1",
        "start": f"2027-01-11T{7 + n % 8:02d}:00:00.000000Z",
        "end": f"2027-01-11T{7 + n % 8:02d}:20:00.000000Z",
        "appointment_id": None,
        "identifiers": [],
    }


def slot_resource(rid: str, n: int) -> dict[str, Any]:
    return {
        "resourceType": "Slot",
        "id": rid,
        "meta": {"versionId": "1", "lastUpdated": "2026-11-25T08:00:00Z"},
        "serviceType": [
            {
                "coding": [
                    {"system": "http://cer-gateway.org/fhir/CodeSystem/scope", "code": "cardiology"}
                ]
            }
        ],
        "appointmentType": {
            "coding": [
                {
                    "system": "http://cer-gateway.org/fhir/CodeSystem/slot-category",
                    "code": "first-stable",
                }
            ]
        },
        "schedule": {"reference": "Schedule/s1"},
        "status": "busy",
        "start": f"2027-01-11T{8 + n % 8:02d}:00:00+01:00",
        "end": f"2027-01-11T{8 + n % 8:02d}:20:00+01:00",
    }


async def setup_providers(
    services: Services, endpoints: list[str], slots_per_provider: int = 20
) -> dict[str, tuple[str, str]]:
    """One provider per endpoint, with one subscription (handshake) and Slot versions.

    Returns tenant -> (subscription id, secret).
    """
    assert services.webhooks is not None
    out = {}
    for i, endpoint in enumerate(endpoints):
        tenant = f"bench-{i:03d}"
        data = {
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "bench",
            "criteria": subs.TOPIC_ALL,
            "channel": {
                "type": "rest-hook",
                "endpoint": endpoint,
                "payload": "application/fhir+json",
                "_payload": {
                    "extension": [{"url": subs.EXT_PAYLOAD_CONTENT, "valueCode": "full-resource"}]
                },
            },
        }
        spec = subs.parse(data, min_heartbeat=60, max_timeout=15.0, now=services.clock.now())
        doc, secret = await services.webhooks.create(tenant, spec)
        out[tenant] = (doc["_id"], secret)
        for n in range(slots_per_provider):
            rid = f"slot-{n}"
            # Version 1 is the current one: the Slot's document, as a write leaves it
            # (``resources.apply_put``; no event in its outbox: the run publishes them).
            await services.store.insert(
                c.RESOURCES,
                {
                    "_id": resources.doc_id(tenant, "Slot", rid),
                    "tenant": tenant,
                    "type": "Slot",
                    "rid": rid,
                    "version": 1,
                    "last_updated": "2026-11-25T08:00:00.000Z",
                    "deleted": False,
                    "resource": slot_resource(rid, n),
                    "central": slot_central(n),
                    "ident_keys": [],
                    "last_msg": "bench",
                    "created": "2026-11-25T08:00:00.000Z",
                },
            )
    return out


def change(tenant: str, n: int, services: Services, slots_per_provider: int) -> Envelope:
    return Envelope(
        id=uuid.uuid4().hex,
        type="resource.Slot.updated",
        body={
            "type": "Slot",
            "id": f"slot-{n % slots_per_provider}",
            "version": 1,
            "channel": "portal",
        },
        tenant=tenant,
        correlation_id=uuid.uuid4().hex,
        created_at=to_store(services.clock.now()),
    )


async def publish_all(services: Services, envelopes: list[Envelope], batch: int = 200) -> None:
    for i in range(0, len(envelopes), batch):
        await asyncio.gather(*(services.bus.publish(e) for e in envelopes[i : i + batch]))


async def stats(session: aiohttp.ClientSession, url: str, numbers: bool = False) -> dict[str, Any]:
    async with session.get(url + ("?numbers=1" if numbers else "")) as resp:
        data: dict[str, Any] = await resp.json()
        return data


async def idle(services: Services, settle: float = 0.05) -> None:
    """Wait until the webhook queues are empty twice in a row."""
    depths_of = getattr(services.bus, "queue_depths", None)
    quiet = 0
    while quiet < 2:
        await asyncio.sleep(settle)
        if depths_of is None:
            quiet += 1
            continue
        depths = await depths_of()
        busy = sum(
            depths.get(f"{c.EVENT_QUEUE_PREFIX}{g}", 0)
            for g in (c.WEBHOOK_GROUP, c.WEBHOOK_DELIVERY_GROUP)
        )
        quiet = quiet + 1 if busy == 0 else 0


async def advance(services: Services, clock: SandboxClock, step: timedelta) -> None:
    """Move the sandbox clock (and share it, as POST /sandbox/clock does)."""
    clock.advance(step)
    await bootstrap.save_clock(services)


def start_gc_policy(settings: Settings) -> asyncio.Task[None] | None:
    """The garbage-collector policy ``cer-gateway serve`` runs with the embedded store."""
    if not gc_policy.wanted(settings):
        return None
    return asyncio.create_task(
        gc_policy.freeze_survivors(settings.gc_freeze_seconds, settings.gc_thaw_seconds)
    )


# --------------------------------------------------------------------------- runs


async def run_throughput(args: argparse.Namespace) -> dict[str, Any]:
    ports = free_ports(args.receivers)
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=receiver_process, args=(ports,), daemon=True)
    child.start()
    settings = settings_for(args)
    await purge(settings)
    services = bootstrap.build_services(settings)
    gc_task: asyncio.Task[None] | None = None
    try:
        async with aiohttp.ClientSession() as session:
            control = f"http://127.0.0.1:{ports[0]}"
            for _ in range(100):
                with contextlib.suppress(aiohttp.ClientError):
                    await stats(session, control + "/_stats")
                    break
                await asyncio.sleep(0.1)
            await bootstrap.start(services, workers=True)
            gc_task = start_gc_policy(settings)
            urls = [f"http://127.0.0.1:{p}/hook" for p in ports]
            subs_by_tenant = await setup_providers(
                services, [urls[i % len(urls)] for i in range(args.providers)]
            )
            async with session.post(
                control + "/_secrets", json={sid: secret for sid, secret in subs_by_tenant.values()}
            ):
                pass
            tenants = list(subs_by_tenant)
            envelopes = [
                change(tenants[i % len(tenants)], i // len(tenants), services, 20)
                for i in range(args.events)
            ]
            cpu0 = time.process_time()
            receivers_cpu0 = process_cpu(child.pid)
            t0 = time.perf_counter()
            publisher = asyncio.create_task(publish_all(services, envelopes))
            published_at = None
            seen: dict[str, Any] = {}
            while True:
                await asyncio.sleep(0.05)
                if published_at is None and publisher.done():
                    publisher.result()
                    published_at = time.perf_counter() - t0
                seen = await stats(session, control + "/_stats")
                if seen["count"] >= args.events:
                    break
                if time.perf_counter() - t0 > args.timeout:
                    raise SystemExit(f"throughput run timed out: {seen['count']} of {args.events}")
            elapsed = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            receivers_cpu = process_cpu(child.pid) - receivers_cpu0
            full = await stats(session, control + "/_stats", numbers=True)
            gaps = 0
            for sid, _ in subs_by_tenant.values():
                got = sorted(set(full["numbers"].get(sid, [])))
                gaps += (got[-1] if got else 0) - len(got)
            return {
                "events": args.events,
                "seconds": elapsed,
                "published_s": published_at or elapsed,
                "rate": args.events / elapsed,
                "bad": seen["bad"],
                "duplicates": seen["count"] - args.events,
                "gaps": gaps,
                "cpu": cpu,
                "receivers_cpu": receivers_cpu,
            }
    finally:
        if gc_task is not None:
            gc_task.cancel()
        await bootstrap.stop(services)
        child.terminate()
        child.join(5)


async def run_loss(args: argparse.Namespace) -> dict[str, Any]:
    ports = free_ports(args.receivers + 1)
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=receiver_process, args=(ports[:-1],), daemon=True)
    child.start()
    local = LocalReceiver(ports[-1])
    await local.up()
    settings = settings_for(args)
    await purge(settings)
    clock = SandboxClock()
    services = bootstrap.build_services(settings, clock=clock)
    try:
        async with aiohttp.ClientSession() as session:
            control = f"http://127.0.0.1:{ports[0]}"
            for _ in range(100):
                with contextlib.suppress(aiohttp.ClientError):
                    await stats(session, control + "/_stats")
                    break
                await asyncio.sleep(0.1)
            await bootstrap.start(services, workers=True)
            urls = [f"http://127.0.0.1:{p}/hook" for p in ports[:-1]]
            # The first provider's endpoint is the local receiver, the one that goes down.
            endpoints = [f"http://127.0.0.1:{ports[-1]}/hook"]
            endpoints += [urls[i % len(urls)] for i in range(args.providers - 1)]
            subs_by_tenant = await setup_providers(services, endpoints)
            secrets = {sid: secret for sid, secret in subs_by_tenant.values()}
            async with session.post(control + "/_secrets", json=secrets):
                pass
            from standardwebhooks.webhooks import Webhook

            local.counter.secrets = {sid: Webhook(s) for sid, s in secrets.items()}
            down_tenant = next(iter(subs_by_tenant))
            down_sid = subs_by_tenant[down_tenant][0]
            await local.down()
            tenants = list(subs_by_tenant)
            generated: dict[str, int] = dict.fromkeys(tenants, 0)
            t0 = time.perf_counter()
            start_clock = clock.now()
            n = 0
            for _minute in range(args.down_minutes):
                batch = []
                for _ in range(args.per_minute):
                    tenant = tenants[n % len(tenants)]
                    batch.append(change(tenant, n, services, 20))
                    generated[tenant] += 1
                    n += 1
                await publish_all(services, batch)
                await idle(services)
                await advance(services, clock, timedelta(minutes=1))
            down_for = clock.now() - start_clock
            tries_while_down = await services.store.count(
                c.WEBHOOK_ATTEMPTS, {"subscription": down_sid, "kind": "event"}
            )
            await local.up()
            back_at = clock.now()
            missing = args.down_minutes * args.per_minute
            steps = 0
            while missing and steps < 12 * 30:
                await advance(services, clock, timedelta(minutes=5))
                steps += 1
                await idle(services)
                full = await stats(session, control + "/_stats", numbers=True)
                numbers = {**full["numbers"], **local.counter.numbers}
                missing = sum(
                    generated[t] - len(set(numbers.get(sid, [])))
                    for t, (sid, _) in subs_by_tenant.items()
                )
            drained_after = clock.now() - back_at
            full = await stats(session, control + "/_stats", numbers=True)
            numbers = {**full["numbers"], **local.counter.numbers}
            lost = 0
            duplicates = 0
            for tenant, (sid, _) in subs_by_tenant.items():
                assert services.webhooks is not None
                counted = await services.webhooks.events_count(sid)
                got = numbers.get(sid, [])
                expected = set(range(1, generated[tenant] + 1))
                lost += len(expected - set(got))
                duplicates += len(got) - len(set(got))
                if counted != generated[tenant]:
                    lost += abs(counted - generated[tenant])
            down_got = numbers.get(down_sid, [])
            return {
                "events": n,
                "down_for": down_for,
                "down_events": generated[down_tenant],
                "down_received": len(set(down_got)),
                "down_in_order": down_got == sorted(down_got),
                "tries_while_down": tries_while_down,
                "drained_after": drained_after,
                "lost": lost,
                "duplicates": duplicates,
                "bad": full["bad"] + local.counter.bad,
                "wall": time.perf_counter() - t0,
                "failed": await services.store.count(c.WEBHOOK_EVENTS, {"status": "failed"}),
            }
    finally:
        await bootstrap.stop(services)
        await local.down()
        child.terminate()
        child.join(5)


# --------------------------------------------------------------------------- report


def process_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) of a child process so far; 0 where /proc is missing."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> str:
    names = ("aiohttp", "aio-pika", "orjson", "standardwebhooks")
    libs = []
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            libs.append(f"{name} {metadata.version(name)}")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"machine: nproc={os.cpu_count()} (usable {len(os.sched_getaffinity(0))}), "
        f"CPU {cpu_model()!r}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}; load average {load}\n"
        f"libraries: {', '.join(libs)}"
    )


async def main(args: argparse.Namespace) -> int:
    configure_logging("WARNING")
    print(machine())
    print(
        f"bus: {args.bus}{' (' + args.amqp_url + ')' if args.bus == 'rabbitmq' else ''}, "
        f"store: embedded, prefetch {args.prefetch}; receivers: {args.receivers} aiohttp "
        "servers in a child process, every signature verified with standardwebhooks"
    )
    ok = True
    if not args.skip_throughput:
        print(
            f"\n[1] throughput: {args.events:,} resource.Slot.updated events (channel portal) "
            f"over {args.providers} providers, one full-resource subscription each"
        )
        t = await run_throughput(args)
        print(
            f"    delivered {t['events']:,} signed notifications in {t['seconds']:.2f} s "
            f"(published in {t['published_s']:.2f} s): {t['rate']:,.0f} deliveries/s "
            f"(target >= 2,000/s); bad signatures {t['bad']}, "
            f"duplicates {t['duplicates']}, gaps {t['gaps']}"
        )
        per = t["cpu"] / t["events"]
        print(
            f"    gateway process CPU {t['cpu']:.1f} s ({t['cpu'] / t['seconds']:.2f} cores): "
            f"{per * 1e6:.0f} us per delivery, i.e. {1 / per:,.0f} deliveries/s per core "
            "it has to itself (the receivers run in their own process)"
        )
        if t["receivers_cpu"]:
            print(
                f"    receivers' process CPU {t['receivers_cpu']:.1f} s "
                f"({t['receivers_cpu'] / t['seconds']:.2f} cores): "
                f"{t['receivers_cpu'] / t['events'] * 1e6:.0f} us per delivery"
            )
        ok = ok and t["rate"] >= 2000 and t["bad"] == 0 and t["gaps"] == 0
    if not args.skip_loss:
        print(
            f"\n[2] loss: one receiver down for {args.down_minutes} min of sandbox clock, "
            f"{args.per_minute} events a minute over {args.providers} providers"
        )
        r = await run_loss(args)
        print(
            f"    {r['events']:,} events; the down provider had {r['down_events']} "
            f"(tries while down: {r['tries_while_down']}); back up, every event arrived "
            f"after {r['drained_after']} of sandbox clock (retry schedule); "
            f"down receiver got {r['down_received']}/{r['down_events']}"
            f"{' in order' if r['down_in_order'] else ''}"
        )
        print(
            f"    events lost: {r['lost']} (target 0); duplicates {r['duplicates']}; "
            f"bad signatures {r['bad']}; dead-lettered {r['failed']}; wall {r['wall']:.1f} s"
        )
        ok = ok and r["lost"] == 0
    return 0 if ok else 1


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--providers", type=int, default=50)
    p.add_argument("--receivers", type=int, default=4)
    p.add_argument("--prefetch", type=int, default=256)
    p.add_argument("--bus", choices=("embedded", "rabbitmq"), default="embedded")
    p.add_argument("--amqp-url", default=os.environ.get("AMQP_URL_BENCH", AMQP_DEFAULT))
    p.add_argument("--down-minutes", type=int, default=60)
    p.add_argument("--per-minute", type=int, default=100)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-loss", action="store_true")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args(sys.argv[1:]))))
