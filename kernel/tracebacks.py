"""Errors from the cluster shown as the user's code, without the runtime's plumbing.

* ``user_traceback(text)``: a worker's formatted traceback with the frames of cellfleet,
  cloudpickle and pickle taken out. A chained exception that happened entirely inside them
  (cloudpickle failing under "Could not serialize the return value of f()") goes too: the
  exception after it says what went wrong.
* ``RemoteCellInterrupted``: what an interrupted ``%%remote`` cell raises, shown as the
  cell's own lines and the interruption (not IPython's ``run_cell_magic(...)`` call).
"""

from __future__ import annotations

import copyreg
import os
import pickle
import re
from dataclasses import dataclass, field

import cloudpickle

import cellfleet

__all__ = ["RemoteCellInterrupted", "user_traceback"]

_HEADER = "Traceback (most recent call last):"
_SEPARATORS = ("The above exception was the direct cause of the following exception:",
               "During handling of the above exception, another exception occurred:")
_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line \d+')
# Installed elsewhere (another node's site-packages) the paths differ from this process's.
_INSTALLED = re.compile(r"site-packages[/\\](cellfleet|cloudpickle)[/\\]")
MAX_CELL_LINES = 12


def _directory(path: str) -> str:
    return os.path.dirname(os.path.abspath(path)) + os.sep


_INTERNAL_DIRS = (_directory(cellfleet.__file__), _directory(__file__),
                  _directory(cloudpickle.__file__))
_INTERNAL_FILES = (os.path.abspath(pickle.__file__), os.path.abspath(copyreg.__file__))


def _internal(filename: str) -> bool:
    return (filename.startswith(_INTERNAL_DIRS) or filename in _INTERNAL_FILES
            or _INSTALLED.search(filename) is not None)


@dataclass
class _Section:
    """One exception of a chain: its frames (each a list of lines) and its message."""

    frames: list[list[str]] = field(default_factory=list)
    message: list[str] = field(default_factory=list)
    separator: str | None = None  # the sentence that leads to the next exception

    def user_frames(self) -> list[list[str]]:
        kept = []
        for frame in self.frames:
            match = _FRAME.match(frame[0])
            if match is None or not _internal(match.group("file")):
                kept.append(frame)
        return kept


def _sections(text: str) -> list[_Section]:
    sections = [_Section()]
    after_separator = False
    for line in text.rstrip("\n").splitlines():
        current = sections[-1]
        if line in _SEPARATORS:
            while current.message and not current.message[-1].strip():
                current.message.pop()
            current.separator = line
            sections.append(_Section())
            after_separator = True
        elif line == _HEADER:
            after_separator = False
        elif after_separator and not line.strip():
            continue
        elif line.startswith('  File "') and not current.message:
            current.frames.append([line])
        elif current.frames and not current.message and line.startswith("    "):
            current.frames[-1].append(line)
        elif current.frames and not current.message and line.startswith("  [Previous line"):
            current.frames[-1].append(line)
        else:
            current.message.append(line)
    return sections


def user_traceback(text: str) -> str:
    """``text`` (a formatted traceback) without cellfleet's, cloudpickle's and pickle's frames."""
    sections = _sections(text)
    kept: list[tuple[_Section, list[list[str]]]] = []
    for index, section in enumerate(sections):
        frames = section.user_frames()
        last = index == len(sections) - 1
        if section.frames and not frames and not last:
            continue  # raised inside the runtime: the next exception says what failed
        kept.append((section, frames))
    lines: list[str] = []
    for index, (section, frames) in enumerate(kept):
        if frames:
            lines.append(_HEADER)
            lines += [line for frame in frames for line in frame]
        lines += section.message
        if index < len(kept) - 1:
            lines += ["", section.separator or _SEPARATORS[0], ""]
    return "\n".join(lines) + "\n"


class RemoteCellInterrupted(KeyboardInterrupt):
    """A ``%%remote`` cell (or ``%remote`` line) interrupted while its task ran."""

    def __init__(self, source: str, count: int, task: str) -> None:
        super().__init__(task)
        self.source = source
        self.count = count
        self.task = task

    def _render_traceback_(self) -> list[str]:
        lines = self.source.rstrip("\n").splitlines()
        shown = [f"{number:>7} {line.rstrip()}" for number, line in
                 enumerate(lines[:MAX_CELL_LINES], start=1)]
        if len(lines) > MAX_CELL_LINES:
            shown.append(f"        ... ({len(lines) - MAX_CELL_LINES} more lines)")
        return [
            f"Cell In[{self.count}], interrupted while it ran on the cluster as the task "
            f"{self.task}:",
            *shown,
            "",
            f"\x1b[0;31mKeyboardInterrupt\x1b[0m: the task {self.task} and the tasks it "
            "started are being cancelled",
        ]


RemoteCellInterrupted.__name__ = RemoteCellInterrupted.__qualname__ = "KeyboardInterrupt"
