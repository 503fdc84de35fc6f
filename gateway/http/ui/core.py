"""What every page shares: the template environment, the page context, the UI
middleware (language, CSRF, security headers, HTML error pages) and helpers for
handlers (``render``, ``signed_in``, ``flash``, ``see_other``).

Pages are server-rendered (aiohttp-jinja2, autoescaped); scripts only enhance
them, so every page works with JavaScript off, and the Content-Security-Policy
allows no inline script at all (put scripts in ``static/``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp_jinja2
import jinja2
import structlog
from aiohttp import web
from aiohttp_session import get_session

from gateway.errors import FhirError
from gateway.http.keys import SERVICES
from gateway.http.ui import i18n, session

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
STATIC_ROUTE = "ui-static"

log = structlog.get_logger("gateway.ui")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    # Pages show patients' bookings: never keep them in a shared cache or the back-forward
    # cache of a shared computer.
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class NavItem:
    url: str
    label: str  # English text; translated when rendered
    sandbox_only: bool = False


# The main navigation, in order. Labels are catalog messages (locales/pl.json).
NAV: tuple[NavItem, ...] = (
    NavItem("/ui/", "Overview"),
    NavItem("/ui/facilities", "Facilities"),
    NavItem("/ui/schedules", "Schedules"),
    NavItem("/ui/day", "Day view"),
    NavItem("/ui/sandbox", "Sandbox console", sandbox_only=True),
)


def setup_templates(app: web.Application) -> None:
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("gateway.http.ui", "templates"),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    resource = app.router.add_static("/ui/static", STATIC_DIR, name=STATIC_ROUTE)

    def static_url(filename: str) -> str:
        # ?v=<hash of the file>: browsers may cache static files for ever, and still
        # see a changed file at once.
        return str(resource.url_for(filename=filename, append_version=True))  # type: ignore[arg-type]

    env.globals["static_url"] = static_url


def _path_with_lang(request: web.Request, lang: str) -> str:
    query = [(k, v) for k, v in request.query.items() if k != "lang"]
    query.append(("lang", lang))
    return f"{request.path}?{urlencode(query)}"


async def page_context(request: web.Request) -> dict[str, Any]:
    """Variables every template sees."""
    lang = i18n.language(request)
    _ = i18n.translator(lang)
    sandbox = request.app[SERVICES].settings.sandbox
    provider = await session.current_provider(request)
    web_session = await get_session(request)
    flashes = web_session.pop("flash", None) or []
    nav = [
        {
            "url": item.url,
            "label": _(item.label),
            "current": request.path == item.url
            or (item.url != "/ui/" and request.path.startswith(item.url)),
        }
        for item in NAV
        if sandbox or not item.sandbox_only
    ]
    return {
        "_": _,
        "lang": lang,
        "languages": [
            {"code": code, "name": name, "url": _path_with_lang(request, code)}
            for code, name in (("pl", "Polski"), ("en", "English"))
        ],
        "csrf_token": await session.csrf_token(request),
        "provider": provider,
        "sandbox": sandbox,
        "nav": nav if provider is not None else [],
        "flashes": flashes,
        "path": request.path,
    }


async def render(
    request: web.Request, template: str, context: dict[str, Any] | None = None, status: int = 200
) -> web.Response:
    """The page ``template`` with ``context`` and what every page sees (``page_context``)."""
    full = await page_context(request)
    full.update(context or {})
    return aiohttp_jinja2.render_template(template, request, full, status=status)


async def flash(request: web.Request, message: str) -> None:
    """A one-time notice for the next page (post / redirect / get). ``message`` is
    already translated."""
    web_session = await get_session(request)
    web_session["flash"] = [*(web_session.get("flash") or []), message]


def see_other(location: str) -> web.HTTPSeeOther:
    """Raise this after a successful POST: the browser then GETs ``location``."""
    return web.HTTPSeeOther(location)


def safe_next(value: str | None, default: str = "/ui/") -> str:
    """A local /ui/ path to go back to after sign-in (never another site)."""
    if value and value.startswith("/ui/") and not value.startswith("//") and "\\" not in value:
        return value
    return default


async def signed_in(request: web.Request) -> dict[str, Any]:
    """The signed-in provider's record; a signed-out visitor is sent to sign in first."""
    provider = await session.current_provider(request)
    if provider is None:
        raise web.HTTPSeeOther(f"/ui/signin?next={quote(request.path_qs, safe='/')}")
    return provider


async def _error_page(request: web.Request, status: int, message: str) -> web.Response:
    return await render(
        request, "error.html", {"status": status, "message": message}, status=status
    )


@web.middleware
async def ui_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Under ``/ui/``: pick the language, check CSRF on unsafe methods, add security
    headers and answer errors with an HTML page in the visitor's language."""
    if not (request.path == "/ui" or request.path.startswith("/ui/")) or request.path.startswith(
        "/ui/static/"
    ):
        return await handler(request)
    started, cpu = time.perf_counter(), time.thread_time()
    lang, remember = i18n.choose(request)
    request[i18n.LANG_KEY] = lang
    _ = i18n.translator(lang)
    response: web.StreamResponse
    try:
        if request.method not in session.SAFE_METHODS and not await session.check_csrf(request):
            response = await _error_page(
                request,
                403,
                _(
                    "This form has expired or did not come from this site. "
                    "Go back, reload the page and try again."
                ),
            )
        else:
            response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            _decorate(request, exc, lang, remember)
            raise
        message = {
            404: _("There is no such page."),
            405: _("This page does not accept that kind of request."),
            413: _("What you sent is too large."),
        }.get(exc.status, _("The request could not be handled."))
        response = await _error_page(request, exc.status, message)
    except FhirError as err:
        response = await _error_page(
            request,
            err.status,
            err.issues[0].diagnostics if err.issues else _("The request could not be handled."),
        )
    except Exception:
        log.exception("ui.unhandled")
        response = await _error_page(
            request, 500, _("Something went wrong on our side. Please try again in a moment.")
        )
    _decorate(request, response, lang, remember)
    # The page's server time (handler and template) and the CPU time of this thread meanwhile
    # (unlike the first, hardly changed by a busy machine), for the browser's developer tools
    # and bench/ui_week.py.
    response.headers["Server-Timing"] = (
        f"app;dur={(time.perf_counter() - started) * 1000:.1f}, "
        f"cpu;dur={(time.thread_time() - cpu) * 1000:.1f}"
    )
    return response


def _decorate(
    request: web.Request, response: web.StreamResponse, lang: str, remember: bool
) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if remember:
        settings = request.app[SERVICES].settings
        response.set_cookie(
            i18n.LANG_COOKIE,
            lang,
            max_age=365 * 24 * 3600,
            path=session.UI_PREFIX,
            secure=settings.ui_cookie_secure,
            httponly=True,
            samesite="Lax",
        )
