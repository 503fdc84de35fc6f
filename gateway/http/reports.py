"""Reports, reconciliation and the public slot feed over HTTP (issue 9).

- ``GET /reports/activity?from=&to=&provider=``: slots, bookings by channel,
  cancellations by reason and channel, the waiting room; per provider, scope
  and day. A provider reads its own; the payer (NFZ) any or all.
- ``GET /reports/compliance?provider=``: per provider and scope against the
  scope calendar (R-SCOPE-3). The payer reads every provider's, a provider
  its own.
- ``POST /reports/reconciliation?from=&to=``: the provider's AP-KOLCE-style
  CSV in the body (``text/csv``), compared with its visits (R-SCHED-5).
- ``GET /$bulk-publish`` and ``GET /bulk-publish/{Location,Schedule,Slot}.ndjson``:
  SMART Scheduling Links, open to all, no patient data.

JSON by default; CSV with ``?format=csv`` or ``Accept: text/csv``
(``&sep=semicolon`` for Polish spreadsheets). Another provider's report
answers 404, like another tenant's resource.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from aiohttp import web

from gateway import bulk_publish, report_service, reports
from gateway import reconciliation as rec
from gateway.errors import FhirError, Issue
from gateway.http.auth import principal, report_reader
from gateway.http.keys import SERVICES
from gateway.http.responses import json_response
from gateway.timeutil import parse_instant, to_fhir, warsaw_day

MAX_DAYS = 366
CSV_TYPE = "text/csv"


def _bad(message: str) -> FhirError:
    return FhirError(400, [Issue("invalid", message)], code="invalid")


def _day(request: web.Request, name: str, default: date) -> date:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise _bad(f"{name} must be a day, YYYY-MM-DD (Europe/Warsaw)") from None


def _range(request: web.Request, today: date) -> tuple[date, date]:
    last = _day(request, "to", today)
    first = _day(request, "from", last - timedelta(days=6))
    if last < first:
        raise _bad("'to' is before 'from'")
    if (last - first).days >= MAX_DAYS:
        raise _bad(f"a report covers at most {MAX_DAYS} days")
    return first, last


def _providers(request: web.Request, kind: str, subject: str) -> list[str] | None:
    """Whose data the caller may read: a provider its own, the payer any (None = all)."""
    asked = [p for p in request.query.get("provider", "").split(",") if p]
    if kind == "payer":
        return asked or None
    if any(p != subject for p in asked):
        # another tenant's report is as unknown as another tenant's resource
        raise FhirError(404, [Issue("not-found", "no such provider")], code="not-found")
    return [subject]


def _wants_csv(request: web.Request) -> bool:
    fmt = request.query.get("format", "").lower()
    if fmt:
        if fmt not in ("csv", "json"):
            raise _bad("format is csv or json")
        return fmt == "csv"
    accept = request.headers.get("Accept", "")
    return CSV_TYPE in accept and "application/json" not in accept


def _csv_response(
    request: web.Request, rows: Any, columns: tuple[str, ...], name: str
) -> web.Response:
    sep = request.query.get("sep", "comma")
    if sep not in ("comma", "semicolon"):
        raise _bad("sep is comma or semicolon")
    text = reports.to_csv(rows, columns, ";" if sep == "semicolon" else ",")
    return web.Response(
        body=text.encode("utf-8"),
        content_type=CSV_TYPE,
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
    )


async def activity(request: web.Request) -> web.Response:
    who = report_reader(request)
    services = request.app[SERVICES]
    first, last = _range(request, warsaw_day(services.clock.now()))
    providers = _providers(request, who.kind, who.subject)
    report = await report_service.activity(services.store, first, last, providers)
    if _wants_csv(request):
        return _csv_response(
            request, reports.activity_csv_rows(report), reports.ACTIVITY_CSV_COLUMNS, "activity"
        )
    return json_response(report)


async def compliance(request: web.Request) -> web.Response:
    who = report_reader(request)
    services = request.app[SERVICES]
    providers = _providers(request, who.kind, who.subject)
    report = await report_service.compliance(services.store, services.clock.now(), providers)
    if _wants_csv(request):
        return _csv_response(request, report["rows"], reports.COMPLIANCE_CSV_COLUMNS, "compliance")
    return json_response(report)


async def reconciliation(request: web.Request) -> web.Response:
    tenant = principal(request, "provider").subject
    services = request.app[SERVICES]
    if request.content_type not in (CSV_TYPE, "text/plain", "application/octet-stream"):
        raise FhirError(
            415,
            [Issue("not-supported", "send the export as text/csv (see docs/reconciliation.md)")],
            code="unsupported-media-type",
        )
    body = await request.read()
    first = _day(request, "from", date.min) if "from" in request.query else None
    last = _day(request, "to", date.max) if "to" in request.query else None
    if first is not None and last is not None and last < first:
        raise _bad("'to' is before 'from'")
    try:
        result = await report_service.reconcile(
            services.store, tenant, rec.decode(body), first, last
        )
    except rec.ExportError as exc:
        raise FhirError(422, [Issue("invalid", str(exc))], code="invalid") from None
    if _wants_csv(request):
        return _csv_response(request, rec.csv_rows(result), rec.CSV_COLUMNS, "reconciliation")
    return json_response(result)


# --------------------------------------------------------------------------- $bulk-publish

PUBLIC_CACHE = "public, max-age=60"


def _since(request: web.Request) -> datetime | None:
    raw = request.query.get("_since")
    if raw is None:
        return None
    try:
        return parse_instant(raw)
    except ValueError:
        raise _bad("_since must be an instant with a time zone (2027-01-11T07:00:00Z)") from None


def _base(request: web.Request) -> str:
    base = request.app[SERVICES].settings.public_base_url.rstrip("/")
    return base or f"{request.scheme}://{request.host}"


async def bulk_manifest(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    since = _since(request)
    now = services.clock.now()
    base = _base(request)
    body = bulk_publish.manifest(base, f"{base}{request.path_qs}", now, since)
    return json_response(
        body,
        headers={
            "Cache-Control": PUBLIC_CACHE,
            "Access-Control-Allow-Origin": "*",
        },
    )


async def bulk_file(request: web.Request) -> web.StreamResponse:
    rtype = request.match_info["type"]
    if rtype not in bulk_publish.TYPES:
        raise web.HTTPNotFound()
    services = request.app[SERVICES]
    since = _since(request)
    now = services.clock.now()
    resp = web.StreamResponse(
        headers={
            "Content-Type": bulk_publish.NDJSON,
            "Cache-Control": PUBLIC_CACHE,
            "Access-Control-Allow-Origin": "*",
            # what the file shows is the state at this instant (the manifest's transactionTime)
            "X-Transaction-Time": to_fhir(now),
        }
    )
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    async for chunk in bulk_publish.ndjson(services.store, rtype, now, since):
        await resp.write(chunk)
    await resp.write_eof()
    return resp


def routes(app: web.Application) -> None:
    app.router.add_get("/reports/activity", activity)
    app.router.add_get("/reports/compliance", compliance)
    app.router.add_post("/reports/reconciliation", reconciliation)
    app.router.add_get("/$bulk-publish", bulk_manifest)
    app.router.add_get("/bulk-publish/{type}.ndjson", bulk_file)
