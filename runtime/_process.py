"""Starting runtime processes so that none outlives its parent.

A child gets the read end of a pipe whose write end only the parent holds. When the parent
exits for any reason, SIGKILL included, the kernel closes the write end and the child sees
end-of-file on the read end: ``watch_parent`` turns that into a shutdown of the child's loop.

Both ends are close-on-exec, and a process forked from the parent (a ``multiprocessing``
helper, a daemon) closes them at once: otherwise a helper outliving a killed parent would hold
the write end and keep the children alive until it exits.
"""

from __future__ import annotations

import os
import subprocess
import sys
import weakref
from collections.abc import Callable
from pathlib import Path

__all__ = ["LifelinePipe", "spawn", "watch_parent"]


_open_pipes: weakref.WeakSet[LifelinePipe] = weakref.WeakSet()
_fork_hook_registered = False


def _close_in_forked_child() -> None:
    for pipe in list(_open_pipes):
        pipe.close()


class LifelinePipe:
    """The parent's side of the pipes its children watch (only ``spawn`` passes them on)."""

    def __init__(self) -> None:
        global _fork_hook_registered
        if not _fork_hook_registered:
            os.register_at_fork(after_in_child=_close_in_forked_child)
            _fork_hook_registered = True
        self.read_fd, self.write_fd = os.pipe()  # non-inheritable, as every new fd
        _open_pipes.add(self)

    def close(self) -> None:
        """Close both ends; idempotent."""
        _open_pipes.discard(self)
        fds, self.read_fd, self.write_fd = (self.read_fd, self.write_fd), -1, -1
        for fd in fds:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass


def spawn(
    module: str,
    args: list[str],
    *,
    lifeline: LifelinePipe | None,
    log_path: Path | None,
    pass_fds: tuple[int, ...] = (),
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """Start ``python -m module args``; its output goes to ``log_path``."""
    fds = tuple(pass_fds)
    argv = [sys.executable, "-m", module, *args]
    if lifeline is not None:
        fds += (lifeline.read_fd,)
        argv += ["--lifeline-fd", str(lifeline.read_fd)]
    out = open(log_path, "ab", buffering=0) if log_path is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=fds,
            env=env,
            start_new_session=True,
        )
    finally:
        if log_path is not None:
            out.close()


def watch_parent(fd: int, on_parent_exit: Callable[[], None]) -> None:
    """Call ``on_parent_exit`` in the running loop when the lifeline pipe closes."""
    import asyncio

    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            data = os.read(fd, 1)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            on_parent_exit()

    loop.add_reader(fd, readable)
