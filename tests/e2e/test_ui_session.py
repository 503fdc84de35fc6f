"""Web pages (issue 10): sign-in with the API's provider credentials, the session
cookie, CSRF protection, languages and the security headers, over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.auth import make_client_assertion
from gateway.http.ui.session import COOKIE_NAME
from tests.e2e.conftest import settings_for
from tests.e2e.ui_support import csrf, post_form, sign_in, ui_client


@pytest.fixture
async def web(
    aiohttp_server: Callable[..., Any], aiohttp_client: Callable[..., Any]
) -> TestClient[Any, Any]:
    return await ui_client(settings_for("embedded", amqp_url=None), aiohttp_server, aiohttp_client)


async def test_signed_out_visitor_is_sent_to_sign_in_and_back(web: TestClient[Any, Any]) -> None:
    resp = await web.get("/ui/", allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == "/ui/signin?next=/ui/"
    provider = await sign_in(web)
    resp = await web.get("/ui/")
    assert resp.status == 200
    assert "Przychodnia testowa" in await resp.text()
    assert provider["provider_id"] in await resp.text()


async def test_session_cookie_is_secure_http_only_same_site(web: TestClient[Any, Any]) -> None:
    token = await csrf(web)
    provider = (await web.post("/sandbox/providers", json={})).json
    data = await provider()
    resp = await web.post(
        "/ui/signin",
        data={"csrf_token": token, "credential": data["token"]},
        allow_redirects=False,
    )
    assert resp.status == 303
    cookie = resp.cookies[COOKIE_NAME]
    assert cookie["httponly"] is True
    assert cookie["secure"] is True
    assert cookie["samesite"] == "Lax"
    assert cookie["path"] == "/ui"
    # The value is encrypted: the provider id is not readable in it.
    assert data["provider_id"] not in cookie.value


async def test_sign_in_with_a_client_assertion_once_only(web: TestClient[Any, Any]) -> None:
    """The same RFC 7523 check as /auth/token: a good assertion signs in; the same jti
    again is a replay."""
    provider = await (await web.post("/sandbox/providers", json={})).json()
    audience = str(web.make_url("/auth/token"))
    assertion = make_client_assertion(
        provider["private_key_pem"], provider["client_id"], audience, datetime.now(UTC)
    )
    resp = await post_form(web, "/ui/signin", {"credential": assertion})
    assert resp.status == 303, await resp.text()
    assert resp.headers["Location"] == "/ui/"
    assert provider["provider_id"] in await (await web.get("/ui/")).text()
    await web.post("/ui/signout", data={"csrf_token": await csrf(web, "/ui/")})
    resp = await post_form(web, "/ui/signin", {"credential": assertion})
    assert resp.status == 400
    assert "już użyty" in await resp.text()


async def test_wrong_credentials_are_shown_next_to_the_field(web: TestClient[Any, Any]) -> None:
    resp = await post_form(web, "/ui/signin", {"credential": ""})
    assert resp.status == 400
    html = await resp.text()
    assert 'aria-invalid="true"' in html
    assert 'id="f-credential-error"' in html
    assert "Wklej token dostępu" in html
    other = await (await web.post("/sandbox/providers", json={})).json()
    # An assertion made for another server (wrong audience) is refused in plain words.
    bad = make_client_assertion(
        other["private_key_pem"],
        other["client_id"],
        "https://elsewhere/auth/token",
        datetime.now(UTC),
    )
    resp = await post_form(web, "/ui/signin", {"credential": bad}, page="/ui/signin?lang=en")
    assert resp.status == 400
    html = await resp.text()
    assert "made for another address" in html
    # The credential is never echoed back into the page.
    assert bad not in html
    assert (await web.get("/ui/", allow_redirects=False)).status == 303


async def test_post_without_or_with_a_wrong_csrf_token_is_403(web: TestClient[Any, Any]) -> None:
    provider = await sign_in(web)
    resp = await web.post("/ui/signout", allow_redirects=False)
    assert resp.status == 403
    resp = await web.post("/ui/signout", data={"csrf_token": "x" * 43}, allow_redirects=False)
    assert resp.status == 403
    assert "wygasł" in await resp.text()
    resp = await web.post(
        "/ui/signin", data={"credential": provider["token"]}, allow_redirects=False
    )
    assert resp.status == 403
    # Still signed in: the refused POSTs did nothing.
    assert (await web.get("/ui/", allow_redirects=False)).status == 200
    # The header works too (scripts), and the right token signs out.
    token = await csrf(web, "/ui/")
    resp = await web.post("/ui/signout", headers={"X-CSRF-Token": token}, allow_redirects=False)
    assert resp.status == 303
    assert (await web.get("/ui/", allow_redirects=False)).status == 303


async def test_csrf_token_is_bound_to_the_session(
    web: TestClient[Any, Any],
    aiohttp_server: Callable[..., Any],
    aiohttp_client: Callable[..., Any],
) -> None:
    """A token taken from another browser's session does not work in this one."""
    await sign_in(web)
    mine = await csrf(web, "/ui/")
    other = await ui_client(settings_for("embedded", amqp_url=None), aiohttp_server, aiohttp_client)
    await sign_in(other)
    resp = await other.post("/ui/signout", data={"csrf_token": mine}, allow_redirects=False)
    assert resp.status == 403


