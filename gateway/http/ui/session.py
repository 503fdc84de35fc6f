"""The web pages' session and CSRF protection.

Session: aiohttp-session's ``EncryptedCookieStorage`` (Fernet: AES-128-CBC +
HMAC-SHA256, with a timestamp checked against ``ui_session_seconds``). Chosen
over a server-side session because it works unchanged with every store and with
API processes scaled out (they only share ``UI_SESSION_SECRET`` or
``TOKEN_SECRET``), and it holds no personal data: only the provider id, the CSRF
token and the sign-in time. The cookie is ``HttpOnly``, ``SameSite=Lax``,
``Path=/ui``, ``Secure`` unless ``UI_COOKIE_SECURE=false`` (Chromium and Firefox
keep Secure cookies from ``http://127.0.0.1`` and ``http://localhost``; the
browser tests run on exactly that). Signing out empties the cookie.

CSRF: a random token per session (synchroniser token); every unsafe request
under ``/ui/`` must send it back in the ``csrf_token`` form field or an
``X-CSRF-Token`` header, compared in constant time; otherwise 403. SameSite=Lax
is a second line, not the only one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp_session import Session, get_session, new_session, session_middleware
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from cryptography.fernet import Fernet

from gateway import constants as c
from gateway.http.keys import SERVICES
from gateway.settings import Settings

COOKIE_NAME = "cer_ui_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
UI_PREFIX = "/ui"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def session_key(settings: Settings) -> bytes:
    """32 bytes for Fernet: UI_SESSION_SECRET, else derived from TOKEN_SECRET, else random."""
    if settings.ui_session_secret:
        return hashlib.sha256(settings.ui_session_secret.encode()).digest()
    if settings.token_secret:
        # Domain-separated, so the cookie key is never the access tokens' HMAC key.
        return hmac.new(settings.token_secret.encode(), b"cer-ui-session", "sha256").digest()
    return secrets.token_bytes(32)


def middleware(settings: Settings) -> Callable[..., Any]:
    """aiohttp-session's middleware with our cookie; a request that never asks for
    its session (the whole API) costs one dict write."""
    storage = EncryptedCookieStorage(
        Fernet(base64.urlsafe_b64encode(session_key(settings))),
        cookie_name=COOKIE_NAME,
        max_age=settings.ui_session_seconds,
        path=UI_PREFIX,
        secure=settings.ui_cookie_secure,
        httponly=True,
        samesite="Lax",
    )
    return session_middleware(storage)


async def csrf_token(request: web.Request) -> str:
    """This session's CSRF token (made on first use: the sign-in form needs one too)."""
    session = await get_session(request)
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


async def check_csrf(request: web.Request) -> bool:
    """True when an unsafe request carries this session's CSRF token."""
    session = await get_session(request)
    expected = session.get("csrf")
    if not isinstance(expected, str) or not expected:
        return False
    supplied = request.headers.get(CSRF_HEADER)
    if supplied is None and request.content_type in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        form = await request.post()  # cached by aiohttp: the handler reads it again for free
        value = form.get(CSRF_FIELD)
        supplied = value if isinstance(value, str) else None
    return supplied is not None and hmac.compare_digest(supplied.encode(), expected.encode())


async def sign_in(request: web.Request, provider_id: str) -> Session:
    """Open a web session for ``provider_id`` (already authenticated by the caller).

    A fresh session (new CSRF token: nothing from before sign-in survives, so a
    planted cookie cannot be promoted). The sandbox console's "sign in as this
    test provider" calls this too; the response of the request carries the cookie.
    """
    session = await new_session(request)
    session["provider"] = provider_id
    session["csrf"] = secrets.token_urlsafe(32)
    session["since"] = datetime.now(UTC).isoformat(timespec="seconds")
    return session


async def sign_out(request: web.Request) -> None:
    session = await get_session(request)
    session.invalidate()


async def provider_id(request: web.Request) -> str | None:
    """The signed-in provider's id, or None."""
    session = await get_session(request)
    value = session.get("provider")
    return value if isinstance(value, str) else None


async def current_provider(request: web.Request) -> dict[str, Any] | None:
    """The signed-in provider's record (None when signed out or the provider is gone,
    e.g. after a sandbox reset)."""
    pid = await provider_id(request)
    if pid is None:
        return None
    doc = await request.app[SERVICES].store.get(c.PROVIDERS, pid)
    if doc is None:
        (await get_session(request)).invalidate()
    return doc
