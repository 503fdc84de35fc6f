"""Response helpers: FHIR JSON and problem+json (orjson bytes, as LIBRARIES.md advises)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

FHIR_JSON = "application/fhir+json"
PROBLEM_JSON = "application/problem+json"


def fhir_response(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        content_type=FHIR_JSON,
        charset="utf-8",
        headers=headers,
    )


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def problem_response(
    status: int,
    code: str,
    detail: str,
    *,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """RFC 9457 problem details with our stable ``code``."""
    body: dict[str, Any] = {
        "type": f"https://cer-gateway.org/problems/{code}",
        "title": code.replace("-", " "),
        "status": status,
        "code": code,
        "detail": detail,
    }
    if extra:
        body.update(extra)
    return web.Response(
        body=orjson.dumps(body), status=status, content_type=PROBLEM_JSON, headers=headers
    )
