"""PESEL helpers (DOMAIN.md Identifiers/PESEL: 11 digits, date and sex, checksum 1,3,7,9...)."""

from __future__ import annotations

import random
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import pesel

# Known numbers (published examples and hand-checked ones).
KNOWN = [
    ("44051401359", date(1944, 5, 14), "male"),
    ("05222800007", date(2005, 2, 28), "female"),
    ("99923199997", date(1899, 12, 31), "male"),
    ("99723100032", date(2299, 12, 31), "male"),
]


def with_check(first_ten: str) -> str:
    return first_ten + str(pesel.check_digit(first_ten))


@pytest.mark.parametrize(("number", "born", "sex"), KNOWN)
def test_known_numbers(number: str, born: date, sex: str) -> None:
    assert pesel.is_valid(number)
    pesel.validate(number)
    assert pesel.birth_date(number) == born
    assert pesel.sex(number) == sex


@pytest.mark.parametrize(
    ("century_year", "month_code"),
    [(1800, 81), (1900, 1), (2000, 21), (2100, 41), (2200, 61)],
)
def test_century_encoding(century_year: int, month_code: int) -> None:
    number = pesel.generate(date(century_year + 7, 1, 9), "female", serial=12)
    assert number[:6] == f"07{month_code:02d}09"
    assert pesel.birth_date(number) == date(century_year + 7, 1, 9)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("", "exactly 11 digits long, got 0"),
        ("4405140135", "exactly 11 digits long, got 10"),
        ("440514013591", "exactly 11 digits long, got 12"),
        ("4405140135a", "digits 0-9 only"),
        ("44 51401359", "digits 0-9 only"),
        ("\uff14" + "4051401359", "digits 0-9 only"),  # full-width 4: isdigit(), not ASCII
        ("44051401358", "checksum is wrong: the last digit should be 9, not 8"),
        ("44051401395", "checksum is wrong"),  # two digits swapped
        ("00000000001", "checksum is wrong"),
        (with_check("4413310135"), "month code 13"),
        (with_check("4400310135"), "month code 00"),
        (with_check("4493010135"), "month code 93"),
        (with_check("4402300135"), "day 30 does not exist in 1944-02"),
        (with_check("0002290135"), "day 29 does not exist in 1900-02"),  # 1900 not leap
        (with_check("4404000135"), "day 00 does not exist"),
    ],
)
def test_known_bad(bad: str, message: str) -> None:
    assert not pesel.is_valid(bad)
    with pytest.raises(ValueError, match=message):
        pesel.validate(bad)
    with pytest.raises(ValueError):
        pesel.birth_date(bad)
    with pytest.raises(ValueError):
        pesel.sex(bad)


def test_messages_do_not_repeat_the_number() -> None:
    with pytest.raises(ValueError) as err:
        pesel.validate("44051401358")
    assert "44051401358" not in str(err.value)


def test_non_string_is_invalid() -> None:
    assert not pesel.is_valid(44051401359)
    assert not pesel.is_valid(None)
    with pytest.raises(ValueError, match="must be a string"):
        pesel.validate(44051401359)  # type: ignore[arg-type]


def test_leap_day_2000_is_valid() -> None:
    number = pesel.generate(date(2000, 2, 29), "male", serial=0)
    assert number == with_check("0022290001")
    assert pesel.birth_date(number) == date(2000, 2, 29)


def test_generate_serial_is_deterministic_and_bounded() -> None:
    assert pesel.generate(date(1980, 6, 1), "female", serial=0)[6:10] == "0000"
    assert pesel.generate(date(1980, 6, 1), "male", serial=0)[6:10] == "0001"
    assert pesel.generate(date(1980, 6, 1), "male", serial=4999)[6:10] == "9999"
    with pytest.raises(ValueError, match="serial"):
        pesel.generate(date(1980, 6, 1), "male", serial=5000)
    with pytest.raises(ValueError, match="serial"):
        pesel.generate(date(1980, 6, 1), "male", serial=-1)


def test_generate_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="sex"):
        pesel.generate(date(1980, 6, 1), "other")
    with pytest.raises(ValueError, match="birth dates from 1800-01-01 to 2299-12-31"):
        pesel.generate(date(1799, 12, 31), "male")
    with pytest.raises(ValueError, match="birth dates"):
        pesel.generate(date(2300, 1, 1), "female")


def test_generate_with_seeded_rng_is_reproducible() -> None:
    a = pesel.generate(date(1990, 3, 3), "female", rng=random.Random(7))
    b = pesel.generate(date(1990, 3, 3), "female", rng=random.Random(7))
    assert a == b
    assert pesel.is_valid(a)


def test_pseudonym() -> None:
    p = pesel.pseudonym("44051401359", b"k1")
    assert len(p) == 64 and int(p, 16) >= 0
    assert p == pesel.pseudonym("44051401359", b"k1")
    assert p != pesel.pseudonym("44051401359", b"k2")
    assert p != pesel.pseudonym("05222800007", b"k1")
    assert "44051401359" not in p
    with pytest.raises(ValueError, match="secret"):
        pesel.pseudonym("44051401359", b"")


births = st.dates(min_value=date(1800, 1, 1), max_value=date(2299, 12, 31))
sexes = st.sampled_from(["female", "male"])


@given(born=births, sex=sexes, serial=st.integers(0, 4999))
def test_round_trip(born: date, sex: str, serial: int) -> None:
    number = pesel.generate(born, sex, serial=serial)
    assert len(number) == 11 and number.isdigit()
    assert pesel.is_valid(number)
    assert pesel.birth_date(number) == born
    assert pesel.sex(number) == sex


@given(born=births, sex=sexes, seed=st.integers(0, 2**32))
def test_round_trip_random_serial(born: date, sex: str, seed: int) -> None:
    number = pesel.generate(born, sex, rng=random.Random(seed))
    assert pesel.birth_date(number) == born
    assert pesel.sex(number) == sex


@given(
    born=births,
    sex=sexes,
    serial=st.integers(0, 4999),
    pos=st.integers(0, 10),
    delta=st.integers(1, 9),
)
def test_any_single_digit_error_is_caught(
    born: date, sex: str, serial: int, pos: int, delta: int
) -> None:
    # Weights 1,3,7,9 are coprime with 10, so every single-digit change breaks the checksum.
    number = pesel.generate(born, sex, serial=serial)
    digit = (int(number[pos]) + delta) % 10
    typo = number[:pos] + str(digit) + number[pos + 1 :]
    assert not pesel.is_valid(typo)
