"""Worker stdout/stderr: every line tagged with the task that printed it, sent to the GCS.

The driver receives the lines through the GCS's ``logs`` channel and prints them as
``(name pid=123) text``; the kernel routes them to the cell that submitted the task. Each line
is also written to the worker's log file in the session directory.
"""

from __future__ import annotations

import io
import os
from typing import TextIO

from ..core.core_worker import CoreWorker
from ..core.task_spec import TaskSpec

__all__ = ["TaggedOutput", "capture_output"]


class TaggedOutput(io.TextIOBase):
    """A text stream that turns complete lines into log records."""

    def __init__(self, core: CoreWorker, stream: str, passthrough: TextIO) -> None:
        self._core = core
        self._stream = stream
        self._passthrough = passthrough
        self._partial = ""
        self._pid = os.getpid()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._passthrough.write(text)
        data = self._partial + text
        *lines, self._partial = data.split("\n")
        for line in lines:
            self._emit(line)
        return len(text)

    def flush(self) -> None:
        """End a partial line (at the end of each task) and flush the log file."""
        if self._partial:
            self._emit(self._partial)
            self._partial = ""
        self._passthrough.flush()

    def _emit(self, line: str) -> None:
        task = self._core.current_task
        if task is None:
            record = [0, "", "", "worker", self._pid, self._stream, line]
        else:
            record = [task.job_id, task.tag, task.task_id.hex(), _prefix(task), self._pid,
                      self._stream, line]
        self._core.events.log(record)

    @property
    def encoding(self) -> str:
        return "utf-8"

    def isatty(self) -> bool:
        return False


def _prefix(task: TaskSpec) -> str:
    """What a line is prefixed with: the task's name; an actor's class name, as Ray prints."""
    suffix = "." + (task.method or "__init__")
    if task.actor_id and task.name.endswith(suffix):
        return task.name[:-len(suffix)]
    return task.name


def capture_output(core: CoreWorker) -> tuple[TaggedOutput, TaggedOutput]:
    import sys

    out = TaggedOutput(core, "stdout", sys.stdout)
    err = TaggedOutput(core, "stderr", sys.stderr)
    sys.stdout, sys.stderr = out, err
    return out, err
