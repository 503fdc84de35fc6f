"""PESEL: the Polish national identification number.

DOMAIN.md, "Identifiers, codes and conventions" (PESEL, OID
``2.16.840.1.113883.3.4424.1.1.616``): 11 digits, date of birth and sex
encoded, last digit a checksum with weights 1,3,7,9,1,3,7,9,1,3; a bad
checksum is rejected with a clear message. That section carries no ``R-`` id;
cite it as "DOMAIN.md Identifiers/PESEL".

Layout ``YYMMDDZZZPK``: ``YY`` the year within its century, ``MM`` the month
plus a century offset (1800s +80, 1900s +0, 2000s +20, 2100s +40, 2200s +60),
``DD`` the day, ``ZZZ`` a serial, ``P`` the sex digit (even female, odd male)
and ``K`` the check digit.

Pure code: no I/O, no adapter imports. A PESEL is personal data: never log it;
use :func:`pseudonym` where a stable stand-in is needed.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from datetime import date
from typing import Literal, Protocol

Sex = Literal["female", "male"]

WEIGHTS = (1, 3, 7, 9, 1, 3, 7, 9, 1, 3)
# Month offset -> first year of the century it encodes.
_CENTURY_BY_OFFSET = {80: 1800, 0: 1900, 20: 2000, 40: 2100, 60: 2200}
_OFFSET_BY_CENTURY = {c: o for o, c in _CENTURY_BY_OFFSET.items()}
MIN_BIRTH_DATE = date(1800, 1, 1)
MAX_BIRTH_DATE = date(2299, 12, 31)
# Serial numbers available per birth date and sex: ZZZ (000-999) x 5 sex digits.
SERIALS_PER_DATE_AND_SEX = 5000

_SYSTEM_RANDOM = random.SystemRandom()


class RandomSource(Protocol):
    def randrange(self, stop: int, /) -> int: ...


def check_digit(first_ten: str) -> int:
    """The checksum digit for the first ten digits (weights 1,3,7,9,1,3,7,9,1,3)."""
    total = sum(w * int(d) for w, d in zip(WEIGHTS, first_ten, strict=True))
    return (10 - total % 10) % 10


def _decode_date(pesel: str) -> date:
    yy, mm, dd = int(pesel[0:2]), int(pesel[2:4]), int(pesel[4:6])
    offset = (mm // 20) * 20
    century = _CENTURY_BY_OFFSET[offset]
    month = mm - offset
    if not 1 <= month <= 12:
        raise ValueError(
            f"PESEL encodes an invalid birth date: month code {pesel[2:4]} is not a month "
            "of any century (01-12 for 1900s, 21-32 for 2000s, 41-52, 61-72, 81-92 for 1800s)"
        )
    try:
        return date(century + yy, month, dd)
    except ValueError:
        raise ValueError(
            f"PESEL encodes an invalid birth date: day {pesel[4:6]} does not exist in "
            f"{century + yy:04d}-{month:02d}"
        ) from None


def validate(pesel: str) -> None:
    """Raise ``ValueError`` saying what is wrong with ``pesel``; return if it is valid.

    Checked in order: type, length (11), digits only, checksum (DOMAIN.md
    Identifiers/PESEL: weights 1,3,7,9,1,3,7,9,1,3), encoded birth date.
    The messages never repeat the number itself (it is personal data).
    """
    if not isinstance(pesel, str):
        raise ValueError(f"PESEL must be a string of 11 digits, got {type(pesel).__name__}")
    if len(pesel) != 11:
        raise ValueError(f"PESEL must be exactly 11 digits long, got {len(pesel)} characters")
    if not (pesel.isascii() and pesel.isdigit()):
        raise ValueError("PESEL must contain digits 0-9 only")
    expected = check_digit(pesel[:10])
    if int(pesel[10]) != expected:
        raise ValueError(
            f"PESEL checksum is wrong: the last digit should be {expected}, not {pesel[10]} "
            "(a digit is probably mistyped)"
        )
    _decode_date(pesel)


def is_valid(pesel: object) -> bool:
    """True when ``pesel`` is a well-formed PESEL (length, digits, checksum, date)."""
    try:
        validate(pesel)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


def birth_date(pesel: str) -> date:
    """The birth date encoded in a valid PESEL (``ValueError`` if it is not valid)."""
    validate(pesel)
    return _decode_date(pesel)


def sex(pesel: str) -> Sex:
    """``"female"`` (even 10th digit) or ``"male"`` (odd) for a valid PESEL."""
    validate(pesel)
    return "male" if int(pesel[9]) % 2 else "female"


def generate(
    birth_date: date,
    sex: str,
    serial: int | None = None,
    rng: RandomSource | None = None,
) -> str:
    """A valid PESEL for ``birth_date`` (1800-01-01 .. 2299-12-31) and ``sex``.

    ``serial`` (0 .. 4999) picks one of the 5,000 numbers a date and sex allow
    (``ZZZP`` = ``2 * serial + (1 if male else 0)``), deterministically; when
    omitted, ``rng.randrange`` picks one (``random.SystemRandom`` by default).
    Used by the sandbox (``POST /sandbox/patients``) and by tests.
    """
    if sex not in ("female", "male"):
        raise ValueError(f"sex must be 'female' or 'male', got {sex!r}")
    if not MIN_BIRTH_DATE <= birth_date <= MAX_BIRTH_DATE:
        raise ValueError(
            f"a PESEL can encode birth dates from {MIN_BIRTH_DATE} to {MAX_BIRTH_DATE}, "
            f"got {birth_date}"
        )
    if serial is None:
        serial = (rng or _SYSTEM_RANDOM).randrange(SERIALS_PER_DATE_AND_SEX)
    if not 0 <= serial < SERIALS_PER_DATE_AND_SEX:
        raise ValueError(f"serial must be in 0..{SERIALS_PER_DATE_AND_SEX - 1}, got {serial}")
    century = birth_date.year // 100 * 100
    month_code = birth_date.month + _OFFSET_BY_CENTURY[century]
    block = 2 * serial + (1 if sex == "male" else 0)
    first_ten = f"{birth_date.year % 100:02d}{month_code:02d}{birth_date.day:02d}{block:04d}"
    return first_ten + str(check_digit(first_ten))


def pseudonym(pesel: str, secret: bytes) -> str:
    """A stable, non-reversible stand-in: hex HMAC-SHA256 of the PESEL under ``secret``.

    For log lines and indexes that need to tell patients apart without
    holding the number. Does not validate ``pesel`` (a mistyped one is still
    personal data).
    """
    if not secret:
        raise ValueError("pseudonym needs a non-empty secret")
    return hmac.new(secret, pesel.encode("utf-8"), hashlib.sha256).hexdigest()
