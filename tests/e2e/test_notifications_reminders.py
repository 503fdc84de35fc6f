"""Reminders 7 days and 1 day before the visit (R-NOT-2) on the sandbox clock.

"N days before" is the visit's wall-clock time N calendar days earlier in
Europe/Warsaw (DOMAIN.md Time), also across a DST change; no reminder for a
cancelled or moved visit; the due times live in the store and survive a
restart.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from adapters.memory_store import MemoryStore
from gateway import bootstrap
from gateway import constants as c
from gateway.http.app import create_app
from gateway.http.keys import SERVICES
from tests.e2e.conftest import settings_for
from tests.e2e.notify_support import (
    Clinic,
    outbox,
    set_clock,
    settle,
    wait_outbox,
    warsaw,
)

PESEL = "44051401458"


def utc(y: int, m: int, d: int, hh: int, mm: int = 0, ss: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, ss, tzinfo=UTC)


async def kinds(client: Any, pesel: str = PESEL) -> list[str]:
    return [m["kind"] for m in await outbox(client, pesel=pesel)]


async def test_seven_days_and_one_day_before_at_the_visit_time(client: Any) -> None:
    await set_clock(client, warsaw(2027, 1, 4, 9))
    clinic = await Clinic.open(client)
    await clinic.slot("s1", warsaw(2027, 1, 13, 8))  # Wednesday 08:00
    await clinic.book("a1", "s1", PESEL, email=None)
    booked = await wait_outbox(client, 1, pesel=PESEL)
    ref = booked[0]["ref"]

    await set_clock(client, warsaw(2027, 1, 6, 7, 59))
    await settle(client)
    assert await kinds(client) == ["booked"]
    await set_clock(client, warsaw(2027, 1, 6, 8, 0) + timedelta(seconds=5))
    msgs = await wait_outbox(client, 2, pesel=PESEL)
    assert [m["kind"] for m in msgs] == ["booked", "reminder-7d"]
    assert "13.01.2027 08:00" in msgs[1]["text"] and f"ANULUJ {ref}" in msgs[1]["text"]

    await set_clock(client, warsaw(2027, 1, 12, 7, 59))
    await settle(client)
    assert await kinds(client) == ["booked", "reminder-7d"]
    await set_clock(client, warsaw(2027, 1, 12, 8, 0) + timedelta(seconds=5))
    msgs = await wait_outbox(client, 3, pesel=PESEL)
    assert [m["kind"] for m in msgs] == ["booked", "reminder-7d", "reminder-1d"]
    assert f"ANULUJ {ref}" in msgs[2]["text"]

    # Nothing more, however far the clock goes.
    await set_clock(client, warsaw(2027, 1, 20, 8))
    await settle(client)
    assert len(await outbox(client, pesel=PESEL)) == 3


async def test_across_dst_changes(client: Any) -> None:
    await set_clock(client, warsaw(2027, 3, 15, 9))
    clinic = await Clinic.open(client)
    # Spring: Monday 29 March 2027 08:00 CEST (06:00Z); the clocks moved on the 28th.
    # 7 days before is Monday 22 March 08:00 CET = 07:00Z: 167 hours, not 168.
    await clinic.slot("s1", warsaw(2027, 3, 29, 8))
    await clinic.book("a1", "s1", PESEL, email=None)
    await wait_outbox(client, 1, pesel=PESEL)
    await set_clock(client, utc(2027, 3, 22, 6, 0, 30))  # 168 h before: too early
    await settle(client)
    assert await kinds(client) == ["booked"]
    await set_clock(client, utc(2027, 3, 22, 7, 0, 5))
    await wait_outbox(client, 2, pesel=PESEL)
    assert await kinds(client) == ["booked", "reminder-7d"]

    # Autumn: Sunday 31 October 2027 08:00 CET (07:00Z), the day the clocks go back.
    # 1 day before is Saturday 30 October 08:00 CEST = 06:00Z: 25 hours before.
    other = "02270812343"
    await set_clock(client, warsaw(2027, 10, 20, 9))
    clinic = await Clinic.open(client)  # a fresh token: tokens follow the app clock
    await clinic.slot("s2", warsaw(2027, 10, 31, 8))
    await clinic.book("a2", "s2", other, email=None)
    await wait_outbox(client, 1, pesel=other)
    await set_clock(client, utc(2027, 10, 30, 5, 59, 30))
    await wait_outbox(client, 2, pesel=other)  # the 7-day one went when the clock jumped
    assert await kinds(client, other) == ["booked", "reminder-7d"]
    await set_clock(client, utc(2027, 10, 30, 6, 0, 5))
    await wait_outbox(client, 3, pesel=other)
    assert await kinds(client, other) == ["booked", "reminder-7d", "reminder-1d"]


async def test_no_reminder_after_cancellation_or_move(client: Any) -> None:
    services = client.server.app[SERVICES]
    await set_clock(client, warsaw(2027, 1, 4, 9))
    clinic = await Clinic.open(client)
    await clinic.slot("s1", warsaw(2027, 1, 13, 8))
    await clinic.slot("s2", warsaw(2027, 1, 20, 8))
    await clinic.slot("s3", warsaw(2027, 1, 14, 8))
    cancelled, moved = "02270812343", PESEL
    await clinic.book("a1", "s1", cancelled, email=None)
    await clinic.book("a2", "s3", moved, email=None)
    await wait_outbox(client, 1, pesel=cancelled)
    await wait_outbox(client, 1, pesel=moved)

    await clinic.cancel("a1", "s1", cancelled, email=None)
    await clinic.book("a2", "s2", moved, email=None)  # 14 Jan -> 20 Jan
    await wait_outbox(client, 2, pesel=cancelled)
    await wait_outbox(client, 2, pesel=moved)
    rems = await services.store.find(c.REMINDERS, {"tenant": clinic.id, "appointment_id": "a1"})
    assert {r["status"] for r in rems} == {"cancelled"}

    # Past both due times of the cancelled visit and of the moved one's old date,
    # and the new date's 7-day one (13 Jan 08:00).
    await set_clock(client, warsaw(2027, 1, 13, 8, 1))
    await wait_outbox(client, 3, pesel=moved)
    await settle(client)
    assert await kinds(client, cancelled) == ["booked", "cancelled"]
    assert await kinds(client, moved) == ["booked", "changed", "reminder-7d"]
    msgs = await outbox(client, pesel=moved)
    assert "20.01.2027 08:00" in msgs[2]["text"]

    await set_clock(client, warsaw(2027, 1, 19, 8, 1))
    await wait_outbox(client, 4, pesel=moved)
    assert await kinds(client, moved) == ["booked", "changed", "reminder-7d", "reminder-1d"]
    assert "20.01.2027 08:00" in (await outbox(client, pesel=moved))[3]["text"]


async def test_a_reminder_due_after_a_cancellation_is_skipped_at_send_time(client: Any) -> None:
    """The visit is checked when the reminder goes, not only when it was planned."""
    services = client.server.app[SERVICES]
    await set_clock(client, warsaw(2027, 1, 4, 9))
    clinic = await Clinic.open(client)
    await clinic.slot("s1", warsaw(2027, 1, 13, 8))
    await clinic.book("a1", "s1", PESEL, email=None)
    await wait_outbox(client, 1, pesel=PESEL)
    # The visit is cancelled behind the notifier's back (its reminders still pending).
    key = f"{clinic.id}/Appointment/a1"
    await services.store.update_one(
        c.RESOURCES, {"_id": key}, {"$set": {"central.status": "cancelled"}}
    )
    await set_clock(client, warsaw(2027, 1, 6, 8, 1))
    for _ in range(100):
        rem = await services.store.get(c.REMINDERS, f"{clinic.id}/a1/reminder-7d")
        if rem and rem["status"] == "skipped":
            break
        await settle(client, 0.05)
    assert rem is not None and rem["status"] == "skipped"
    assert await kinds(client) == ["booked"]


async def test_reminders_survive_a_restart(aiohttp_client: Callable[..., Any]) -> None:
    settings = settings_for("embedded")
    store = MemoryStore()
    first = await aiohttp_client(
        create_app(settings, services=bootstrap.build_services(settings, store=store))
    )
    await set_clock(first, warsaw(2027, 1, 4, 9))
    clinic = await Clinic.open(first)
    await clinic.slot("s1", warsaw(2027, 1, 13, 8))
    await clinic.book("a1", "s1", PESEL, email=None)
    await wait_outbox(first, 1, pesel=PESEL)
    await first.close()  # the gateway stops; the store (the database) stays

    second = await aiohttp_client(
        create_app(settings, services=bootstrap.build_services(settings, store=store))
    )
    await set_clock(second, warsaw(2027, 1, 6, 8, 1))
    msgs = await wait_outbox(second, 2, pesel=PESEL)
    assert [m["kind"] for m in msgs] == ["booked", "reminder-7d"]