async def test_language_polish_by_default_english_on_request(web: TestClient[Any, Any]) -> None:
    html = await (await web.get("/ui/signin")).text()
    assert '<html lang="pl">' in html
    assert "Zaloguj się" in html
    resp = await web.get("/ui/signin", headers={"Accept-Language": "en-GB,en;q=0.9"})
    assert '<html lang="en">' in await resp.text()
    resp = await web.get("/ui/signin?lang=en")
    assert "Sign in" in await resp.text()
    # ?lang= is remembered in a cookie
    html = await (await web.get("/ui/signin")).text()
    assert '<html lang="en">' in html
    html = await (await web.get("/ui/signin?lang=pl")).text()
    assert '<html lang="pl">' in html


async def test_pages_have_security_headers_and_a_skip_link(web: TestClient[Any, Any]) -> None:
    resp = await web.get("/ui/signin")
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Cache-Control"] == "no-store"
    html = await resp.text()
    assert 'href="#main"' in html and 'id="main"' in html
    # every input has a label
    assert 'for="f-credential"' in html and 'id="f-credential"' in html


async def test_next_never_leaves_the_site(web: TestClient[Any, Any]) -> None:
    provider = await (await web.post("/sandbox/providers", json={})).json()
    resp = await post_form(
        web, "/ui/signin", {"credential": provider["token"], "next": "//evil.example/ui/"}
    )
    assert resp.status == 303
    assert resp.headers["Location"] == "/ui/"


async def test_unknown_page_is_an_html_404(web: TestClient[Any, Any]) -> None:
    resp = await web.get("/ui/nothing-here")
    assert resp.status == 404
    assert resp.content_type == "text/html"
    assert "Nie ma takiej strony" in await resp.text()


async def test_a_patient_token_does_not_sign_in(web: TestClient[Any, Any]) -> None:
    patient = await (await web.post("/sandbox/patients", json={})).json()
    resp = await post_form(web, "/ui/signin", {"credential": patient["token"]})
    assert resp.status == 400


async def test_session_expires(
    aiohttp_server: Callable[..., Any], aiohttp_client: Callable[..., Any]
) -> None:
    web = await ui_client(
        settings_for("embedded", amqp_url=None, ui_session_seconds=1),
        aiohttp_server,
        aiohttp_client,
    )
    await sign_in(web)
    assert (await web.get("/ui/", allow_redirects=False)).status == 200
    await asyncio.sleep(2.2)
    resp = await web.get("/ui/", allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"].startswith("/ui/signin")


async def test_production_mode_signs_in_without_the_sandbox_console(
    aiohttp_server: Callable[..., Any], aiohttp_client: Callable[..., Any]
) -> None:
    """Production: the same sign-in with a client assertion (there is no sandbox to make
    a provider, so the test registers one in the store as onboarding would)."""
    from gateway import constants as c
    from gateway.auth import generate_client_keypair
    from gateway.http.keys import SERVICES

    settings = settings_for("embedded", amqp_url=None, cer_mode="production")
    web = await ui_client(settings, aiohttp_server, aiohttp_client)
    private_pem, public_pem = generate_client_keypair()
    store = web.server.app[SERVICES].store
    await store.insert(
        c.PROVIDERS,
        {
            "_id": "prov-prod",
            "client_id": "client-prod",
            "name": "Poradnia",
            "public_key_pem": public_pem,
        },
    )
    assertion = make_client_assertion(
        private_pem, "client-prod", str(web.make_url("/auth/token")), datetime.now(UTC)
    )
    resp = await post_form(web, "/ui/signin", {"credential": assertion})
    assert resp.status == 303, await resp.text()
    html = await (await web.get("/ui/")).text()
    assert "Poradnia" in html
    assert "/ui/sandbox" not in html
    assert (await web.get("/ui/sandbox")).status == 404


async def test_sign_in_page_warns_when_the_secure_cookie_will_be_dropped(
    web: TestClient[Any, Any],
) -> None:
    """Plain http from another host name: the browser would drop the Secure cookie."""
    html = await (await web.get("/ui/signin")).text()
    assert "Pod tym adresem logowanie się nie uda" not in html
    resp = await web.get("/ui/signin", headers={"Host": "192.168.1.20:8080"})
    assert "Pod tym adresem logowanie się nie uda" in await resp.text()
    resp = await web.get(
        "/ui/signin", headers={"Host": "cer.example.pl", "X-Forwarded-Proto": "https"}
    )
    assert "Pod tym adresem logowanie się nie uda" not in await resp.text()
