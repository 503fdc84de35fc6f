"""``cer-gateway``: parse the command line and hand off. Settings come from the environment."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

import structlog
from aiohttp import web

from gateway import bootstrap, gc_policy, report_cli
from gateway.http import bundles
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
    tok = sub.add_parser(
        "token", help="get a provider access token: sign a client assertion, call /auth/token"
    )
    tok.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway's base URL")
    tok.add_argument("--client-id", required=True)
    tok.add_argument("--key", required=True, help="file with the provider's private key (PEM)")
    report_cli.add_parsers(sub)
    imp = sub.add_parser(
        "import",
        help="initial import (R-SCHED-5): send FHIR NDJSON / Bundle files to the gateway",
        description="Import a provider's Locations, Schedules, Slots and Appointments from "
        "FHIR NDJSON files (one resource per line) or Bundle files, files or directories. "
        "Streams them in chunks to an import job; run the same command again to resume "
        "after an interruption. Exit status 0: all applied; 2: some rejected (see the "
        "error file); 1: failed.",
    )
    imp.add_argument("paths", nargs="+", metavar="PATH", help="NDJSON / Bundle files, directories")
    imp.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway's base URL")
    imp.add_argument("--token", help="a provider access token (or --client-id and --key)")
    imp.add_argument("--client-id")
    imp.add_argument("--key", help="file with the provider's private key (PEM)")
    imp.add_argument("--chunk-size", type=int, default=1000, help="resources per chunk")
    imp.add_argument("--in-flight", type=int, default=2, help="chunks sent ahead (1 = none)")
    imp.add_argument("--state", help="the local checkpoint file (default .cer-import-<hash>.json)")
    imp.add_argument(
        "--errors", default="import-errors.ndjson", help="where to write the error file"
    )
    imp.add_argument("--restart", action="store_true", help="ignore the checkpoint: a new job")
    imp.add_argument("--label", default="", help="a label for the job")
    imp.add_argument(
        "--progress",
        choices=("auto", "bar", "plain", "none"),
        default="auto",
        help="auto: a bar on a terminal, a line every 5 s otherwise",
    )
    args = parser.parse_args(argv)
    if args.command in ("report", "reconcile"):
        return report_cli.run(args)
    if args.command == "token":
        return _token(args.url, args.client_id, args.key)
    if args.command == "import":
        from gateway import import_client

        return import_client.main(
            import_client.Options(
                url=args.url,
                paths=tuple(args.paths),
                token=args.token,
                client_id=args.client_id,
                key_file=args.key,
                chunk_size=max(1, args.chunk_size),
                in_flight=max(1, args.in_flight),
                state_file=args.state,
                errors_file=args.errors,
                restart=args.restart,
                label=args.label,
                progress=args.progress,
            )
        )
    settings = Settings()
    configure_logging(settings.log_level)
    if args.command == "worker":
        asyncio.run(_run_worker(settings))
        return 0
    app = create_app(settings, workers=args.command == "serve")
    if gc_policy.wanted(settings):
        app.cleanup_ctx.append(gc_policy.cleanup_ctx(settings))
    app.on_startup.append(bundles.warm_pool)  # validation processes ready before Bundles
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


def _token(base: str, client_id: str, key_file: str) -> int:
    """Print an access token; the assertion's audience is ``<base>/auth/token``."""
    import json
    import urllib.error
    import urllib.parse
    import urllib.request
    from datetime import UTC, datetime
    from pathlib import Path

    from gateway.auth import make_client_assertion

    url = base.rstrip("/") + "/auth/token"
    assertion = make_client_assertion(Path(key_file).read_text(), client_id, url, datetime.now(UTC))
    data = urllib.parse.urlencode(
        {
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        }
    ).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as resp:
            print(json.loads(resp.read())["access_token"])
    except urllib.error.HTTPError as err:
        print(err.read().decode(), file=sys.stderr)
        return 1
    return 0


async def _run_worker(settings: Settings) -> None:
    services = bootstrap.build_services(settings)
    await bootstrap.start(services, workers=True)
    if gc_policy.wanted(settings):
        services.tasks.append(
            asyncio.create_task(
                gc_policy.freeze_survivors(settings.gc_freeze_seconds, settings.gc_thaw_seconds),
                name="gc-freeze",
            )
        )
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
