"""Middlewares, outside-in: correlation id -> metrics -> errors.

The error middleware is outermost so that nothing, not even a bug, reaches a
client as a stack trace: FHIR paths answer an OperationOutcome, the patient
channel problem+json, everything else plain JSON.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from gateway.errors import FhirError, Issue
from gateway.http.keys import CORRELATION_ID
from gateway.http.responses import fhir_response, json_response, problem_response
from gateway.logging import bind_correlation, new_correlation_id

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = structlog.get_logger("gateway.http")

CORRELATION_HEADER = "X-Correlation-Id"


def _render(request: web.Request, err: FhirError) -> web.Response:
    path = request.path
    headers = dict(err.headers)
    if path.startswith("/patient/") or path.startswith("/channels/"):
        return problem_response(
            err.status,
            err.code,
            err.issues[0].diagnostics if err.issues else "",
            extra=err.extra,
            headers=headers,
        )
    if path.startswith("/fhir") or path.startswith("/sandbox"):
        return fhir_response(err.outcome(), err.status, headers=headers)
    body: dict[str, object] = {
        "error": err.code,
        "error_description": err.issues[0].diagnostics if err.issues else "",
    }
    return json_response(body, err.status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except FhirError as err:
        return _render(request, err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not-found", 405: "not-supported", 413: "too-costly"}.get(
            exc.status, "invalid"
        )
        reason = exc.reason or "error"
        if exc.status == 404:
            reason = f"no such endpoint: {request.method} {request.path}"
        elif exc.status == 405:
            reason = f"{request.method} is not supported on {request.path}"
        elif exc.status == 413:
            reason = "the request body is larger than this server accepts"
        return _render(request, FhirError(exc.status, [Issue(code, reason)], code=code))
    except Exception:
        log.exception("http.unhandled")
        internal = FhirError(
            500, [Issue("exception", "internal error; the correlation id identifies it")]
        )
        return _render(request, internal)


@web.middleware
async def correlation_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    cid = request.headers.get(CORRELATION_HEADER) or request.headers.get("X-Request-Id")
    if not cid or len(cid) > 100 or not cid.replace("-", "").isalnum():
        cid = new_correlation_id()
    request[CORRELATION_ID] = cid
    bind_correlation(cid, method=request.method, path=request.path)
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers[CORRELATION_HEADER] = cid
        raise
    response.headers[CORRELATION_HEADER] = cid
    log.info(
        "http.request",
        status=response.status,
        ms=round((time.perf_counter() - started) * 1000, 2),
    )
    return response
