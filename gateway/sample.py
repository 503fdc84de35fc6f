"""Sample data for the embedded default run, and the hint of what to try.

Seeds one sandbox provider with a facility (Location), a cardiology Schedule and
two weeks of slots from next Monday, through the same command path as the FHIR
API (one transaction), then prints a token and copy-paste commands.
"""

from __future__ import annotations

import sys
from datetime import datetime, time, timedelta
from typing import Any

from aiohttp import web

from gateway import constants as c
from gateway.auth import Principal, generate_client_keypair
from gateway.events import command
from gateway.http.fhir import prepare
from gateway.http.keys import SERVICES
from gateway.timeutil import WARSAW, to_store

SAMPLE_PROVIDER = "prov-sample"
SAMPLE_LOCATION = {
    "resourceType": "Location",
    "id": "sample-clinic",
    "status": "active",
    "name": "Poradnia Kardiologiczna (przykład)",
    "address": {"line": ["ul. Przykładowa 1"], "city": "Warszawa", "postalCode": "00-950"},
}


SCOPE = "http://cer-gateway.org/fhir/CodeSystem/scope"
CATEGORY = "http://cer-gateway.org/fhir/CodeSystem/slot-category"
SAMPLE_SCHEDULE = {
    "resourceType": "Schedule",
    "active": True,
    "serviceType": [{"coding": [{"system": SCOPE, "code": "cardiology"}]}],
    "actor": [{"reference": "Location/sample-clinic"}],
    "comment": "Konsultacje kardiologiczne (przykład)",
}


def sample_slots(now: datetime, weeks: int = 2) -> list[tuple[str, dict[str, Any]]]:
    """Mon-Fri 08:00-12:00 Europe/Warsaw, 20-minute cardiology slots from next Monday."""
    today = now.astimezone(WARSAW).date()
    monday = today + timedelta(days=7 - today.weekday())
    out = []
    for day in range(weeks * 7):
        d = monday + timedelta(days=day)
        if d.weekday() >= 5:
            continue
        start = datetime.combine(d, time(8, 0), tzinfo=WARSAW)
        for i in range(12):
            begin = start + timedelta(minutes=20 * i)
            category = "first-urgent" if i == 0 else "control" if i == 11 else "first-stable"
            rid = f"sample-{begin:%Y%m%d-%H%M}"
            out.append(
                (
                    rid,
                    {
                        "resourceType": "Slot",
                        "serviceType": [{"coding": [{"system": SCOPE, "code": "cardiology"}]}],
                        "appointmentType": {"coding": [{"system": CATEGORY, "code": category}]},
                        "schedule": {"reference": "Schedule/sample-cardiology"},
                        "status": "free",
                        "start": begin.isoformat(),
                        "end": (begin + timedelta(minutes=20)).isoformat(),
                    },
                )
            )
    return out


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
    ops = [
        prepare("PUT", "Location", "sample-clinic", SAMPLE_LOCATION),
        prepare("PUT", "Schedule", "sample-cardiology", SAMPLE_SCHEDULE),
    ]
    ops += [prepare("PUT", "Slot", rid, slot) for rid, slot in sample_slots(services.clock.now())]
    await services.bus.request(
        command(
            "fhir.write",
            {"mode": "transaction", "ops": ops, "representation": False},
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
        f'  its free slots:            curl -s -H "Authorization: Bearer $TOKEN" '
        f'"{base}/fhir/Slot?status=free&_count=5"',
        f"  web pages (manual entry):  {base}/ui/  (sign in with the token above)",
        "  more: README.md (vendors, webhooks, patients) and docs/first-fifteen-minutes.md",
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
