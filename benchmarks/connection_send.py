"""The cost of the connection layer alone: one-way sends and pipelined requests, one process.

A client and a server ``Connection`` over a localhost socket, no runtime around them. Prints
the cost of one ``send`` call (a task-sized one-way message, as the submitter pushes tasks)
and of one pipelined request with its reply (1,000 in flight), each from the fastest batch of
1,000 (the least disturbed by other work on the machine), and the rate of messages delivered
to the server's handler::

    python benchmarks/connection_send.py [--seconds 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from cellfleet import _messages as m
from cellfleet._rpc import connect, serve

TOKEN = b"b" * 32
TASK = m.PushTasks([b"s" * 200])  # about a pushed task spec's size
BATCH = 1000  # messages queued per loop iteration, as a burst of submissions does


async def one_round(seconds: float) -> tuple[float, float, float]:
    """Best per-call costs (ns per send, us per pipelined request) and the delivered rate."""
    received = 0

    def on_push(conn, msg) -> None:
        nonlocal received
        received += 1

    server, address = await serve({m.PushTasks: on_push, m.KvGet: lambda c, msg: b"v"}, TOKEN)
    client = await connect(address, TOKEN)
    try:
        sent, best_send = 0, float("inf")
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            for _ in range(BATCH):
                client.send(TASK)
            best_send = min(best_send, (time.perf_counter() - t0) / BATCH)
            sent += BATCH
            while sent - received > 10 * BATCH:
                await asyncio.sleep(0)
            await asyncio.sleep(0)
        while received < sent:
            await asyncio.sleep(0)
        delivered = sent / (time.perf_counter() - start)

        best_request, start = float("inf"), time.perf_counter()
        while time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            await asyncio.gather(*[client.request(m.KvGet("n", b"k")) for _ in range(BATCH)])
            best_request = min(best_request, (time.perf_counter() - t0) / BATCH)
        return best_send * 1e9, best_request * 1e6, delivered
    finally:
        client.close()
        server.close()
        await server.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per figure and repeat")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rounds = [asyncio.run(one_round(args.seconds)) for _ in range(args.repeats)]
    sends, requests, delivered = zip(*rounds)
    print(f"send call, best batch: {min(sends):.0f} ns")
    print(f"pipelined request and reply, best batch: {min(requests):.1f} us")
    print(f"one-way messages delivered per second: {statistics.median(delivered):,.0f} "
          f"(min {min(delivered):,.0f}, max {max(delivered):,.0f})")


if __name__ == "__main__":
    main()
