"""Every ``web.AppKey`` of the application, in one module."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from gateway.bootstrap import Services
    from gateway.http.bundles import BundlePool
    from gateway.http.imports import Turnstile, ValidationPool

SERVICES: web.AppKey[Services] = web.AppKey("services")
CORRELATION_ID: web.RequestKey[str] = web.RequestKey("correlation_id", str)
# The initial import's chunks go to the bus in order (gateway.http.imports).
IMPORT_TURNS: web.AppKey[Turnstile] = web.AppKey("import_turns")
IMPORT_POOL: web.AppKey[ValidationPool] = web.AppKey("import_pool")
# Large Bundles at POST /fhir are validated in another process (gateway.http.bundles).
BUNDLE_POOL: web.AppKey[BundlePool] = web.AppKey("bundle_pool")
