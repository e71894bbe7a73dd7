"""How cellfleet's processes ask the interpreter and the kernel to run them.

The garbage collector. The runtime keeps tens of thousands of small containers a second
alive for a few milliseconds each (task specs, events, messages in flight). With CPython's
default thresholds a young collection runs every 700 allocations, finds them still alive,
promotes them, and full collections soon walk every object the process holds: at 8,000 tasks
a second that was a quarter of a driver's time. A young generation of ``GEN0_THRESHOLD`` lets
them die young instead. A process that has not chosen its own thresholds gets this one;
``CELLFLEET_GC_THRESHOLD=0`` leaves the interpreter's settings as they are. The runtime's own
processes also freeze what they imported, so full collections skip it and forked workers
share those pages unwritten.

The CPU scheduler. The runtime's own processes (GCS, raylets and the workers they fork) run
as ``SCHED_BATCH``: a message that wakes one does not preempt the process that sent it. A
driver writing a batch of tasks to a worker on its own core was otherwise switched out in the
middle of the write, holding its interpreter lock, for milliseconds (one write in ten took
over 2 ms, against 50 µs for the rest). Drivers and notebook kernels keep the default policy.
``CELLFLEET_SCHED_BATCH=0`` leaves the policy as it is.
"""

from __future__ import annotations

import gc
import os

from ._graveyard import limit_from_env

__all__ = ["GC_THRESHOLD_ENV", "GEN0_THRESHOLD", "SCHED_BATCH_ENV", "tune_process"]

GEN0_THRESHOLD = 50_000
GC_THRESHOLD_ENV = "CELLFLEET_GC_THRESHOLD"
SCHED_BATCH_ENV = "CELLFLEET_SCHED_BATCH"
_DEFAULT = (700, 10, 10)


def tune_process(*, runtime: bool = False) -> None:
    """Raise the young generation's threshold unless this process set its own; for one of
    the ``runtime``'s own processes, also freeze what is alive now and run as SCHED_BATCH
    (threads and children started from here on inherit it)."""
    gen0 = limit_from_env(GC_THRESHOLD_ENV, GEN0_THRESHOLD)
    if gen0 and gc.get_threshold() == _DEFAULT:
        gc.set_threshold(gen0, *_DEFAULT[1:])
    if not runtime:
        return
    gc.freeze()
    if os.environ.get(SCHED_BATCH_ENV, "1") != "0" and hasattr(os, "SCHED_BATCH"):
        try:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        except OSError:  # a sandbox that forbids it: the default policy works, if slower
            pass
