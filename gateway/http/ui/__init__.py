"""Web pages on the gateway (issue 10): manual entry at ``/ui/`` for facilities
without a vendor system (the gabinet.gov.pl analogue), server-rendered, Polish
by default with English available.

``setup(app, settings)`` is the one place that wires them: middlewares
(session cookie, then language / CSRF / HTML errors), templates, static files
and routes. Other modules add pages with ``app.router`` after ``setup`` and use
:mod:`gateway.http.ui.core` (``render``, ``signed_in``, ``flash``, ``see_other``)
and :func:`gateway.http.ui.session.sign_in` (open a session for a provider).
"""

from __future__ import annotations

from aiohttp import web

from gateway.http.ui import (
    calendar,
    core,
    facilities,
    pages,
    sandbox_console,
    schedules,
    session,
    signin,
    visits,
)
from gateway.settings import Settings

__all__ = ["setup"]


def setup(app: web.Application, settings: Settings) -> None:
    # Session first (outer), so the UI middleware can read it; both run inside the
    # app's error middleware.
    app.middlewares.append(session.middleware(settings))
    app.middlewares.append(core.ui_middleware)
    core.setup_templates(app)
    r = app.router
    r.add_get("/ui", pages.ui_root)
    r.add_get("/ui/", pages.home)
    r.add_get("/ui/signin", signin.signin_page)
    r.add_post("/ui/signin", signin.signin)
    r.add_post("/ui/signout", signin.signout)
    facilities.routes(app)
    schedules.routes(app)
    calendar.routes(app)
    visits.routes(app)
    if settings.sandbox:
        # The sandbox console (sandbox mode only: 404 in production, like /sandbox/*).
        sandbox_console.routes(app)
