"""How long an interrupted cell takes to end, in a real cellfleet kernel.

A cell waits in ``get`` on tasks that never finish; once their output shows, the kernel is
interrupted, and the time from the interrupt to the cell's ``execute_reply`` is printed::

    python benchmarks/interrupt_latency.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

from jupyter_client.manager import KernelManager

CELL = """
@cellfleet.remote
def spin(i):
    import time
    print('spinning', i, flush=True)
    while True:
        time.sleep(0.01)
spinners = [spin.remote(i) for i in range(2)]
cellfleet.get(spinners)
"""


def one_round(client) -> float:
    msg_id = client.execute(CELL)
    while True:
        msg = client.get_iopub_msg(timeout=60)
        if (msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream"
                and "spinning" in msg["content"]["text"]):
            break
    sent = time.perf_counter()
    client.parent.interrupt_kernel()
    while True:
        reply = client.get_shell_msg(timeout=60)
        if reply["parent_header"].get("msg_id") == msg_id:
            return time.perf_counter() - sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    km = KernelManager(kernel_name="cellfleet")
    km.start_kernel()
    client = km.client()
    client.parent = km
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        client.execute_interactive("import cellfleet; cellfleet.get([])", timeout=60)
        took = [one_round(client) for _ in range(args.rounds)]
    finally:
        client.stop_channels()
        km.shutdown_kernel(now=True)
    print(f"interrupt -> cell ended, {args.rounds} rounds: median {statistics.median(took):.2f} s, "
          f"max {max(took):.2f} s")


if __name__ == "__main__":
    main()
