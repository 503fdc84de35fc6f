"""Clock adapters: the wall clock (production) and a settable sandbox clock.

The sandbox clock flows like the wall clock but with an offset that
``POST /sandbox/clock`` sets or advances; everything time-driven (retry tiers
of the embedded bus, reminders, booking windows, proposal time-outs) reads
``now()`` and wakes on ``wait_changed`` so a jump takes effect at once.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta


class SystemClock:
    """Real time, UTC. ``wait_changed`` only ever times out."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def wait_changed(self, timeout: float) -> None:
        await asyncio.sleep(timeout)


class SandboxClock:
    """Wall clock plus an offset that can be set or advanced (never backwards by advance)."""

    def __init__(self, offset: timedelta = timedelta(0)) -> None:
        self._offset = offset
        self._changed = asyncio.Event()

    @property
    def offset(self) -> timedelta:
        return self._offset

    def now(self) -> datetime:
        return datetime.now(UTC) + self._offset

    def set_offset(self, offset: timedelta) -> None:
        """Adopt an offset (from the shared clock document or a sandbox call) and wake waiters."""
        if offset == self._offset:
            return
        self._offset = offset
        self._changed.set()
        self._changed = asyncio.Event()

    def set(self, instant: datetime) -> None:
        if instant.tzinfo is None:
            raise ValueError("the clock needs an instant with a time zone offset")
        self.set_offset(instant - datetime.now(UTC))

    def advance(self, delta: timedelta) -> None:
        if delta < timedelta(0):
            raise ValueError("the clock only advances; use set to go back")
        self.set_offset(self._offset + delta)

    async def wait_changed(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass
