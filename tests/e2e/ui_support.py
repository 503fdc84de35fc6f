"""Helpers for tests of the web pages over HTTP (``/ui/``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any

from aiohttp import CookieJar
from aiohttp.test_utils import TestClient

from gateway.http.app import create_app
from gateway.settings import Settings

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


async def ui_client(
    settings: Settings, aiohttp_server: Callable[..., Any], aiohttp_client: Callable[..., Any]
) -> TestClient[Any, Any]:
    """A client for the app whose cookie jar treats the test server as a secure origin,
    as browsers treat http://127.0.0.1: the session cookie is ``Secure``."""
    server = await aiohttp_server(create_app(settings))
    jar = CookieJar(unsafe=True, treat_as_secure_origin=[str(server.make_url("/"))])
    client: TestClient[Any, Any] = await aiohttp_client(server, cookie_jar=jar)
    return client


def csrf_of(html: str) -> str:
    m = CSRF_RE.search(html)
    assert m, "the page has no CSRF token"
    return m.group(1)


async def csrf(client: TestClient[Any, Any], path: str = "/ui/signin") -> str:
    resp = await client.get(path)
    assert resp.status == 200, await resp.text()
    return csrf_of(await resp.text())


async def sign_in(
    client: TestClient[Any, Any], name: str = "Przychodnia testowa"
) -> dict[str, Any]:
    """A fresh sandbox provider, signed in to the pages with its access token."""
    resp = await client.post("/sandbox/providers", json={"name": name})
    assert resp.status == 201, await resp.text()
    provider: dict[str, Any] = await resp.json()
    token = await csrf(client)
    resp = await client.post(
        "/ui/signin",
        data={"csrf_token": token, "credential": provider["token"], "next": "/ui/"},
        allow_redirects=False,
    )
    assert resp.status == 303, await resp.text()
    return provider


async def post_form(
    client: TestClient[Any, Any], path: str, data: dict[str, str], page: str | None = None
) -> Any:
    """POST a form with the CSRF token of ``page`` (default: ``path`` itself)."""
    token = await csrf(client, page or path)
    return await client.post(path, data={"csrf_token": token, **data}, allow_redirects=False)


def field_error(html: str, name: str) -> str | None:
    """The error shown next to field ``name`` (its text, without the hidden prefix)."""
    m = re.search(rf'<p class="field-error" id="f-{re.escape(name)}-error">(.*?)</p>', html, re.S)
    if not m:
        return None
    return re.sub(r"<[^>]+>", "", m.group(1)).replace("Błąd:", "").replace("Error:", "").strip()


def invalid_fields(html: str) -> set[str]:
    """Fields marked ``aria-invalid``."""
    return set(re.findall(r'id="f-([\w-]+)"[^>]*aria-invalid="true"', html))


class _Fields(HTMLParser):
    """Form controls of a page and the ids that a <label for> names."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: list[dict[str, str | None]] = []
        self.labelled: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "label" and a.get("for"):
            self.labelled.add(str(a["for"]))
        if tag in ("input", "select", "textarea") and a.get("type") not in (
            "hidden",
            "submit",
            "button",
        ):
            self.controls.append(a)


def unlabelled_fields(html: str) -> list[str]:
    """Form controls without a <label for> (or an aria-label): none should be."""
    parser = _Fields()
    parser.feed(html)
    return [
        str(c.get("name") or c.get("id"))
        for c in parser.controls
        if c.get("id") not in parser.labelled and not c.get("aria-label")
    ]


def duplicate_ids(html: str) -> list[str]:
    """Element ids used more than once on a page (a label would name the wrong field)."""
    ids = re.findall(r'\sid="([^"]+)"', html)
    return sorted({i for i in ids if ids.count(i) > 1})
