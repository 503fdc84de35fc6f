"""``cer-gateway``: parse the command line and hand off. Settings come from the environment."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

import structlog
from aiohttp import web

from gateway import bootstrap
from gateway.http.app import create_app
from gateway.logging import configure_logging
from gateway.settings import Settings

log = structlog.get_logger("gateway.cli")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cer-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="the HTTP API and the workers in one process")
    sub.add_parser("api", help="the HTTP API only (workers run elsewhere)")
    sub.add_parser("worker", help="the workers only (command consumers, outbox relay)")
    args = parser.parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level)
    if args.command == "worker":
        asyncio.run(_run_worker(settings))
        return 0
    app = create_app(settings, workers=args.command == "serve")
    if settings.sample_data and args.command == "serve":
        from gateway.sample import seed_on_startup

        app.on_startup.append(seed_on_startup)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        print=lambda *_: None,
        access_log=None,
        handle_signals=True,
    )
    return 0


async def _run_worker(settings: Settings) -> None:
    services = bootstrap.build_services(settings)
    await bootstrap.start(services, workers=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await bootstrap.stop(services)


if __name__ == "__main__":
    sys.exit(main())
