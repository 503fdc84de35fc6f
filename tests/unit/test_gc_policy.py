"""The garbage-collector policy with the embedded store (gateway/gc_policy.py)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from gateway import gc_policy
from gateway.settings import Settings


def test_only_with_the_embedded_store() -> None:
    assert gc_policy.wanted(Settings())
    assert not gc_policy.wanted(Settings(gc_freeze_seconds=0))
    assert not gc_policy.wanted(Settings(mongodb_url="mongodb://localhost:27017"))


async def test_survivors_are_frozen_then_thawed() -> None:
    gc.unfreeze()
    task = asyncio.create_task(gc_policy.freeze_survivors(0.01, 3600))
    try:
        for _ in range(200):
            if gc.get_freeze_count():
                break
            await asyncio.sleep(0.01)
        assert gc.get_freeze_count() > 0
        # the timer is the only collector while the policy runs
        assert not gc.isenabled()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        gc.unfreeze()
    assert gc.get_freeze_count() == 0
    assert gc.isenabled()
    # thawing every time: nothing stays frozen across a round
    task = asyncio.create_task(gc_policy.freeze_survivors(0.01, 0))
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    gc.unfreeze()


async def test_cyclic_garbage_is_collected_by_the_timer() -> None:
    """Automatic collections are off while the policy runs: the timer collects cycles."""
    import weakref

    class Node:
        other: object = None

    task = asyncio.create_task(gc_policy.freeze_survivors(0.01, 3600))
    try:
        await asyncio.sleep(0.02)
        a, b = Node(), Node()
        a.other, b.other = b, a
        ref = weakref.ref(a)
        del a, b
        assert ref() is not None  # a cycle: reference counting alone does not free it
        for _ in range(200):
            if ref() is None:
                break
            await asyncio.sleep(0.01)
        assert ref() is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        gc.unfreeze()


async def test_an_idle_tick_waits_for_new_objects_a_second_at_most(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ticks are frequent (young objects are still in the caches when visited): one
    with fewer than MIN_YOUNG new objects skips, unless MAX_WAIT passed since the last.
    The count of new objects is the test's (the suite's other work allocates too)."""
    calls: list[int] = []
    young = [0]

    def collect(generation: int = 2) -> int:
        calls.append(generation)
        young[0] = 0
        return 0

    monkeypatch.setattr(gc_policy.gc, "collect", collect)
    monkeypatch.setattr(gc_policy.gc, "get_count", lambda: (young[0], 0, 0))
    monkeypatch.setattr(gc_policy, "MAX_WAIT", 0.3)
    task = asyncio.create_task(gc_policy.freeze_survivors(0.01, 3600))
    try:
        await asyncio.sleep(0.05)
        assert calls == [2]  # the first tick: the full collection, whatever is new
        # idle: ~10 ticks within MAX_WAIT, no collection; then one after MAX_WAIT
        calls.clear()
        young[0] = gc_policy.MIN_YOUNG - 1
        await asyncio.sleep(0.15)
        assert calls == []
        await asyncio.sleep(0.35)
        assert calls and set(calls) == {1}
        # busy: MIN_YOUNG new tracked objects are collected at the next tick
        await asyncio.sleep(0.05)
        calls.clear()
        young[0] = gc_policy.MIN_YOUNG
        await asyncio.sleep(0.05)
        assert calls == [1]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        gc.unfreeze()
