"""Operations: liveness, readiness (broker and store), Prometheus metrics."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.http.keys import SERVICES
from gateway.http.responses import json_response


async def live(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    services = request.app[SERVICES]

    async def check(coro: object) -> bool:
        try:
            return bool(await asyncio.wait_for(coro, 3.0))  # type: ignore[arg-type]
        except Exception:
            return False

    bus_ok, store_ok = await asyncio.gather(
        check(services.bus.ping()), check(services.store.ping())
    )
    body = {
        "status": "ok" if bus_ok and store_ok else "unavailable",
        "checks": {"broker": "ok" if bus_ok else "down", "store": "ok" if store_ok else "down"},
    }
    return json_response(body, 200 if bus_ok and store_ok else 503)


async def metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[SERVICES].metrics.render()
    return web.Response(body=body, headers={"Content-Type": content_type})


def routes(app: web.Application) -> None:
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/metrics", metrics)
