"""Turns on the event loop for handlers that write in long loops to a store whose
calls never suspend (the embedded store: ``Store.suspends``).

Such a handler must yield on its own, and yielding is not enough when many of them run
at once, as the nightly unlock's ``waiting-room.assign`` commands do (one per provider
and chunk: 50 at a time in ``bench/waiting_room.py``). Each yielded after every booking:
one pass of the event loop was a booking of each of the 50 commands, and each event
consumer group's delivery between them (the memory bus's "commands first").

With ``Turns`` one handler runs at a time, for ``TURN_SECONDS``, then gives the turn to
the next in line (first come, first served), which runs on the loop's next pass: a pass
is at most one turn, and everything else (an API request, a timer, the event consumers)
runs between two turns. A command's bookings follow one another while its Slots,
entries and index buckets are still in the CPU's caches. ``python -m bench.waiting_room
--cancellations 0`` (10,000 assignments; 2 vCPUs of an AMD EPYC, 2026-11-26; ten runs of
turns of 20 ms side by side with a yield after every booking): 1,810-2,580 -> 2,381-3,048
assignments/s (medians 2,360 -> 2,728; the pairs' ratios 0.99-1.40, median 1.19), the
CPU for everything the unlock caused 0.81-1.07 -> 0.80-0.86 ms an assignment, the event
loop's lag p99 62-98 -> 70-123 ms. Turns of 10 ms gave no more (1,455-2,130 /s against
1,657-2,450 in four pairs) for a lag p99 of 63-68 ms. On RabbitMQ (with the embedded
store: ``--bus rabbitmq``), where fewer commands run at once, the rate stayed (943 ->
934 /s) and the lag p99 grew to about one turn (14 -> 43 ms).

Without them: a handler that yields every few milliseconds instead of after every
booking (each on its own) made a pass of the loop a few milliseconds of each of the 50,
and the lag p99 0.36 s (2 ms) to 1 s (20 ms). A lock would not do either: a holder that
never suspends is never seen holding it.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque

TURN_SECONDS = 0.02


class Turns:
    """One holder at a time; a turn given up goes to the next in line on the next pass."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._busy = False
        self._line: deque[asyncio.Future[None]] = deque()

    async def take(self) -> None:
        """Wait for a turn (at once when nobody has one and nobody waits)."""
        if not self._busy and not self._line:
            self._busy = True
            return
        fut: asyncio.Future[None] = self._loop.create_future()
        self._line.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.give_up()  # granted, then cancelled before it ran: pass it on
            raise

    def give_up(self) -> None:
        """End the holder's turn. The next in line has it at once (it runs on the loop's
        next pass: its wake-up is scheduled, not run); with nobody in line the turn is
        free from the next pass on, so that the holder, or whoever comes during this
        pass, waits for that pass too."""
        if not self._grant():
            self._loop.call_soon(self._free)

    def _free(self) -> None:
        if not self._grant():
            self._busy = False

    def _grant(self) -> bool:
        """Give the turn to the first in line still waiting (it stays busy)."""
        while self._line:
            fut = self._line.popleft()
            if not fut.done():
                fut.set_result(None)
                return True
        return False


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Turns] = weakref.WeakKeyDictionary()


def turns() -> Turns:
    """The running loop's ``Turns``."""
    loop = asyncio.get_running_loop()
    t = _by_loop.get(loop)
    if t is None:
        t = _by_loop[loop] = Turns(loop)
    return t
