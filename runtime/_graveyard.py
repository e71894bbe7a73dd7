"""Bounds on tables: how many dead entries a table remembers (dead nodes, actors, jobs), and
the bounds' values from the environment.

Tables keep dead entries so that late questions get a precise answer ("the actor died: its
worker was killed"), but not forever: beyond ``limit`` the oldest deaths are forgotten and
counted, as Ray keeps a bounded number of destroyed actors and dead nodes. No I/O here.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Hashable

__all__ = ["Graveyard", "limit_from_env"]


def limit_from_env(name: str, default: int) -> int:
    """A non-negative bound from the environment variable ``name``, else ``default``."""
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        limit = int(value)
    except ValueError:
        limit = -1
    if limit < 0:
        raise ValueError(f"{name}={value!r} is not a count: unset it (default {default}) or "
                         "give a whole number >= 0")
    return limit


class Graveyard:
    """Keys of dead entries, oldest death first; says which to forget beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.forgotten = 0
        self._dead: OrderedDict[Hashable, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._dead)

    def bury(self, key: Hashable) -> list:
        """``key`` died; returns the keys to forget now, oldest first."""
        self._dead[key] = None
        out = []
        while len(self._dead) > self.limit:
            out.append(self._dead.popitem(last=False)[0])
        self.forgotten += len(out)
        return out

    def revive(self, key: Hashable) -> None:
        """``key`` lives again (a node that registered anew)."""
        self._dead.pop(key, None)
