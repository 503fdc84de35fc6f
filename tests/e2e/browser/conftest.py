"""Browser tests of the web pages (issue 10): Playwright for Python driving Debian's
Chromium (``/usr/bin/chromium``; ``make test`` installs it; Playwright's own browser
downloads are not used).

Fixtures:

- ``gateway``: a running gateway (embedded broker and store, sandbox mode) on a real
  TCP port, in a thread with its own event loop; ``gateway.url``, ``gateway.post_json``,
  ``gateway.get_json`` talk to it over HTTP, ``gateway.run(coro)`` runs a coroutine on its
  loop (``gateway.services`` are its services). One per test: the sandbox clock is global.
- ``browser`` (a Chromium per test) and ``page`` (a fresh context and profile per test:
  no cookies or storage from another test; Polish, 1280x900).
- ``sign_in(page, name=...)``: a fresh sandbox provider signed in through the sign-in
  form; returns the provider (``provider_id``, ``client_id``, ``private_key_pem``, ``token``).
- ``screenshot(page, name)``: a full-page PNG into ``tests/artifacts/screenshots/``
  (gitignored), or into ``docs/screenshots/`` with ``UPDATE_SCREENSHOTS=1``.

Without Chromium the tests are skipped with the reason, except under CI (``CI`` set),
where that is a failure: ``make test`` must have installed it.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from gateway.bootstrap import Services
from gateway.http.app import create_app
from gateway.http.keys import SERVICES
from tests.e2e.conftest import settings_for

ROOT = Path(__file__).resolve().parents[3]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = (
    ROOT / "docs" / "screenshots"
    if os.environ.get("UPDATE_SCREENSHOTS") == "1"
    else ROOT / "tests" / "artifacts" / "screenshots"
)


def _need_chromium() -> None:
    missing = None
    if not Path(CHROMIUM).exists():
        missing = f"{CHROMIUM} is missing (apt-get install chromium; make test does it)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "the playwright package is missing (pip install -e '.[test]')"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)


class Gateway:
    """A gateway serving on 127.0.0.1:<port> from a thread with its own event loop."""

    def __init__(self, **overrides: Any) -> None:
        # amqp_url=None: the embedded broker even when the test session set AMQP_URL.
        self.settings = settings_for("embedded", **{"amqp_url": None, **overrides})
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="gateway", daemon=True)
        self.url = ""
        self._runner: web.AppRunner | None = None
        self.services: Services | None = None

    def start(self) -> None:
        self.thread.start()
        self.run(self._start())

    async def _start(self) -> None:
        app = create_app(self.settings)
        self.services = app[SERVICES]
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    def stop(self) -> None:
        if self._runner is not None:
            self.run(self._runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(15)
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        """Run ``coro`` on the gateway's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw, status = resp.read(), resp.status
        except urllib.error.HTTPError as err:
            raw, status = err.read(), err.code
        return status, (json.loads(raw) if raw else None)

    def post_json(self, path: str, body: Any = None, **kw: Any) -> Any:
        status, data = self.call("POST", path, body if body is not None else {}, **kw)
        assert status < 300, (status, data)
        return data

    def get_json(self, path: str, **kw: Any) -> Any:
        status, data = self.call("GET", path, **kw)
        assert status < 300, (status, data)
        return data


def wait_for_path(page: Any, path: str) -> None:
    """Wait until the page shows ``path`` (the path exactly, whatever the query)."""
    page.wait_for_url(lambda url: urlsplit(url).path == path)
    page.wait_for_load_state()


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    gw = Gateway()
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    # One Chromium per test, not per session: Playwright's sync API keeps an event
    # loop running in the main thread while it is open, and pytest-asyncio's tests
    # (the rest of the suite) cannot start theirs meanwhile. A launch takes ~1 s.
    _need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, gateway: Gateway) -> Iterator[Any]:
    context = browser.new_context(
        base_url=gateway.url,
        locale="pl-PL",
        timezone_id="Europe/Warsaw",
        viewport={"width": 1280, "height": 900},
    )
    context.set_default_timeout(15_000)
    pg = context.new_page()
    try:
        yield pg
    finally:
        context.close()


@pytest.fixture
def sign_in(gateway: Gateway) -> Callable[..., dict[str, Any]]:
    def _sign_in(page: Any, name: str = "Poradnia Kardiologiczna Testowa") -> dict[str, Any]:
        provider: dict[str, Any] = gateway.post_json("/sandbox/providers", {"name": name})
        page.goto("/ui/signin")
        page.get_by_label("Token dostępu lub asercja klienta").fill(provider["token"])
        page.get_by_role("button", name="Zaloguj się", exact=True).click()
        wait_for_path(page, "/ui/")
        return provider

    return _sign_in


@pytest.fixture
def screenshot() -> Callable[[Any, str], Path]:
    def _shot(page: Any, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return _shot
