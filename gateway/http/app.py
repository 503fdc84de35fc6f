"""The aiohttp application factory: explicit wiring, one ``cleanup_ctx`` for the services."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway import bootstrap
from gateway.bootstrap import Services
from gateway.http import (
    auth,
    bundles,
    capability,
    channels,
    fhir,
    health,
    imports,
    patient,
    sandbox,
    ui,
)
from gateway.http import reports as reports_api
from gateway.http import subscriptions as subscription_api
from gateway.http import waiting_room as waiting_room_api
from gateway.http.keys import SERVICES
from gateway.http.middleware import correlation_middleware, error_middleware
from gateway.metrics import metrics_middleware
from gateway.settings import Settings


def create_app(
    settings: Settings | None = None,
    *,
    services: Services | None = None,
    workers: bool = True,
) -> web.Application:
    """Build the app. ``workers=False`` is the ``cer-gateway api`` process."""
    settings = settings or (services.settings if services else Settings())
    services = services or bootstrap.build_services(settings)
    app = web.Application(
        middlewares=[
            correlation_middleware,
            metrics_middleware(services.metrics),
            error_middleware,
        ],
        client_max_size=settings.max_body_bytes + 1024,
    )
    app[SERVICES] = services

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await bootstrap.start(services, workers=workers)
        yield
        await bootstrap.stop(services)

    app.cleanup_ctx.append(lifecycle)
    health.routes(app)
    app.router.add_post("/auth/token", auth.token)
    capability.routes(app)
    fhir.routes(app)
    bundles.routes(app, settings.bundle_validation_processes)
    imports.routes(app, settings.import_validation_processes)
    subscription_api.routes(app)
    patient.routes(app)
    waiting_room_api.routes(app)
    channels.routes(app)
    ui.setup(app, settings)
    reports_api.routes(app)
    if settings.sandbox:
        sandbox.routes(app)
    return app
