"""``GET /fhir/metadata``: a CapabilityStatement generated from what is really routed.

Interactions come from the app's router (a route that is not registered is not
advertised); search parameters come from ``gateway.search.PARAMS``, the same
table the search code uses.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import resources, search
from gateway.http.keys import SERVICES
from gateway.http.responses import fhir_response
from mappings import codes

# (method, path pattern after /fhir/{type}) -> FHIR interaction code
INTERACTIONS = {
    ("GET", ""): "search-type",
    ("POST", ""): "create",
    ("GET", "/{id}"): "read",
    ("PUT", "/{id}"): "update",
    ("DELETE", "/{id}"): "delete",
    ("GET", "/{id}/_history"): "history-instance",
    ("GET", "/{id}/_history/{vid}"): "vread",
}


def routed(app: web.Application) -> set[tuple[str, str]]:
    """``(method, canonical path)`` of every registered route."""
    out = set()
    for route in app.router.routes():
        info = route.resource.canonical if route.resource is not None else ""
        out.add((route.method, info))
    return out


def capability_statement(app: web.Application, base: str) -> dict[str, Any]:
    have = routed(app)
    rest_resources = []
    for rtype in resources.RESOURCE_TYPES:
        interactions = [
            {"code": code}
            for (method, suffix), code in INTERACTIONS.items()
            if (method, f"/fhir/{{type}}{suffix}") in have
        ]
        entry: dict[str, Any] = {
            "type": rtype,
            "interaction": interactions,
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "not-match",  # If-None-Match on read answers 304
            "conditionalUpdate": False,
            "conditionalDelete": "not-supported",
            "searchParam": [
                {"name": p.name, "type": p.type, "documentation": p.doc}
                for p in search.PARAMS[rtype]
            ],
        }
        rest_resources.append(entry)
    subscription = subscription_entry(have)
    if subscription is not None:
        rest_resources.append(subscription)
    system_interactions = []
    if ("POST", "/fhir") in have:
        system_interactions = [{"code": "transaction"}, {"code": "batch"}]
    system_operations = []
    if ("POST", "/fhir/$import") in have:
        # The initial import (R-SCHED-5, docs/import.md): a job fed chunk by chunk.
        system_operations.append(
            {
                "name": "import",
                "definition": "http://cer-gateway.org/fhir/OperationDefinition/import",
                "documentation": "Initial import of a provider's Locations, Schedules, Slots "
                "and Appointments: 202 with the job's status URL (/fhir/_import/{job}), to "
                "which NDJSON chunks are posted; the provider's schedule is frozen (423) "
                "until the job ends.",
            }
        )
    settings = app[SERVICES].settings
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-25",
        "kind": "instance",
        "software": {"name": "CeR Gateway", "version": "0.1.0"},
        "implementation": {"description": "CeR Gateway FHIR API", "url": f"{base}/fhir"},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "Writes are applied asynchronously through the message bus; the API awaits "
                    "their outcome. Prefer: respond-async on POST /fhir answers 202 with a "
                    f"status URL. Mode: {settings.cer_mode}. Code systems: {codes.SCOPE_SYSTEM}, "
                    f"{codes.SLOT_CATEGORY_SYSTEM}, {codes.CANCELLATION_REASON_SYSTEM}."
                ),
                "security": {
                    "cors": False,
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/"
                                    "restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ],
                            "text": "OAuth2 client credentials with a private_key_jwt "
                            "assertion (RFC 7523)",
                        }
                    ],
                    "extension": [
                        {
                            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/"
                            "oauth-uris",
                            "extension": [{"url": "token", "valueUri": f"{base}/auth/token"}],
                        }
                    ],
                },
                "resource": rest_resources,
                "interaction": system_interactions,
                **({"operation": system_operations} if system_operations else {}),
            }
        ],
    }


SUBSCRIPTION_INTERACTIONS = {
    ("GET", "/fhir/Subscription"): "search-type",
    ("POST", "/fhir/Subscription"): "create",
    ("GET", "/fhir/Subscription/{id}"): "read",
    ("PUT", "/fhir/Subscription/{id}"): "update",
    ("DELETE", "/fhir/Subscription/{id}"): "delete",
}
SUBSCRIPTION_OPERATIONS = ("$status", "$events", "$replay", "$deliveries", "$rotate-secret")


def subscription_entry(have: set[tuple[str, str]]) -> dict[str, Any] | None:
    """Subscription (rest-hook, Backport IG style) as routed by ``gateway.http.subscriptions``."""
    interactions = [
        {"code": code} for key, code in SUBSCRIPTION_INTERACTIONS.items() if key in have
    ]
    if not interactions:
        return None
    operations = [
        {
            "name": op.lstrip("$"),
            "definition": f"http://cer-gateway.org/fhir/OperationDefinition/Subscription-{op[1:]}",
        }
        for op in SUBSCRIPTION_OPERATIONS
        if any(path == f"/fhir/Subscription/{{id}}/{op}" for _, path in have)
    ]
    return {
        "type": "Subscription",
        "supportedProfile": [
            "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
            "backport-subscription"
        ],
        "interaction": interactions,
        "searchParam": [
            {"name": "_id", "type": "token", "documentation": "logical id"},
            {
                "name": "status",
                "type": "token",
                "documentation": "requested | active | error | off",
            },
        ],
        "operation": operations,
    }


async def metadata(request: web.Request) -> web.Response:
    base = request.app[SERVICES].settings.public_base_url.rstrip("/") or str(request.url.origin())
    return fhir_response(capability_statement(request.app, base))


def routes(app: web.Application) -> None:
    app.router.add_get("/fhir/metadata", metadata)
