"""The web pages' languages (issue 10): every message has its Polish text, and the
language is chosen from ?lang=, the cookie, Accept-Language, then Polish."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.http.ui import core, i18n, plain, schedules

UI = Path(i18n.__file__).parent
DQ = r'"(?:[^"\\]|\\.)*"'
SQ = r"'(?:[^'\\]|\\.)*'"
CALL = re.compile(r"\b_\(\s*((?:" + DQ + r"\s*)+|(?:" + SQ + r"\s*)+)")


def messages() -> dict[str, str]:
    """Every literal ``_("...")`` in the templates and the code, with where it is."""
    found: dict[str, str] = {}
    files = sorted(UI.rglob("*.html")) + sorted(UI.rglob("*.py"))
    for path in files:
        for m in CALL.finditer(path.read_text("utf-8")):
            text = "".join(x[1:-1] for x in re.findall(DQ + "|" + SQ, m.group(1)))
            found.setdefault(text, path.name)
    for item in core.NAV:
        found.setdefault(item.label, "core.NAV")
    for _pattern, message in plain.PLAIN:
        found.setdefault(message, "plain.PLAIN")
    for kinds in schedules.KINDS.values():
        for kind in kinds:
            found.setdefault(kind, "schedules.KINDS")
    for day in schedules.WEEKDAYS:
        found.setdefault(day, "schedules.WEEKDAYS")
    return found


def test_every_message_has_a_polish_translation() -> None:
    found = messages()
    assert len(found) > 40
    missing = {m: where for m, where in found.items() if m not in i18n.catalog("pl")}
    assert not missing, f"add these to locales/pl.json: {missing}"


def test_polish_placeholders_match_the_english_ones() -> None:
    for english, polish in i18n.catalog("pl").items():
        assert set(re.findall(r"{(\w+)}", english)) == set(re.findall(r"{(\w+)}", polish)), english


def test_translator_fills_placeholders_and_falls_back_to_english() -> None:
    _ = i18n.translator("pl")
    assert _("Sign in") == "Zaloguj się"
    assert _("Signed in as {name} (provider id {id}).", name="X", id="p1").startswith(
        "Zalogowano jako X"
    )
    assert _("a message nobody translated") == "a message nobody translated"
    assert i18n.translator("en")("Sign in") == "Sign in"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("en-GB,en;q=0.9,pl;q=0.8", "en"),
        ("pl-PL,pl;q=0.9,en;q=0.8", "pl"),
        ("de-DE,de;q=0.9,en;q=0.5", "en"),
        ("en;q=0.2,pl;q=0.7", "pl"),
        ("de,fr", None),
        ("en;q=0", None),
        ("", None),
    ],
)
def test_accept_language(header: str, expected: str | None) -> None:
    assert i18n.from_accept_language(header) == expected
