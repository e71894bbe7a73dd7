"""``python -m cellfleet.raylet.forkserver``: a worker template that forks workers on request.

Starting a worker as a new interpreter costs ~0.3 s of CPU, almost all of it importing the
runtime; a thousand actors created at once pay it a thousand times. The template imports the
worker runtime once, starts no thread and no event loop, and forks a worker per request (a few
milliseconds); the workers share the imported modules' memory until they write to it.

Protocol on a Unix stream socket shared with the raylet, one line each way per event::

    raylet -> template   ["<log path>", ["--worker-id", "...", ...]]   (JSON)
    template -> raylet   "pid <pid>"                                   one per request, in order
    template -> raylet   "exit <pid> <status>"                         when a worker it forked exits

The template exits when the raylet closes its end. A forked worker starts its own session,
writes to its log, and runs ``cellfleet.worker``'s ``main`` with the given arguments (its
lifeline is the raylet's pipe, inherited through the template).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import sys
import traceback

from .._gc import tune_gc


def _become_worker(log_path: str, argv: list[str], closing: list[int]) -> None:
    """In the forked child: detach, redirect output, run the worker; never returns."""
    code = 1
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in closing:
            os.close(fd)
        out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        os.close(null)
        from ..worker.__main__ import main

        sys.argv = ["cellfleet.worker", *argv]
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def _reap(conn: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn.sendall(f"exit {pid} {os.waitstatus_to_exitcode(status)}\n".encode())


def serve(conn: socket.socket) -> None:
    """Fork a worker per request line until the raylet closes ``conn``."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes select through wake_w
    buffer = b""
    while True:
        ready, _, _ = select.select([conn, wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
            _reap(conn)
        if conn not in ready:
            continue
        data = conn.recv(65536)
        if not data:
            return
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            log_path, argv = json.loads(line)
            pid = os.fork()
            if pid == 0:
                _become_worker(log_path, argv, [conn.fileno(), wake_r, wake_w])
            conn.sendall(f"pid {pid}\n".encode())


def main() -> None:
    parser = argparse.ArgumentParser(prog="cellfleet.raylet.forkserver")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--session-dir", required=True, help="named so tools find the process")
    parser.add_argument("--lifeline-fd", type=int, default=None, help="inherited by workers")
    args = parser.parse_args()
    import cellfleet.worker.__main__  # noqa: F401 - the import every forked worker shares

    tune_gc(freeze=True)  # what every worker inherits stays out of its collections
    serve(socket.socket(fileno=args.control_fd))


if __name__ == "__main__":
    main()
