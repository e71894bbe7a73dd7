"""The one process-wide context: the core worker that ``init()`` (or a worker process) made.

``core`` is None until ``init`` runs in a driver, and always set in a worker process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core.core_worker import CoreWorker

core: CoreWorker | None = None
