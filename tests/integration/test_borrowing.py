"""Borrowed refs passed on through tasks and actors, and refs inside dropped returns."""

from __future__ import annotations

import asyncio
import sys

import cloudpickle
import numpy as np
import pytest
from helpers import wait_until

import cellfleet
from cellfleet import _context
from cellfleet import _messages as m

pytestmark = pytest.mark.integration
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def store_used() -> int:
    core = _context.core

    async def ask() -> dict:
        return await core.raylet.request(m.GetNodeStats())

    return core.run(ask(), timeout=10)["store"]["used"]


@cellfleet.remote(num_cpus=0)
class Holder:
    def __init__(self, box: list) -> None:
        self.box = box

    def read(self) -> float:
        return float(cellfleet.get(self.box[0]).sum())


@cellfleet.remote
def hand_to_a_new_actor(box: list):
    return Holder.remote(box)


def test_a_ref_handed_on_to_an_actor_outlives_the_task_that_handed_it(cluster) -> None:
    """The actor registers its borrow with the owner before the task's own borrow ends.

    The actor's registration travels on a new connection to the driver; the task's release
    on an existing one. The task's result waits for the owner's acknowledgement of the
    actor's borrow, so the release cannot overtake it and free the object.
    """
    for _ in range(20):
        x = cellfleet.put(np.ones(50_000))
        holder = cellfleet.get(hand_to_a_new_actor.remote([x]), timeout=60)
        del x
        assert cellfleet.get(holder.read.remote(), timeout=60) == 50_000.0
        cellfleet.kill(holder)


@cellfleet.remote
def make_and_return_inside_a_list() -> list:
    return [cellfleet.put(np.ones(200_000))]  # 1.6 MB, in the store, owned by this worker


def test_refs_inside_a_return_nobody_kept_are_released(cluster) -> None:
    wait_until(lambda: store_used() == 0, message="an empty store before the test")
    make_and_return_inside_a_list.remote()  # its ref is gone before its result arrives
    kept = make_and_return_inside_a_list.remote()
    inner = cellfleet.get(kept, timeout=60)[0]
    assert cellfleet.get(inner, timeout=60).sum() == 200_000.0
    del inner, kept
    wait_until(lambda: store_used() == 0, timeout=20,
               message="the objects inside the returns to be freed")


def test_after_borrows_sends_at_once_when_nothing_is_in_flight(cluster) -> None:
    core = _context.core
    sent: list[str] = []

    async def check() -> None:
        later = asyncio.Event()
        core.after_borrows(lambda: sent.append("now"))
        blocker = asyncio.get_running_loop().create_future()
        core._borrows_in_flight.add(blocker)
        core.after_borrows(lambda: (sent.append("later"), later.set()))
        await asyncio.sleep(0)  # one loop turn: nothing may be sent yet
        assert sent == ["now"], "sent before the owner acknowledged the borrow"
        blocker.set_result(None)
        core._borrow_acked(blocker)
        await asyncio.wait_for(later.wait(), 5)

    core.run(check(), timeout=10)
    assert sent == ["now", "later"]

