"""Patient messages from the templates in ``data/notification-templates.json`` (pure).

``render(kind, channel, lang, facts)`` returns ``(subject, text)``. ``facts`` are
plain values of the visit (``VisitFacts``); the PESEL is never among them.
SMS text is folded to ASCII (Polish diacritics would force UCS-2, 70
characters a segment) and the facility name shortened, so a message fits one
160-character GSM-7 segment.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

from gateway.timeutil import WARSAW
from mappings import codes

CHANNELS = ("sms", "email", "push")
LANGUAGES = ("pl", "en")
SMS_MAX = 160
SMS_PLACE_MAX = 28

# Polish letters and their plain forms, for fold_ascii
_FOLD_PAIRS = tuple(zip("ąćęłńóśźżĄĆĘŁŃÓŚŹŻ", "acelnoszzACELNOSZZ", strict=True))
_SPACES = re.compile(r"[ \t]+")


@cache
def templates() -> dict[str, Any]:
    text = (
        resources.files("mappings")
        .joinpath("data", "notification-templates.json")
        .read_text(encoding="utf-8")
    )
    data: dict[str, Any] = json.loads(text)
    return data


def kinds() -> list[str]:
    return list(templates()["templates"])


@dataclass(frozen=True)
class VisitFacts:
    """What a message may say about a visit (no PESEL, no contact data)."""

    start: datetime | None = None
    scope: str | None = None
    category: str | None = None
    place: str | None = None
    address: str | None = None
    ref: str | None = None
    cancel_reason: str | None = None


def fold_ascii(text: str) -> str:
    """Polish letters without diacritics, other non-ASCII dropped (for GSM-7 SMS)."""
    if text.isascii():
        return text
    # A letter at a time: 1-2 us a message instead of the ~15 us of str.translate's
    # lookup per character.
    for letter, plain in _FOLD_PAIRS:
        if letter in text:
            text = text.replace(letter, plain)
    return text.encode("ascii", "ignore").decode("ascii")


def _short(text: str, limit: int) -> str:
    """``text`` cut at a word boundary within ``limit`` characters."""
    if len(text) <= limit:
        return text
    cut = text[: limit + 1].rsplit(" ", 1)[0] if " " in text[:limit] else text[:limit]
    return cut.rstrip(" ,.-")


def values(facts: VisitFacts, lang: str, channel: str, **extra: str) -> dict[str, str]:
    t = templates()
    out: dict[str, str] = {"date": "", "time": "", "weekday": ""}
    if facts.start is not None:
        local = facts.start.astimezone(WARSAW)
        # strftime's "%d.%m.%Y" and "%H:%M", without its cost (3 us each)
        out["date"] = f"{local.day:02d}.{local.month:02d}.{local.year}"
        out["time"] = f"{local.hour:02d}:{local.minute:02d}"
        out["weekday"] = t["weekdays"][lang][local.weekday()]
    scope = facts.scope or ""
    out["scope"] = t["scope_short"][lang].get(scope, scope)
    info = codes.scopes().get(scope)
    out["scope_full"] = (info.display_pl if lang == "pl" else info.display_en) if info else scope
    place = facts.place or ("placówka" if lang == "pl" else "facility")
    out["place"] = _short(place, SMS_PLACE_MAX) if channel == "sms" else place
    out["address"] = facts.address or ""
    out["ref"] = facts.ref or ""
    reason = codes.cancellation_reasons().get(facts.cancel_reason or "")
    out["reason"] = (reason.display_pl if lang == "pl" else reason.display_en) if reason else "-"
    snippets = t["snippets"][lang]
    out["next"] = snippets["next_control" if facts.category == "control" else "next_default"]
    out.update(extra)
    return out


def render(kind: str, channel: str, lang: str, facts: VisitFacts, **extra: str) -> tuple[str, str]:
    """``(subject, text)`` of a message; subject is empty for SMS. ``KeyError`` if none."""
    if lang not in LANGUAGES:
        lang = templates()["default_language"]
    tpl = templates()["templates"][kind][lang]
    vals = values(facts, lang, channel, **extra)
    text = tpl[channel].format_map(vals)
    subject = tpl.get("subject", "").format_map(vals) if channel != "sms" else ""
    if channel == "sms":
        text = fold_ascii(text)
        if "  " in text or "\t" in text:  # the regex is most of the cost when it finds none
            text = _SPACES.sub(" ", text)
        text = text.replace(" ,", ",").strip()
        text = text.replace(", .", ".").replace(", ,", ",")
        if len(text) > SMS_MAX:
            text = text[: SMS_MAX - 1].rstrip() + "."
    return subject, text


def has(kind: str, channel: str) -> bool:
    tpl = templates()["templates"].get(kind, {})
    return all(channel in tpl.get(lang, {}) for lang in LANGUAGES)
