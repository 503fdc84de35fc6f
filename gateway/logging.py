"""Structured JSON logs (structlog) with a correlation id and no personal data.

ARCHITECTURE.md, Operations: "structured JSON logs (structlog) with a
correlation id per request and message, and no PESEL or contact data in
logs". :func:`configure_logging` sets up both structlog and the standard
library (aiohttp, aio_pika, pymongo...) so that every line on the stream is
one JSON object, and every line goes through :func:`mask_pii`.

Per request / consumed message::

    bind_correlation(request_id_or_new, tenant=provider_id)
    log = structlog.get_logger(__name__)
    log.info("slot.booked", slot=slot_id)
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import logging
import re
import sys
import uuid
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from enum import Enum
from typing import Any, TextIO

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from gateway import pesel as _pesel

__all__ = [
    "bind_correlation",
    "configure_logging",
    "mask_pii",
    "mask_text",
    "new_correlation_id",
]

PESEL_MASK = "***PESEL***"
EMAIL_MASK = "***EMAIL***"
PHONE_MASK = "***PHONE***"
JWT_MASK = "***JWT***"
SECRET_MASK = "***SECRET***"
KEY_MASK = "***"

# --------------------------------------------------------------------------- patterns

_D = r"[0-9]"
# Digits that are not glued to other digits, nor the fraction of a decimal number.
_NUM_START = r"(?<![0-9])(?<![0-9]\.)"
_NUM_END = r"(?![0-9])(?!\.[0-9])"
_SEP = r"[ \-]"
_PHONE_BODY = (
    rf"(?:{_D}{{3}}{_SEP}?{_D}{{3}}{_SEP}?{_D}{{3}}"  # 123456789, 123 456 789, 123-456-789
    rf"|{_D}{{2}}{_SEP}{_D}{{3}}{_SEP}{_D}{{2}}{_SEP}{_D}{{2}})"  # 22 123 45 67 (landline)
)
_PHONE_PREFIX = rf"(?:\(?(?:\+|00){_SEP}?48\)?{_SEP}?|48{_SEP})"  # +48 / 0048 / (+48) / "48 "

_PII = re.compile(
    # Order matters: at one position the first alternative that matches wins.
    r"(?P<email>[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,})"
    r"|(?P<pem>-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$))"
    r"|(?P<jwt>\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*)"
    r"|(?P<whsec>\bwhsec_[A-Za-z0-9+/=]+)"
    # UUIDs and long hex ids (correlation ids, pseudonyms) are kept whole, so a
    # run of digits inside them is never taken for a phone number or a PESEL.
    r"|(?P<hexid>(?<![0-9A-Za-z])(?:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}"
    r"-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32,})(?![0-9A-Za-z]))"
    rf"|(?P<phone>{_NUM_START}{_PHONE_PREFIX}?{_PHONE_BODY}{_NUM_END})"
    rf"|(?P<pesel>{_NUM_START}{_D}{{11}}{_NUM_END})",
    re.DOTALL,
)


def _replace(m: re.Match[str]) -> str:
    kind = m.lastgroup
    if kind == "email":
        return EMAIL_MASK
    if kind == "phone":
        return PHONE_MASK
    if kind == "pesel":
        text = m.group()
        # 48XXXXXXXXX is also a phone number with its country code; a valid PESEL wins.
        if text.startswith("48") and not _pesel.is_valid(text):
            return PHONE_MASK
        return PESEL_MASK
    if kind in ("jwt", "whsec", "pem"):
        return JWT_MASK if kind == "jwt" else SECRET_MASK
    return m.group()  # hexid: kept as is


def mask_text(text: str) -> str:
    """``text`` with PESELs, e-mail addresses, phone numbers, JWTs and secrets masked."""
    return _PII.sub(_replace, text)


# --------------------------------------------------------------------------- keys

# Keys whose values are dropped whatever they hold (matched on any ``_``-part of the
# key, case-insensitive, camelCase split: ``patientPesel``, ``contact_phone``).
_SENSITIVE_PARTS = frozenset(
    {
        "pesel",
        "phone",
        "phones",
        "telephone",
        "mobile",
        "msisdn",
        "email",
        "emails",
        "mail",
        "contact",
        "contacts",
        "telecom",
        "authorization",
        "token",
        "secret",
        "password",
        "passwd",
        "assertion",
        "cookie",
        "apikey",
        "surname",
    }
)
# Keys that are sensitive only as a whole (``name`` is personal, ``queue_name`` is not).
_SENSITIVE_EXACT = frozenset(
    {
        "name",
        "given",
        "family",
        "given_name",
        "family_name",
        "first_name",
        "last_name",
        "full_name",
        "patient_name",
        "maiden_name",
        "address",
        "birth_date",
        "birthdate",
        "dob",
        "private_key",
        "private_key_pem",
        "api_key",
        "set_cookie",
    }
)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SPLIT = re.compile(r"[^a-z0-9]+")
# Added by the processors themselves; never personal data, and kept byte-exact.
_SAFE_KEYS = frozenset({"timestamp", "level", "logger"})


def _is_sensitive_key(key: str) -> bool:
    norm = _CAMEL.sub("_", key).lower()
    parts = [p for p in _SPLIT.split(norm) if p]
    if "_".join(parts) in _SENSITIVE_EXACT:
        return True
    if any(p in _SENSITIVE_PARTS for p in parts):
        return True
    return "private_key" in "_".join(parts)


# --------------------------------------------------------------------------- walking


def _mask_value(value: Any, depth: int = 0) -> Any:
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, int):
        # An 11-digit integer is as much a PESEL as the same digits in a string.
        text = str(value)
        masked = mask_text(text)
        return value if masked == text else masked
    if depth > 20:
        return "<nested too deep>"
    if isinstance(value, Mapping):
        return {
            (mask_text(k) if isinstance(k, str) else k): (
                KEY_MASK
                if isinstance(k, str) and _is_sensitive_key(k) and v is not None
                else _mask_value(v, depth + 1)
            )
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_mask_value(v, depth + 1) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return mask_text(bytes(value).decode("utf-8", "replace"))
    if isinstance(value, (datetime, date, time, timedelta, uuid.UUID)):
        return value
    if isinstance(value, Enum):
        return _mask_value(value.value, depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _mask_value(
            {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, depth + 1
        )
    dump = getattr(value, "model_dump", None)  # pydantic models
    if callable(dump):
        try:
            return _mask_value(dump(mode="json"), depth + 1)
        except Exception:  # a log line must never fail
            pass
    # Anything else would be rendered with str() anyway: mask that text.
    return mask_text(str(value))


def mask_pii(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask personal data in every value, at any depth.

    - values of sensitive keys (``pesel``, ``phone``, ``email``, ``contact``,
      ``name``, ``given``, ``family``, ``telecom``, ``authorization``,
      ``token``, ``secret``, ``private_key``... also as parts such as
      ``patient_pesel`` or ``contactPhone``) become ``"***"``;
    - in all other text (the event message included): PESELs (11 digits not
      part of a longer number) -> ``***PESEL***``; e-mail addresses ->
      ``***EMAIL***``; Polish phone numbers (``+48 123 456 789``,
      ``48123456789``, ``123-456-789``, a standalone ``123456789``,
      ``22 123 45 67``) -> ``***PHONE***``; JWTs, ``whsec_`` secrets and PEM
      private keys -> ``***JWT***`` / ``***SECRET***``.

    UUIDs and long hex ids are never altered; numbers of other lengths (a
    4-digit referral code, a 14-digit REGON, epoch seconds) neither.
    """
    for key, value in list(event_dict.items()):
        if key in _SAFE_KEYS:
            continue
        if _is_sensitive_key(key) and value is not None:
            event_dict[key] = KEY_MASK
        else:
            event_dict[key] = _mask_value(value)
    return event_dict


