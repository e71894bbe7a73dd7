"""Progress bars: ``cellfleet.get`` / ``cellfleet.wait`` on many refs, and large copies.

The kernel wraps ``get`` and ``wait`` of its backend's API module (``cellfleet``, or ``ray`` on
the Ray backend: the attributes of the module the notebook uses; the runtime's own calls are
untouched). A call on the main thread over at
least ``min_refs`` refs first waits ``after`` seconds as usual; if the refs are not ready by
then it shows a bar (an ipywidgets progress bar in a notebook, a text line elsewhere) that
advances as they become ready and goes away when the call returns. Results, errors,
timeouts and interrupts are those of the wrapped call.

A large value copied into the object store (a ``put``, or a big argument passed by value)
reports its progress through the runtime's ``copy_progress`` hook; a copy still running after
``COPY_BAR_AFTER_S`` shows a bar in megabytes until it ends.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from typing import Any

import cellfleet
from cellfleet import _context

__all__ = ["ProgressReporter"]

POLL_S = 0.2
COPY_BAR_AFTER_S = 0.5
MB = 10**6


class _TextBar:
    def __init__(self, total: int, what: str) -> None:
        self.total = total
        self.what = what
        self._last = ""

    def update(self, done: int) -> None:
        width = 30
        filled = int(width * done / max(self.total, 1))
        text = f"\r{self.what}: [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total}"
        if text != self._last:
            sys.stderr.write(text)
            sys.stderr.flush()
            self._last = text

    def close(self) -> None:
        if self._last:
            sys.stderr.write("\r" + " " * (len(self._last) - 1) + "\r")
            sys.stderr.flush()


class _WidgetBar:
    def __init__(self, total: int, what: str) -> None:
        import ipywidgets
        from IPython.display import display

        self.total = total
        self.bar = ipywidgets.IntProgress(value=0, min=0, max=max(total, 1),
                                          description=what, bar_style="info")
        self.label = ipywidgets.Label(value=f"0/{total}")
        self.box = ipywidgets.HBox([self.bar, self.label])
        self.handle = display(self.box, display_id=True)

    def update(self, done: int) -> None:
        if self.bar.value != done:
            self.bar.value = done
            self.label.value = f"{done}/{self.total}"

    def close(self) -> None:
        if self.handle is not None:  # the output goes away (also from the saved notebook)
            self.handle.update({"text/plain": ""}, raw=True)
        self.box.close()
        self.bar.close()
        self.label.close()


def _make_bar(total: int, what: str) -> Any:
    try:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None and getattr(shell, "kernel", None) is not None:
            return _WidgetBar(total, what)
    except Exception:  # noqa: BLE001 - no widgets: text it is
        pass
    return _TextBar(total, what)


class ProgressReporter:
    """Wraps ``cellfleet.get``/``cellfleet.wait`` with a progress bar for long calls."""

    def __init__(self, *, after: float = 1.0, min_refs: int = 2) -> None:
        self.after = after
        self.min_refs = min_refs
        self.bar_factory = _make_bar
        self._get = None
        self._wait = None
        self._module: Any = None
        self._copy_started = 0.0
        self._copy_done = 0
        self._copy_bar: Any = None

    def install(self, module: Any = cellfleet) -> None:
        """Wrap ``module.get`` and ``module.wait`` (``module``: a Ray-style API)."""
        if self._get is not None:
            return
        self._module = module
        self._get, self._wait = module.get, module.wait
        real_get, real_wait = self._get, self._wait

        @functools.wraps(real_get)
        def get(object_refs: Any, **kwargs: Any) -> Any:
            refs = self._eligible(object_refs)
            if refs is not None:
                kwargs["timeout"] = self._wait_with_bar(refs, len(refs),
                                                        kwargs.get("timeout"), "get")
            return real_get(object_refs, **kwargs)

        @functools.wraps(real_wait)
        def wait(object_refs: Any, **kwargs: Any) -> Any:
            refs = self._eligible(object_refs)
            num_returns = kwargs.get("num_returns", 1)
            if refs is not None and isinstance(num_returns, int) and \
                    0 < num_returns <= len(refs):
                kwargs["timeout"] = self._wait_with_bar(refs, num_returns,
                                                        kwargs.get("timeout"), "wait")
            return real_wait(object_refs, **kwargs)

        module.get, module.wait = get, wait
        if module is cellfleet:
            _context.copy_progress = self.copy_progress

    def uninstall(self) -> None:
        if self._get is not None:
            self._module.get, self._module.wait = self._get, self._wait
            if self._module is cellfleet:
                _context.copy_progress = None
            self._get = self._wait = self._module = None

    def copy_progress(self, done: int, total: int, label: str = "") -> None:
        """Called by the runtime while it copies a large object into the object store, or
        pulls one from another node (``label`` says which)."""
        if threading.current_thread() is not threading.main_thread():
            return
        now = time.monotonic()
        if done < self._copy_done:  # a new copy (the last one was interrupted)
            self._end_copy()
        self._copy_done = done
        if self._copy_bar is None and done < total:
            if not self._copy_started:
                self._copy_started = now
            elif now - self._copy_started >= COPY_BAR_AFTER_S:
                what = label or f"copying {total / 1e9:.1f} GB into the object store"
                self._copy_bar = self.bar_factory(total // MB, f"{what} (MB)")
        if self._copy_bar is not None:
            self._copy_bar.update(done // MB)
        if done >= total:
            self._end_copy()

    def _end_copy(self) -> None:
        if self._copy_bar is not None:
            self._copy_bar.close()
        self._copy_bar, self._copy_started, self._copy_done = None, 0.0, 0

    def _eligible(self, object_refs: Any) -> list | None:
        if self.after < 0 or threading.current_thread() is not threading.main_thread():
            return None
        if not isinstance(object_refs, (list, tuple)) or len(object_refs) < self.min_refs:
            return None
        if not all(isinstance(r, self._module.ObjectRef) for r in object_refs):
            return None
        if len(set(object_refs)) != len(object_refs):
            return None
        return list(object_refs)

    def _wait_with_bar(self, refs: list, count: int, timeout: float | None,
                       what: str) -> float | None:
        """Wait for ``count`` of ``refs`` (a bar after ``after`` s); the timeout left."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        first = self.after if deadline is None else min(self.after, left())
        ready, pending = self._wait(refs, num_returns=count, timeout=first)
        if len(ready) >= count or (deadline is not None and left() <= 0):
            return left()
        bar = self.bar_factory(count, f"{what} {len(refs)} refs")
        try:
            done = len(ready)
            bar.update(done)
            while done < count:
                step = POLL_S if deadline is None else min(POLL_S, left())
                more, pending = self._wait(pending, num_returns=min(count - done, len(pending)),
                                           timeout=step)
                done += len(more)
                bar.update(done)
                if deadline is not None and left() <= 0:
                    break
        finally:
            bar.close()
        return left()
