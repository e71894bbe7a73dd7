"""The one process-wide context: the core worker that ``init()`` (or a worker process) made.

``core`` is None until ``init`` runs in a driver, and always set in a worker process.
``copy_progress``, when a front end (the kernel) sets it, is called as ``(done, total)`` bytes
while this process copies a large object into the object store, and as ``(done, total, label)``
while a large object is pulled from another node for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core.core_worker import CoreWorker

core: CoreWorker | None = None
copy_progress: Callable[..., None] | None = None
