"""The garbage collector's settings in cellfleet's processes.

The runtime keeps tens of thousands of small containers a second alive for a few
milliseconds each (task specs, events, messages in flight). With CPython's default
thresholds a young collection runs every 700 allocations, finds them still alive, promotes
them, and full collections soon walk every object the process holds: at 8,000 tasks a second
that was a quarter of a driver's time. A young generation of ``GEN0_THRESHOLD`` lets them
die young instead. A process that has not chosen its own thresholds gets this one;
``CELLFLEET_GC_THRESHOLD=0`` leaves the interpreter's settings as they are.

The runtime's own processes (GCS, raylet, the worker template) also freeze what they
imported, so full collections skip it and forked workers share those pages unwritten.
"""

from __future__ import annotations

import gc

from ._graveyard import limit_from_env

__all__ = ["GEN0_THRESHOLD", "tune_gc"]

GEN0_THRESHOLD = 50_000
GC_THRESHOLD_ENV = "CELLFLEET_GC_THRESHOLD"
_DEFAULT = (700, 10, 10)


def tune_gc(*, freeze: bool = False) -> None:
    """Raise the young generation's threshold unless this process set its own; with
    ``freeze``, move every object alive now out of the collector's sight."""
    gen0 = limit_from_env(GC_THRESHOLD_ENV, GEN0_THRESHOLD)
    if gen0 and gc.get_threshold() == _DEFAULT:
        gc.set_threshold(gen0, *_DEFAULT[1:])
    if freeze:
        gc.freeze()
