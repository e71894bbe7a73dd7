"""Calls of an async actor waiting for one of its ``max_concurrency`` slots: cancelling one
fails it at once (it used to hang its caller: the cancellation hit the wait for the slot, outside
the code that answers every call), and the slots stay counted right afterwards."""

from __future__ import annotations

import asyncio
import os
import sys

import cloudpickle
import pytest
from gates import touch, wait_for_file_async
from helpers import wait_until

import cellfleet as ray
from cellfleet.exceptions import TaskCancelledError

pytestmark = pytest.mark.integration
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@ray.remote(max_concurrency=2)
class TwoSlots:
    async def hold(self, started: str, gate: str) -> str:
        touch(started)
        await wait_for_file_async(gate)
        return "held"

    async def hold_until_queued(self, queued: str, gate: str, calls: int) -> str:
        """Take the second slot, say so once ``calls`` calls are on the loop (the others wait
        for a slot), then hold the slot until the gate opens."""
        while len(asyncio.all_tasks()) < calls:
            await asyncio.sleep(0.002)
        touch(queued)
        await wait_for_file_async(gate)
        return "held"

    async def quick(self) -> str:
        return "quick"


def test_cancelling_a_call_queued_for_a_slot_fails_it_at_once(cluster, tmp_path) -> None:
    actor = TwoSlots.remote()
    started, queued, gate = (str(tmp_path / n) for n in ("started", "queued", "gate"))
    first = actor.hold.remote(started, gate)
    wait_until(lambda: os.path.exists(started), timeout=30, message="the first call to start")
    second = actor.hold_until_queued.remote(queued, gate, 4)
    waiting = [actor.quick.remote(), actor.quick.remote()]  # both wait for a slot
    wait_until(lambda: os.path.exists(queued), timeout=30,
               message="the calls to wait for a slot at the actor")
    for ref in waiting:
        ray.cancel(ref)
    try:
        for ref in waiting:
            with pytest.raises(TaskCancelledError):
                ray.get(ref, timeout=10)
    finally:
        touch(gate)
    assert ray.get([first, second], timeout=30) == ["held", "held"]
    # The cancelled calls took no slot with them: two calls can hold both slots again.
    again = [actor.hold.remote(str(tmp_path / f"again-{i}"), str(tmp_path / "gate"))
             for i in range(2)]
    assert ray.get(again, timeout=30) == ["held", "held"]
    assert ray.get(actor.quick.remote(), timeout=30) == "quick"
