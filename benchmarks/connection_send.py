"""The cost of the connection layer alone: one-way sends and pipelined requests, one process.

A client and a server ``Connection`` over a localhost socket, no runtime around them. Prints
the rate of ``send`` calls (a task-sized one-way message each, as the submitter pushes
tasks), of messages delivered to the server's handler, and of pipelined request/reply round
trips (1,000 in flight)::

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
    received = 0

    def on_push(conn, msg) -> None:
        nonlocal received
        received += 1

    server, address = await serve({m.PushTasks: on_push, m.KvGet: lambda c, msg: b"v"}, TOKEN)
    client = await connect(address, TOKEN)
    try:
        sent, send_time = 0, 0.0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            for _ in range(BATCH):
                client.send(TASK)
            send_time += time.perf_counter() - t0
            sent += BATCH
            await asyncio.sleep(0)
            if sent - received > 50 * BATCH:
                while sent - received > BATCH:
                    await asyncio.sleep(0)
        while received < sent:
            await asyncio.sleep(0)
        delivered = sent / (time.perf_counter() - start)

        replies, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            await asyncio.gather(*[client.request(m.KvGet("n", b"k")) for _ in range(BATCH)])
            replies += BATCH
        return sent / send_time, delivered, replies / (time.perf_counter() - start)
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
    names = ("send calls", "one-way messages delivered", "pipelined request round trips")
    for name, values in zip(names, zip(*rounds)):
        print(f"{name} per second {statistics.median(values):,.0f} "
              f"(min {min(values):,.0f}, max {max(values):,.0f})")


if __name__ == "__main__":
    main()
