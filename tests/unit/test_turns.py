"""Turns on the event loop (gateway/turns.py) and the unlock's commands taking them
(``waiting_assign.handle_assign`` on the embedded store): one turn per pass of the loop,
first come first served, and everything else runs between two turns."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from adapters.clock import SandboxClock
from adapters.memory_store import MemoryStore
from gateway import turns as turns_module
from gateway import waiting_assign
from gateway.events import command
from gateway.schema import INDEXES
from gateway.settings import Settings
from gateway.turns import Turns


class Passes:
    """Counts the passes of the event loop: a task that yields at every one."""

    def __init__(self) -> None:
        self.n = 0
        self.task = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            self.n += 1
            await asyncio.sleep(0)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def one_per_pass(passes_at: list[int]) -> bool:
    """Whether each of these came on a later pass than the one before."""
    return all(later > earlier for earlier, later in itertools.pairwise(passes_at))


async def test_one_turn_per_pass_first_come_first_served() -> None:
    turns = Turns(asyncio.get_running_loop())
    passes = Passes()
    taken: list[tuple[str, int]] = []

    async def worker(name: str, rounds: int) -> None:
        for n in range(rounds):
            await turns.take()
            taken.append((name, passes.n))
            if n == 0:
                await asyncio.sleep(0)  # a first turn long enough for all to come
            turns.give_up()

    await asyncio.gather(worker("a", 3), worker("b", 3), worker("c", 3))
    await passes.stop()
    # in line as they came, then round and round
    assert [name for name, _ in taken] == ["a", "b", "c"] * 3
    # never two turns in one pass: something else (the counter) ran between any two
    at = [n for _, n in taken]
    assert one_per_pass(at)


async def test_a_lone_holder_lets_the_loop_run_between_its_turns() -> None:
    turns = Turns(asyncio.get_running_loop())
    passes = Passes()
    at: list[int] = []
    for _ in range(5):
        await turns.take()
        at.append(passes.n)
        turns.give_up()
    await passes.stop()
    assert one_per_pass(at)


async def test_a_turn_given_to_a_cancelled_waiter_goes_on() -> None:
    turns = Turns(asyncio.get_running_loop())
    await turns.take()  # ours
    got: list[str] = []

    async def waiter(name: str) -> None:
        await turns.take()
        got.append(name)
        turns.give_up()

    b = asyncio.create_task(waiter("b"))
    c = asyncio.create_task(waiter("c"))
    await asyncio.sleep(0)  # both in line
    turns.give_up()  # b has it now, but has not run yet...
    b.cancel()  # ... and never will
    await asyncio.wait_for(c, 1)
    assert got == ["c"]
    assert b.cancelled()
    # and it is free again afterwards
    await asyncio.wait_for(turns.take(), 1)
    turns.give_up()


async def test_a_waiter_cancelled_in_line_leaves_the_line() -> None:
    turns = Turns(asyncio.get_running_loop())
    await turns.take()
    b = asyncio.create_task(turns.take())
    await asyncio.sleep(0)
    b.cancel()
    await asyncio.gather(b, return_exceptions=True)
    turns.give_up()
    await asyncio.wait_for(turns.take(), 1)  # not stuck behind b
    turns.give_up()


async def test_one_turns_per_event_loop() -> None:
    mine = turns_module.turns()
    assert turns_module.turns() is mine
    other = await asyncio.to_thread(lambda: asyncio.run(_turns_of_a_new_loop()))
    assert other is not mine


async def _turns_of_a_new_loop() -> Turns:
    return turns_module.turns()


@pytest.fixture
async def store() -> MemoryStore:
    s = MemoryStore()
    await s.start(INDEXES)
    return s


async def test_the_unlocks_commands_take_turns_on_the_embedded_store(
    store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each ``waiting-room.assign`` command books for a turn, then the next one does, and
    between two turns everything else runs: a pass of the event loop is one turn, not
    a slice of every command (what an API request would wait for)."""
    assert not store.suspends
    monkeypatch.setattr(turns_module, "TURN_SECONDS", 0.0)  # a turn per pair
    passes = Passes()
    booked: list[tuple[str, int]] = []
    plain = waiting_assign._assign_planned

    async def watched(*args: Any) -> int:
        booked.append((args[3], passes.n))  # the tenant, the pass
        return await plain(*args)

    monkeypatch.setattr(waiting_assign, "_assign_planned", watched)
    clock = SandboxClock()
    settings = Settings()

    def assign(tenant: str) -> Any:
        msg = command(
            "waiting-room.assign",
            {"pairs": [[f"gone-{i}", f"nobody-{i}"] for i in range(4)]},
            tenant=tenant,
            correlation_id="t",
            now=clock.now(),
            msg_id=f"m-{tenant}",
        )
        return waiting_assign.handle_assign(store, clock, settings, msg)

    replies = await asyncio.gather(assign("p1"), assign("p2"), assign("p3"))
    await passes.stop()
    assert replies == [{"booked": 0}] * 3  # the slots are gone: nothing to book
    # In line as they came to it: p1 booked, gave up its turn with nobody in line yet,
    # and came back to the line before p2 and p3 came; then round and round.
    assert [tenant for tenant, _ in booked] == [
        *("p1", "p1", "p2", "p3"),
        *("p1", "p2", "p3"),
        *("p1", "p2", "p3"),
        *("p2", "p3"),
    ]
    at = [n for _, n in booked]
    assert one_per_pass(at)


async def test_a_store_that_suspends_takes_no_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    """MongoDB's calls give the loop away anyway: no turns (they would hold one command's
    turn across its round trips and keep the others waiting)."""
    store = MemoryStore()
    await store.start(INDEXES)
    monkeypatch.setattr(store, "suspends", True)

    def no_turns() -> Turns:
        raise AssertionError("no turns with a store that suspends")

    monkeypatch.setattr(turns_module, "turns", no_turns)
    clock = SandboxClock()
    msg = command(
        "waiting-room.assign",
        {"pairs": [["gone", "nobody"]]},
        tenant="p1",
        correlation_id="t",
        now=clock.now(),
        msg_id="m1",
    )
    assert await waiting_assign.handle_assign(store, clock, Settings(), msg) == {"booked": 0}
