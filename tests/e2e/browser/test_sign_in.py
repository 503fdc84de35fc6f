"""Sign-in in a real browser (issue 10): the private key file signs a client assertion
in the page (WebCrypto), the key never leaves the browser; keyboard only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.e2e.browser.conftest import Gateway, wait_for_path


def test_sign_in_with_the_key_file_keyboard_only(
    page: Any, gateway: Gateway, screenshot: Callable[[Any, str], Path]
) -> None:
    provider = gateway.post_json("/sandbox/providers", {"name": "Gabinet Kluczowy"})
    posted: list[str] = []
    page.on("request", lambda r: posted.append(r.post_data or "") if r.method == "POST" else None)
    page.goto("/ui/")
    assert "/ui/signin" in page.url
    screenshot(page, "01-sign-in")
    # Keyboard: the skip link is the first stop, then the page's own controls.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip-link"
    page.get_by_label("Identyfikator klienta (client id)").focus()
    page.keyboard.type(provider["client_id"])
    page.get_by_label("Plik klucza prywatnego (PEM)").set_input_files(
        files=[
            {
                "name": "key.pem",
                "mimeType": "application/x-pem-file",
                "buffer": provider["private_key_pem"].encode(),
            }
        ]
    )
    page.get_by_role("button", name="Zaloguj się kluczem").focus()
    page.keyboard.press("Enter")
    wait_for_path(page, "/ui/")
    assert "Gabinet Kluczowy" in page.content()
    # Only the signed assertion was posted, never the key.
    assert posted and all("PRIVATE" not in body for body in posted)


def test_missing_key_is_explained_next_to_the_field(page: Any, gateway: Gateway) -> None:
    page.goto("/ui/signin?lang=en")
    page.get_by_label("Client id").fill("client-x")
    page.get_by_role("button", name="Sign in with the key").click()
    error = page.locator("#f-key_file-error")
    assert error.is_visible()
    assert "Choose your private key file" in error.inner_text()
    assert page.get_by_label("Private key file (PEM)").get_attribute("aria-invalid") == "true"


def test_sign_in_with_a_token_and_out(
    page: Any, sign_in: Callable[..., dict[str, Any]], screenshot: Callable[[Any, str], Path]
) -> None:
    sign_in(page)
    screenshot(page, "02-overview")
    page.get_by_role("button", name="Wyloguj").click()
    wait_for_path(page, "/ui/signin")
    page.goto("/ui/")
    assert "/ui/signin" in page.url
