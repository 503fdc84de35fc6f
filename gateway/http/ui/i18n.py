"""Languages of the web pages: Polish by default, English available.

Messages are written in English in the templates and the code (``_("Sign in")``);
``locales/pl.json`` maps each to its Polish text. English needs no catalog: a
message is its own English text. A missing Polish entry falls back to the
English text (``tests/unit/test_ui_i18n.py`` checks that none is missing).

The language of a request: ``?lang=pl|en`` (remembered in a cookie), else the
cookie, else the browser's ``Accept-Language``, else Polish.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any

from aiohttp import web

LANGUAGES = ("pl", "en")
DEFAULT_LANGUAGE = "pl"
LANG_COOKIE = "cer_ui_lang"
LANG_KEY: web.RequestKey[str] = web.RequestKey("ui_lang", str)

Translate = Callable[..., str]


@cache
def catalog(lang: str) -> dict[str, str]:
    """The message catalog of ``lang`` (English text -> translation)."""
    if lang == "en":
        return {}
    text = resources.files("gateway.http.ui").joinpath("locales", f"{lang}.json").read_text("utf-8")
    data: dict[str, str] = json.loads(text)
    return data


def translator(lang: str) -> Translate:
    """``_(message, **values)``: the message in ``lang``, with ``{name}`` placeholders filled."""
    messages = catalog(lang if lang in LANGUAGES else DEFAULT_LANGUAGE)

    def _(message: str, **values: Any) -> str:
        text = messages.get(message, message)
        return text.format(**values) if values else text

    return _


def from_accept_language(header: str) -> str | None:
    """The first of our languages in an ``Accept-Language`` header, by its q-value."""
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        primary = tag.strip().lower().split("-")[0]
        if primary in LANGUAGES and q > 0:
            ranked.append((-q, i, primary))
    return min(ranked)[2] if ranked else None


def choose(request: web.Request) -> tuple[str, bool]:
    """``(language, remember)``: ``remember`` when ``?lang=`` chose it (set the cookie)."""
    asked = request.query.get("lang")
    if asked in LANGUAGES:
        return asked, True
    cookie = request.cookies.get(LANG_COOKIE)
    if cookie in LANGUAGES:
        return cookie, False
    return from_accept_language(request.headers.get("Accept-Language", "")) or (
        DEFAULT_LANGUAGE
    ), False


def language(request: web.Request) -> str:
    return request.get(LANG_KEY, DEFAULT_LANGUAGE)


def gettext(request: web.Request) -> Translate:
    """The ``_`` of this request's language (for messages built in handlers)."""
    return translator(language(request))
