"""Weekly slot patterns typed on the manual-entry page (R-SCHED-3: the facility decides
how many slots of each category a day gets; DOMAIN.md Time: Warsaw wall-clock times)."""

from __future__ import annotations

from datetime import UTC, date, time, timedelta

import pytest

from gateway.slot_pattern import WeeklyPattern, expand, slots_per_day
from gateway.timeutil import WARSAW


def pattern(**over: object) -> WeeklyPattern:
    base: dict[str, object] = {
        "first_day": date(2027, 1, 11),  # a Monday
        "weeks": 6,
        "weekdays": frozenset({0}),
        "day_start": time(8, 0),
        "day_end": time(12, 0),
        "minutes": 20,
        "counts": (
            ("first-urgent", 1),
            ("first-stable", 9),
            ("first-privileged", 1),
            ("control", 1),
        ),
    }
    base.update(over)
    return WeeklyPattern(**base)  # type: ignore[arg-type]


def test_mondays_8_to_12_twenty_minutes_six_weeks() -> None:
    out = expand(pattern())
    assert len(out.slots) == 6 * 12
    assert out.skipped == 0
    days = sorted({s.start.date() for s in out.slots})
    assert days == [date(2027, 1, 11) + timedelta(weeks=i) for i in range(6)]
    first = out.slots[0]
    assert first.start.isoformat() == "2027-01-11T08:00:00+01:00"
    assert first.end.isoformat() == "2027-01-11T08:20:00+01:00"
    assert out.slots[11].end.time() == time(12, 0)


def test_category_counts_fill_each_day_in_order_r_sched_3() -> None:
    out = expand(pattern(weeks=2))
    for day in {s.start.date() for s in out.slots}:
        cats = [s.category for s in out.slots if s.start.date() == day]
        assert cats == ["first-urgent"] + ["first-stable"] * 9 + ["first-privileged", "control"]


def test_counts_must_add_up_to_the_slots_of_a_day() -> None:
    with pytest.raises(ValueError, match="add up to the 12 slots"):
        expand(pattern(counts=(("first-stable", 11),)))


def test_several_weekdays_and_no_category() -> None:
    out = expand(pattern(weeks=1, weekdays=frozenset({0, 2, 4}), counts=((None, 12),)))
    assert len(out.slots) == 36
    assert {s.start.weekday() for s in out.slots} == {0, 2, 4}
    assert all(s.category is None for s in out.slots)


def test_a_part_slot_at_the_end_is_left_out() -> None:
    assert slots_per_day(time(8, 0), time(12, 10), 20) == 12
    assert slots_per_day(time(8, 0), time(8, 10), 20) == 0
    assert slots_per_day(time(12, 0), time(8, 0), 20) == 0


def test_wall_clock_times_across_dst_stay_at_8_00_warsaw() -> None:
    """2027-03-28 clocks go forward: 8:00 is 07:00 UTC before and 06:00 UTC after."""
    out = expand(pattern(first_day=date(2027, 3, 22), weeks=2, counts=(("first-stable", 12),)))
    before, after = out.slots[0], out.slots[12]
    assert before.start.astimezone(UTC).hour == 7
    assert after.start.astimezone(UTC).hour == 6
    assert after.start.astimezone(WARSAW).time() == time(8, 0)


def test_times_the_clock_skips_are_left_out_and_counted() -> None:
    """Sunday 2027-03-28 02:00-03:00 Warsaw does not exist."""
    out = expand(
        pattern(
            first_day=date(2027, 3, 28),
            weeks=1,
            weekdays=frozenset({6}),
            day_start=time(1, 0),
            day_end=time(4, 0),
            minutes=30,
            counts=((None, 6),),
        )
    )
    starts = [s.start.strftime("%H:%M") for s in out.slots]
    assert "02:00" not in starts and "02:30" not in starts
    assert out.skipped == 3  # 01:30-02:00 ends in the gap, 02:00 and 02:30 start in it
    assert len(out.slots) == 3


@pytest.mark.parametrize(("weeks", "minutes"), [(0, 20), (53, 20), (6, 4), (6, 481)])
def test_bounds(weeks: int, minutes: int) -> None:
    with pytest.raises(ValueError):
        expand(pattern(weeks=weeks, minutes=minutes))
