"""Sample data for the embedded default run, and the hint of what to try.

Seeds one sandbox provider with a facility (Location) through the same command
path as the FHIR API, then prints a token and copy-paste commands.
"""

from __future__ import annotations

import sys

from aiohttp import web

from gateway import constants as c
from gateway.auth import Principal, generate_client_keypair
from gateway.events import command
from gateway.http.fhir import prepare
from gateway.http.keys import SERVICES
from gateway.timeutil import to_store

SAMPLE_PROVIDER = "prov-sample"
SAMPLE_LOCATION = {
    "resourceType": "Location",
    "id": "sample-clinic",
    "status": "active",
    "name": "Poradnia Kardiologiczna (przykład)",
    "address": {"line": ["ul. Przykładowa 1"], "city": "Warszawa", "postalCode": "00-950"},
}


async def seed_on_startup(app: web.Application) -> None:
    services = app[SERVICES]
    if await services.store.get(c.PROVIDERS, SAMPLE_PROVIDER) is None:
        _, public_pem = generate_client_keypair()
        await services.store.insert(
            c.PROVIDERS,
            {
                "_id": SAMPLE_PROVIDER,
                "client_id": "client-sample",
                "name": "Sample provider",
                "public_key_pem": public_pem,
                "sandbox": True,
                "created": to_store(services.clock.now()),
            },
        )
    await services.bus.request(
        command(
            "fhir.write",
            {
                "mode": "single",
                "ops": [prepare("PUT", "Location", "sample-clinic", SAMPLE_LOCATION)],
            },
            tenant=SAMPLE_PROVIDER,
            correlation_id="sample-data",
            now=services.clock.now(),
        ),
        services.settings.command_timeout_seconds,
    )
    token = services.tokens.issue(Principal("provider", SAMPLE_PROVIDER))
    base = f"http://{services.settings.host}:{services.settings.port}"
    print(hint(base, token, services.settings.sandbox), file=sys.stderr, flush=True)


def hint(base: str, token: str, sandbox: bool) -> str:
    lines = [
        "",
        "CeR Gateway is running (embedded broker and store).",
        f"  health:   curl -s {base}/health/ready",
        f"  metadata: curl -s {base}/fhir/metadata",
        "  sample provider token (valid 1 h):",
        f"    export TOKEN={token}",
        f'  read the sample facility:  curl -s -H "Authorization: Bearer $TOKEN" '
        f"{base}/fhir/Location/sample-clinic",
    ]
    if sandbox:
        lines += [
            f"  a new test provider:        curl -s -X POST {base}/sandbox/providers",
            f"  a test patient:             curl -s -X POST {base}/sandbox/patients "
            '-d \'{"sex":"female","birth_date":"1970-05-01"}\'',
            f"  the sandbox clock:          curl -s {base}/sandbox/clock",
        ]
    lines.append("")
    return "\n".join(lines)
