"""The overview page of a signed-in provider."""

from __future__ import annotations

from aiohttp import web

from gateway.http.ui import core


async def home(request: web.Request) -> web.Response:
    provider = await core.signed_in(request)
    return await core.render(request, "home.html", {"me": provider})


async def ui_root(request: web.Request) -> web.Response:
    raise web.HTTPPermanentRedirect("/ui/")
