"""The write path's shortcuts give what the code they replace gave.

Each test keeps a copy of the replaced code (``_reference_*``) and compares it with the
shortcut on examples and on generated input, so that a change of either shows here.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from gateway.timeutil import WARSAW, to_fhir, utc

# --------------------------------------------------------------------------- instants


def _reference_to_fhir(dt: datetime) -> str:
    d = utc(dt)
    if d.microsecond:
        return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"
    return d.strftime("%Y-%m-%dT%H:%M:%SZ")


def _instants(rng: random.Random, n: int) -> list[datetime]:
    zones = [UTC, WARSAW, timezone(timedelta(hours=-5)), timezone(timedelta(minutes=345))]
    out = []
    for i in range(n):
        year = rng.choice([1, 9, 10, 999, 1000, 1970, 2026, 2027, 9998])
        dt = datetime(year, rng.randint(1, 12), rng.randint(1, 28), tzinfo=UTC) + timedelta(
            seconds=rng.randint(0, 86399),
            microseconds=0 if i % 3 == 0 else rng.randint(0, 999_999),
        )
        out.append(dt.astimezone(rng.choice(zones)))
    return out


def test_to_fhir_is_strftimes_text() -> None:
    rng = random.Random(5)
    cases = [
        *_instants(rng, 3000),
        datetime(2027, 1, 11, 7, 0, tzinfo=UTC),
        datetime(2027, 1, 11, 7, 0, 0, 999, tzinfo=UTC),  # under a millisecond: ".000"
        datetime(2027, 1, 11, 7, 0, 0, 1000, tzinfo=UTC),
        datetime(2027, 3, 28, 3, 30, tzinfo=WARSAW),
    ]
    for dt in cases:
        assert to_fhir.__wrapped__(dt) == _reference_to_fhir(dt), dt
        assert to_fhir(dt) == _reference_to_fhir(dt), dt
    with pytest.raises(ValueError):
        to_fhir.__wrapped__(datetime(2027, 1, 11, 7, 0))