# --------------------------------------------------------------------------- rendering


def _dumps(obj: Any, **_: Any) -> str:
    try:
        return orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):  # e.g. an int beyond 64 bits
        return json.dumps(obj, default=str, ensure_ascii=False)


def _parse_level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    value = logging.getLevelName(level.strip().upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {level!r} (use DEBUG, INFO, WARNING, ERROR)")
    return value


class _JsonHandler(logging.StreamHandler):
    """The one root handler this module installs (found again on reconfiguration)."""


def configure_logging(level: str | int = "INFO", stream: TextIO | None = None) -> None:
    """Route structlog and the standard library to ``stream`` as one JSON object per line.

    Processors: contextvars (the correlation id), level, ISO UTC timestamp,
    exception text, :func:`mask_pii`, JSON (orjson). Calling it again replaces
    the previous configuration (loggers cached before keep the old stream).
    """
    out = stream if stream is not None else sys.stdout
    min_level = _parse_level(level)
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    renderer = structlog.processors.JSONRenderer(serializer=_dumps)

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        timestamper,
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            mask_pii,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        context_class=dict,
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            *shared,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            mask_pii,
            renderer,
        ],
    )
    handler = _JsonHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _JsonHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(min_level)


def new_correlation_id() -> str:
    """A fresh correlation id (uuid4, 32 hex digits)."""
    return uuid.uuid4().hex


def bind_correlation(correlation_id: str, **kw: Any) -> None:
    """Start a fresh log context (a request or a consumed message) with its correlation id.

    Clears whatever the previous unit of work bound in this context, then binds
    ``correlation_id`` and ``kw`` (e.g. ``tenant=...``, ``message_type=...``): what
    ``structlog.contextvars.clear_contextvars()`` then ``bind_contextvars(...)`` leave,
    without setting a variable that already holds its value. Every event of a batch
    (hundreds of ``resource.Slot.created`` of one transaction) binds the same
    correlation id and type in one task: only its message id changes (~1 us a call
    instead of ~6 us: clear_contextvars walks the whole context and sets every one of
    structlog's variables).
    """
    registry = _STRUCTLOG_VARS
    if registry is None:  # a structlog without its registry: its own two calls
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(correlation_id=correlation_id, **kw)
        return
    kw["correlation_id"] = correlation_id
    if len(_KNOWN) != len(registry) or not kw.keys() <= _KNOWN.keys():
        # a key bound for the first time: structlog makes (and registers) its variable
        structlog.contextvars.bind_contextvars(**kw)
        _KNOWN.clear()
        _KNOWN.update((name[_PREFIX_LEN:], var) for name, var in registry.items())
    get = kw.get
    for key, var in _KNOWN.items():
        value = get(key, Ellipsis)
        if var.get() is not value:
            var.set(value)


# structlog's registry of its context variables (name -> ContextVar, every one it ever
# made, in or out of the current context; an unset one reads as its default, Ellipsis).
_PREFIX: str = getattr(structlog.contextvars, "STRUCTLOG_KEY_PREFIX", "structlog_")
_PREFIX_LEN = len(_PREFIX)
_STRUCTLOG_VARS: dict[str, contextvars.ContextVar[Any]] | None = getattr(
    structlog.contextvars, "_CONTEXT_VARS", None
)
_KNOWN: dict[str, contextvars.ContextVar[Any]] = {}  # the registry by bound key
