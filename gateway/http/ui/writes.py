"""Writes from the web pages: the same commands as the FHIR API.

Every change a page makes is a FHIR resource validated and mapped by
``gateway.http.fhir.prepare`` (single writes) or ``gateway.http.bundles.prepare_bundle``
(transactions), sent as a ``fhir.write`` command through the bus and awaited with
``send_and_wait``: exactly what ``PUT /fhir/Slot/1`` or ``POST /fhir`` do. So the
provider's webhooks, the central model, the waiting room and the reports cannot
tell a page's change from its vendor system's (R-SCHED-2, R-SCHED-4).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import constants as c
from gateway import resources
from gateway.errors import FhirError
from gateway.http.bundles import prepare_bundle
from gateway.http.fhir import new_resource_id, prepare, send_and_wait
from gateway.http.keys import SERVICES
from gateway.ports import Document

# Entries per transaction when a page publishes many slots at once: each transaction is
# all or nothing; a pattern's slots carry identifiers with conditional creates, so
# publishing the same pattern again completes what a failed part left out and
# duplicates nothing.
TRANSACTION_SIZE = 500


async def create(
    request: web.Request, tenant: str, rtype: str, resource: dict[str, Any]
) -> dict[str, Any]:
    """``POST /fhir/{rtype}`` for ``tenant``; the worker's result (id, version, resource)."""
    op = prepare("POST", rtype, new_resource_id(), resource)
    reply = await send_and_wait(request, {"mode": "single", "ops": [op]}, tenant)
    result: dict[str, Any] = reply["results"][0]
    return result


async def update(
    request: web.Request,
    tenant: str,
    rtype: str,
    rid: str,
    resource: dict[str, Any],
    if_match: int | None,
) -> dict[str, Any]:
    """``PUT /fhir/{rtype}/{rid}`` with ``If-Match`` (the version the page showed)."""
    op = prepare("PUT", rtype, rid, resource, if_match=if_match)
    reply = await send_and_wait(request, {"mode": "single", "ops": [op]}, tenant)
    result: dict[str, Any] = reply["results"][0]
    return result


async def transaction(
    request: web.Request, tenant: str, entries: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """``POST /fhir`` with transaction Bundles of at most ``TRANSACTION_SIZE`` entries.

    Returns every entry's result. Raises the first failing transaction's ``FhirError``
    (its issues' FHIRPaths name the entry within that part)."""
    results: list[dict[str, Any]] = []
    for i in range(0, len(entries), TRANSACTION_SIZE):
        ops = prepare_bundle("transaction", entries[i : i + TRANSACTION_SIZE])
        good = [op for op in ops if isinstance(op, dict)]
        body = {"mode": "transaction", "ops": good, "representation": False}
        reply = await send_and_wait(request, body, tenant)
        results.extend(reply["results"])
    return results


def editable(resource: dict[str, Any]) -> dict[str, Any]:
    """A stored resource as the base of an update: without ``meta`` (the server's)."""
    return {k: v for k, v in resource.items() if k != "meta"}


async def current(request: web.Request, tenant: str, rtype: str, rid: str) -> Document:
    """The live document of ``rtype/rid`` of this tenant; 404 otherwise."""
    try:
        return await resources.read(request.app[SERVICES].store, tenant, rtype, rid)
    except FhirError as err:
        raise web.HTTPNotFound() from err


async def live(
    request: web.Request,
    tenant: str,
    rtype: str,
    extra: dict[str, Any] | None = None,
    sort: list[tuple[str, int]] | None = None,
    limit: int = 0,
    fields: list[str] | None = None,
) -> list[Document]:
    """The tenant's live resources of ``rtype`` matching ``extra`` (store filter);
    ``fields`` limits what is read (e.g. ``["rid", "central"]`` for a long list)."""
    flt: dict[str, Any] = {"tenant": tenant, "type": rtype, "deleted": False, **(extra or {})}
    return await request.app[SERVICES].store.find(
        c.RESOURCES,
        flt,
        sort=sort or [("last_updated", 1), ("rid", 1)],
        limit=limit,
        fields=fields,
    )
