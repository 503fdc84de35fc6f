"""Bearer tokens on requests, and the token endpoint (OAuth2 client credentials, RFC 7523)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway import constants as c
from gateway.auth import AuthError, Principal, parse_token_request, verify_client_assertion
from gateway.errors import FhirError, Issue
from gateway.http.keys import SERVICES
from gateway.http.responses import json_response
from gateway.ports import DuplicateKey
from gateway.timeutil import to_store


def _unauthorized(message: str, kind: str) -> FhirError:
    return FhirError(
        401,
        [Issue("login", message)],
        code="unauthorized",
        headers={"WWW-Authenticate": f'Bearer realm="cer-gateway-{kind}"'},
    )


def principal(request: web.Request, kind: str, also: tuple[str, ...] = ()) -> Principal:
    """The verified caller of ``kind`` (provider or patient; or one of ``also``), or 401/403."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("an Authorization: Bearer token is required", kind)
    try:
        who = request.app[SERVICES].tokens.verify(token.strip())
    except AuthError as err:
        raise _unauthorized(err.message, kind) from err
    if who.kind != kind and who.kind not in also:
        raise FhirError(
            403, [Issue("forbidden", f"this endpoint needs a {kind} token")], code="forbidden"
        )
    return who


def report_reader(request: web.Request) -> Principal:
    """A provider (its own reports) or the payer (everyone's); 401/403 otherwise."""
    return principal(request, "provider", also=("payer",))


def provider_id(request: web.Request) -> str:
    """The tenant of the request: every read and write is scoped to it."""
    return principal(request, "provider").subject


def token_endpoint_url(request: web.Request) -> str:
    """The audience of client assertions: this gateway's ``/auth/token`` URL (also
    when the assertion is pasted into the web sign-in page)."""
    base = request.app[SERVICES].settings.public_base_url.rstrip("/")
    if base:
        return f"{base}/auth/token"
    return str(request.url.origin().with_path("/auth/token"))


async def authenticate_client(
    request: web.Request, client_id: str, assertion: str
) -> dict[str, Any]:
    """The provider record whose key signed ``assertion`` (RFC 7523), or ``AuthError``.

    The one check of client credentials: the token endpoint and the web sign-in
    (``/ui/signin``) both call it, so a provider signs in to the pages with exactly
    what it uses for the API.
    """
    services = request.app[SERVICES]
    provider = await services.store.find_one(c.PROVIDERS, {"client_id": client_id})
    if provider is None:
        raise AuthError("invalid_client", "unknown client_id")
    store = services.store
    # Wall time, not the sandbox clock: assertions are signed by real clocks.
    now = datetime.now(UTC)

    async def first_use(jti: str) -> bool:
        try:
            await store.insert(c.USED_JTI, {"_id": f"{client_id}:{jti}", "at": to_store(now)})
        except DuplicateKey:
            return False
        return True

    await verify_client_assertion(
        assertion,
        client_id=client_id,
        public_key_pem=provider["public_key_pem"],
        audience=token_endpoint_url(request),
        now=now,
        first_use=first_use,
    )
    return provider


async def token(request: web.Request) -> web.Response:
    """``POST /auth/token``: client credentials with a ``private_key_jwt`` assertion."""
    services = request.app[SERVICES]
    if request.content_type != "application/x-www-form-urlencoded":
        return _oauth_error(400, "invalid_request", "use application/x-www-form-urlencoded")
    form = await request.post()
    try:
        client_id, assertion, scope = parse_token_request({k: str(v) for k, v in form.items()})
        provider = await authenticate_client(request, client_id, assertion)
    except AuthError as err:
        status = 401 if err.code == "invalid_client" else 400
        return _oauth_error(status, err.code, err.message)
    # A client registered with the payer's role (NFZ) gets a payer token: it reads the
    # reports of every provider and writes nothing (issue 9).
    role = provider.get("role")
    who = (
        Principal("payer", provider["_id"])
        if role == "payer"
        else Principal("provider", provider["_id"])
    )
    access = services.tokens.issue(who)
    body: dict[str, Any] = {
        "access_token": access,
        "token_type": "bearer",
        "expires_in": services.settings.token_ttl_seconds,
        "scope": scope or "system/*.cruds",
    }
    return json_response(body, headers={"Cache-Control": "no-store"})


def _oauth_error(status: int, code: str, message: str) -> web.Response:
    return json_response(
        {"error": code, "error_description": message},
        status,
        headers={"Cache-Control": "no-store"},
    )
