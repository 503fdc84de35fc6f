"""The garbage-collector policy of a process that keeps the embedded store.

The embedded store holds every document as Python dicts and lists: a sandbox
with tens of thousands of slots is 10^5-10^6 container objects, plus their
history. CPython's full collections walk every tracked object, and with the
default thresholds they came every few seconds under load and stopped the
event loop for 0.2-0.7 s (``bench/booking.py``: p99 above 250 ms from that
alone). Documents are trees: reference counting frees them, a collection
never finds garbage among them.

So every ``GC_FREEZE_SECONDS`` (default 0.05 s; 0 turns it off) the process
collects what was allocated since the last time, then ``gc.freeze()`` s the
survivors so later collections skip them. Every ``GC_THAW_SECONDS`` (default 15
min) the frozen objects are thawed and collected once, so reference cycles that
formed among them are reclaimed (one full pause, rarely). With MongoDB the
process keeps no documents: no policy.

Often and small: a collection's cost is a visit of every object allocated since
the last one, and objects a few milliseconds old are still in the CPU's caches.
Under the waiting room's nightly unlock (``python -m bench.waiting_room``, tens of
thousands of new objects a second) a visit cost 0.7-1.0 us an object once a
second and about 0.5 us every 0.05 s, and each pause was 50-80 ms against a few.
An idle tick with fewer than ``MIN_YOUNG`` new objects collects nothing, unless a
second has passed since the last collection.

While the policy runs, CPython's automatic collections (triggered by allocation
counts) are off: the timer's collection is the only one. Between two freezes
the automatic ones kept walking everything allocated since the last freeze
(its third generation is "unfrozen objects", and under load it came every few
hundred milliseconds): 10-12 % of the event loop's CPU while ingesting Slots
(``python -m bench.ingest``, measured with ``gc.callbacks``), against 6 % for
the timer's collections alone. Garbage without reference cycles is freed at
once by reference counting either way; cyclic garbage waits a second at most
for the timer.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from gateway.settings import Settings


def wanted(settings: Settings) -> bool:
    return settings.gc_freeze_seconds > 0 and not settings.mongodb_url


# An idle tick collects only with this many new tracked objects (or after MAX_WAIT).
MIN_YOUNG = 1000
MAX_WAIT = 1.0


async def freeze_survivors(every: float, thaw_every: float) -> None:
    thawed = collected = time.monotonic()
    gc.disable()  # collections come from this timer, not from allocation counts
    full = True  # the first time: what was there before the policy ran
    try:
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            if now - thawed >= thaw_every:
                gc.unfreeze()  # into the oldest generation: a full collection looks at it
                thawed = now
                full = True
            elif not full and gc.get_count()[0] < MIN_YOUNG and now - collected < MAX_WAIT:
                continue  # next to nothing new: wait for more (a second at most)
            collected = now
            if full:
                gc.collect()
                full = False
            else:
                # Everything older was frozen: what is not is in the youngest generation
                # (no automatic collection moves it on). Collecting up to the middle one
                # looks at the same objects as a full collection, without what only a
                # full one adds: untracking dicts of scalars (a look at every value of
                # every new dict, which is frozen next anyway) and emptying the free lists.
                gc.collect(1)
            gc.freeze()
    finally:
        gc.enable()


def cleanup_ctx(settings: Settings) -> Callable[[web.Application], AsyncIterator[None]]:
    """For ``app.cleanup_ctx``: the policy runs while the app does."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(
            freeze_survivors(settings.gc_freeze_seconds, settings.gc_thaw_seconds),
            name="gc-freeze",
        )
        yield
        task.cancel()
        gc.unfreeze()

    return ctx
