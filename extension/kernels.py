"""The dashboard's questions to the notebook kernels of this Jupyter server.

A notebook's kernel owns the tasks and objects the notebook made, so only it can cancel them
or say what keeps each object alive. The dashboard asks it on the kernel's control channel
(served on a thread of the kernel's own, so it answers while a cell runs; see
``cellfleet.kernel.control``), with a short-lived client of Jupyter's kernel manager. Only
cellfleet kernels are asked, at most ``MAX_KERNELS`` of them, each for at most ``TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
import queue
from typing import Any

from cellfleet.kernel.control import REQUEST

__all__ = ["MAX_KERNELS", "ask", "ask_all", "cellfleet_kernels"]

MAX_KERNELS = 8
TIMEOUT_S = 3.0


def cellfleet_kernels(kernel_manager: Any, first: str | None = None) -> list[str]:
    """Ids of this server's cellfleet kernels (``first``, the cluster's own, leads)."""
    if kernel_manager is None:
        return []
    ids = []
    for kid in list(kernel_manager.list_kernel_ids()):
        try:
            name = kernel_manager.get_kernel(kid).kernel_name or ""
        except KeyError:
            continue
        if name.startswith("cellfleet"):
            ids.append(kid)
    ids.sort(key=lambda k: k != first)
    return ids[:MAX_KERNELS]


async def ask(kernel_manager: Any, kernel_id: str, content: dict,
              timeout: float = TIMEOUT_S) -> dict:
    """One request to one kernel; its reply's content. TimeoutError if it does not answer."""
    client = kernel_manager.get_kernel(kernel_id).client()
    client.start_channels(shell=False, iopub=False, stdin=False, hb=False, control=True)
    loop = asyncio.get_running_loop()
    try:
        msg = client.session.msg(REQUEST, content)
        client.control_channel.send(msg)
        deadline = loop.time() + timeout
        while (remaining := deadline - loop.time()) > 0:
            try:
                reply = await client.control_channel.get_msg(timeout=remaining)
            except queue.Empty:
                break
            if reply.get("parent_header", {}).get("msg_id") == msg["header"]["msg_id"]:
                return reply["content"]
        raise TimeoutError(f"kernel {kernel_id} did not answer within {timeout:.0f} s")
    finally:
        client.stop_channels()


async def ask_all(kernel_manager: Any, content: dict, first: str | None = None) -> list[dict]:
    """The same request to every cellfleet kernel of this server, concurrently; the replies
    of those that answered (a busy or dead kernel's is left out)."""
    ids = cellfleet_kernels(kernel_manager, first)
    replies = await asyncio.gather(*(ask(kernel_manager, k, content) for k in ids),
                                   return_exceptions=True)
    return [dict(r, kernel_id=k) for k, r in zip(ids, replies) if isinstance(r, dict)]
