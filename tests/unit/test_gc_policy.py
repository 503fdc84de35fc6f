"""The garbage-collector policy with the embedded store (gateway/gc_policy.py)."""

from __future__ import annotations

import asyncio
import gc

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
    finally:
        task.cancel()
        gc.unfreeze()
    assert gc.get_freeze_count() == 0
    # thawing every time: nothing stays frozen across a round
    task = asyncio.create_task(gc_policy.freeze_survivors(0.01, 0))
    await asyncio.sleep(0.05)
    task.cancel()
    gc.unfreeze()
