"""Signing in to the web pages with the provider's API credentials.

The sign-in form takes either

- an access token from ``POST /auth/token`` (what ``cer-gateway token`` prints),
  verified by the same :class:`~gateway.auth.TokenService` as API requests, or
- a client assertion (RFC 7523 ``private_key_jwt``, audience ``<base>/auth/token``),
  verified by :func:`gateway.http.auth.authenticate_client`, the token endpoint's
  own check (signature with the registered key, lifetime, one use per ``jti``).

With JavaScript on, ``static/signin.js`` signs the assertion in the browser
from the client id and the private key file (WebCrypto): the key never leaves
the browser, only the signed assertion is posted.
"""

from __future__ import annotations

from typing import Any

import jwt
import structlog
from aiohttp import web

from gateway.auth import ASSERTION_TYPE, AuthError, parse_token_request
from gateway.http.auth import authenticate_client, token_endpoint_url
from gateway.http.keys import SERVICES
from gateway.http.ui import core, forms, i18n, session

log = structlog.get_logger("gateway.ui")


LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def cookie_will_be_dropped(request: web.Request) -> bool:
    """True when the browser will not keep the Secure session cookie: plain http on a
    host that is not this machine (browsers accept Secure cookies over http only from
    localhost). Then the page says so, instead of a sign-in that silently fails."""
    settings = request.app[SERVICES].settings
    if not settings.ui_cookie_secure or settings.public_base_url.startswith("https://"):
        return False
    if request.headers.get("X-Forwarded-Proto", "").lower() == "https" or request.secure:
        return False
    return (request.url.host or "") not in LOOPBACK


def _context(request: web.Request, form: forms.Form) -> dict[str, Any]:
    return {
        "form": form,
        "next": core.safe_next(form.get("next") or request.query.get("next")),
        "audience": token_endpoint_url(request),
        "insecure_host": cookie_will_be_dropped(request),
    }


async def signin_page(request: web.Request) -> web.Response:
    if await session.provider_id(request) is not None and "next" not in request.query:
        raise core.see_other("/ui/")
    return await core.render(request, "signin.html", _context(request, forms.Form()))


def _plain(err: AuthError, _: i18n.Translate) -> str:
    """The reason in plain words, in the page's language (details stay in English)."""
    message = err.message
    if "expired" in message:
        text = _("It has expired. Make a new one and paste it at once.")
    elif "already used" in message:
        text = _("It was already used. A client assertion works once; make a new one.")
    elif "unknown client_id" in message:
        text = _("No provider has this client id.")
    elif "signature" in message:
        text = _("Its signature does not match the provider's registered key.")
    elif "'aud'" in message:
        text = _("It was made for another address; make it for this gateway.")
    else:
        text = _("It is not a valid access token or client assertion.")
    return f"{text} ({message})"


async def _provider_for(request: web.Request, credential: str) -> str:
    """The provider id the credential proves, or ``AuthError``."""
    services = request.app[SERVICES]
    try:
        header = jwt.get_unverified_header(credential)
    except jwt.InvalidTokenError:
        raise AuthError("invalid_request", "not a JWT") from None
    if header.get("alg") == "HS256":
        who = services.tokens.verify(credential)
        if who.kind != "provider":
            raise AuthError("invalid_token", "this is not a provider's token")
        return who.subject
    client_id, assertion, _scope = parse_token_request(
        {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": credential,
        }
    )
    provider = await authenticate_client(request, client_id, assertion)
    return str(provider["_id"])


async def signin(request: web.Request) -> web.Response:
    """``POST /ui/signin``: verify the credential, open the session, go on."""
    _ = i18n.gettext(request)
    form = await forms.read_form(request)
    credential = "".join(form.get("credential").split())
    if not credential:
        form.error(
            "credential",
            _("Paste an access token or a client assertion, or choose your key file."),
        )
    else:
        try:
            provider_id = await _provider_for(request, credential)
        except AuthError as err:
            form.error("credential", _plain(err, _))
            log.info("ui.signin_refused", reason=err.code)
        else:
            await session.sign_in(request, provider_id)
            log.info("ui.signin", provider=provider_id)
            raise core.see_other(core.safe_next(form.get("next")))
    form.values.pop("credential", None)  # never echo a credential back into the page
    return await core.render(request, "signin.html", _context(request, form), status=400)


async def signout(request: web.Request) -> web.Response:
    await session.sign_out(request)
    raise core.see_other("/ui/signin")
