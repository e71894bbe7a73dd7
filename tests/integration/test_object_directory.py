"""The owner's object directory and secondary copies, on real nodes (127.0.0.1-6).

A raylet that pulls a copy keeps it as a secondary and tells the owner; later pulls read from
every holder; a holder killed mid-pull leaves the pull to the others (or fails it clearly when
it was the only one); a full store evicts secondary copies before it spills a primary; and the
chunk port refuses anyone without the token.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator

import cloudpickle
import numpy as np
import pytest
from helpers import wait_until

import cellfleet as ray
from cellfleet import _messages as m
from cellfleet import exceptions
from cellfleet._protocol import ClientHandshake, frame_header
from cellfleet.cluster_utils import Cluster, ClusterNode
from cellfleet.util.state import list_objects

MiB = 1 << 20
pytestmark = pytest.mark.integration
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers unpickle its functions


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head and nodes "b" and "c" (1 CPU each); tests that kill a node add their own."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for name in ("b", "c"):
        cluster.add_node(num_cpus=1, resources={name: 1})
    ray.init(address=cluster.address)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def ask(address: str, message: m.Message) -> object:
    """A request to the raylet at ``address`` from the driver's I/O thread."""
    core = ray._context.core

    async def request() -> object:
        return await (await core.peers.connect(address)).request(message)

    return core.run(request(), timeout=10)


def stored_size(ref: ray.ObjectRef) -> int:
    """The object's size in the store (header, pickle and buffers)."""
    return ray._context.core.refs.entries[ref._id].payload[2]


def holders(ref: ray.ObjectRef | bytes) -> list[str]:
    """The raylets the owner (the driver) knows hold secondary copies of ``ref``."""
    return ray._context.core.directory.holders(getattr(ref, "_id", ref))


@ray.remote
def make(n: int, value: int) -> np.ndarray:
    return np.full(n, value, dtype=np.uint8)


@ray.remote
def checksum(array: np.ndarray) -> int:
    return int(array.sum())


def copy_to(node_resource: str, ref: ray.ObjectRef, size: int, value: int) -> None:
    """A task on the node with ``node_resource`` reads ``ref``: that node pulls a copy."""
    assert ray.get(checksum.options(resources={node_resource: 1}).remote(ref),
                   timeout=60) == size * value


def test_the_owner_learns_of_each_copy_and_a_later_pull_reads_from_every_holder(cluster):
    b, c = cluster.worker_nodes
    head = cluster.head_node
    size = 96 * MiB
    ref = make.options(resources={"b": 1}).remote(size, 3)
    ray.wait([ref], timeout=60, fetch_local=False)
    copy_to("c", ref, size, 3)
    object_id, hex_id = ref._id, ref.hex()
    wait_until(lambda: holders(object_id) == [c.address], message="the copy on c registered")
    wait_until(lambda: any(o.get("copies") == [c.node_id] for o in list_objects()
                           if o["object_id"] == hex_id),
               message="the state API to list the copy")
    served = {n.address: ask(n.address, m.GetNodeStats())["served_bytes"] for n in (b, c)}
    assert int(ray.get(ref, timeout=60)[-1]) == 3  # the head pulls from b and c at once
    sent = {n.address: ask(n.address, m.GetNodeStats())["served_bytes"] - served[n.address]
            for n in (b, c)}
    assert sent[b.address] > 0 and sent[c.address] > 0, sent
    assert sent[b.address] + sent[c.address] == stored_size(ref)  # each chunk once
    wait_until(lambda: sorted(holders(object_id)) == sorted([c.address, head.address]),
               message="the head's copy registered too")
    del ref
    for node in (head, b, c):
        wait_until(lambda node=node: ask(node.address, m.GetNodeStats())["store"]["used"] == 0,
                   message=f"every copy freed with the object ({node})")


def _stop(node: ClusterNode) -> None:
    os.kill(node._processes.processes[0].pid, signal.SIGSTOP)


def _pull_waits_only_on(head: ClusterNode, ref: ray.ObjectRef, holder: ClusterNode) -> bool:
    pulls = ask(head.address, m.GetNodeStats())["pulls"]
    return any(p["object_id"] == ref.hex() and p["waiting_on"] == [holder.address]
               for p in pulls)


def test_a_holder_killed_mid_pull_leaves_the_rest_to_another_holder(cluster):
    head = cluster.head_node
    doomed = cluster.add_node(num_cpus=1, resources={"doomed": 1})
    warm = make.options(resources={"doomed": 1}).remote(9 * MiB, 1)
    assert ray.get(warm, timeout=60)[0] == 1  # the head has connections to its chunk port
    del warm
    size = 96 * MiB
    ref = make.options(resources={"doomed": 1}).remote(size, 5)
    ray.wait([ref], timeout=60, fetch_local=False)
    copy_to("c", ref, size, 5)
    wait_until(lambda: holders(ref) == [cluster.worker_nodes[1].address],
               message="the copy on c registered")
    _stop(doomed)  # its chunks stay in flight until it dies
    got: list = []
    getter = threading.Thread(target=lambda: got.append(ray.get(ref, timeout=60)))
    getter.start()
    try:
        wait_until(lambda: _pull_waits_only_on(head, ref, doomed), timeout=30,
                   message="c to have sent all but the chunks asked of the stopped node")
        assert getter.is_alive()
    finally:
        cluster.remove_node(doomed, allow_graceful=False)  # SIGKILL, mid-pull
    getter.join(timeout=60)
    assert got and got[0].shape == (size,) and int(got[0].sum()) == 5 * size
    assert not ask(head.address, m.GetNodeStats())["pulls"]


def test_the_only_holder_killed_mid_pull_fails_the_get_clearly(cluster):
    head = cluster.head_node
    doomed = cluster.add_node(num_cpus=1, resources={"alone": 1})
    warm = make.options(resources={"alone": 1}).remote(9 * MiB, 1)
    assert ray.get(warm, timeout=60)[0] == 1
    del warm
    ref = make.options(resources={"alone": 1}, max_retries=0).remote(64 * MiB, 2)
    ray.wait([ref], timeout=60, fetch_local=False)
    _stop(doomed)
    errors: list = []

    def get() -> None:
        try:
            ray.get(ref, timeout=60)
        except exceptions.RayError as exc:
            errors.append(exc)

    getter = threading.Thread(target=get)
    getter.start()
    try:
        wait_until(lambda: _pull_waits_only_on(head, ref, doomed), timeout=30,
                   message="the pull to wait on the stopped node")
    finally:
        cluster.remove_node(doomed, allow_graceful=False)
    getter.join(timeout=60)
    assert errors and isinstance(errors[0], exceptions.ObjectLostError), errors
    wait_until(lambda: ask(head.address, m.GetNodeStats())["store"]["used"] == 0,
               message="the partial copy to go")


def test_the_owner_forgets_the_copies_of_a_node_that_died(cluster):
    node = cluster.add_node(num_cpus=1, resources={"brief": 1})
    size = 8 * MiB
    ref = make.options(resources={"b": 1}).remote(size, 4)
    ray.wait([ref], timeout=60, fetch_local=False)
    copy_to("brief", ref, size, 4)
    wait_until(lambda: holders(ref) == [node.address], message="the copy registered")
    cluster.remove_node(node, allow_graceful=False)
    wait_until(lambda: holders(ref) == [], message="the dead node's copy forgotten")
    assert int(ray.get(ref, timeout=60)[0]) == 4  # from the primary


def test_a_full_store_evicts_secondary_copies_before_spilling(cluster):
    small = cluster.add_node(num_cpus=1, resources={"small": 1}, object_store_memory=100 * MiB)
    try:
        a = make.options(resources={"b": 1}).remote(40 * MiB, 1)
        ray.wait([a], timeout=60, fetch_local=False)
        copy_to("small", a, 40 * MiB, 1)
        wait_until(lambda: holders(a) == [small.address], message="the copy registered")
        big = make.options(resources={"small": 1}).remote(70 * MiB, 2)  # needs a's room
        ray.wait([big], timeout=60, fetch_local=False)
        wait_until(lambda: holders(a) == [], message="the owner told of the eviction")
        store = ask(small.address, m.GetNodeStats())["store"]
        assert store["spilled_total"] == 0 and store["num_objects"] == 1
        assert int(ray.get(a, timeout=60)[0]) == 1 and int(ray.get(big, timeout=60)[0]) == 2
    finally:
        cluster.remove_node(small)


def _closed_without_answer(sock: socket.socket, challenge: bool = True) -> bool:
    """Read until the server closes (a reset too: it closed with our bytes unread); True if
    it sent nothing but its challenge."""
    sock.settimeout(10)
    received = b""
    try:
        while data := sock.recv(65536):
            received += data
    except ConnectionResetError:
        pass
    return len(received) == (56 if challenge else 0)


def test_the_chunk_port_refuses_garbage_and_clients_without_the_token(cluster):
    b = cluster.worker_nodes[0]
    address = ask(b.address, m.ChunkAddress())
    host, _, port = address.rpartition(":")
    request = m.encode(m.ReadObjectChunk(b"\0" * 28, 0, 1 << 20), 1)
    with socket.create_connection((host, int(port))) as garbage:
        garbage.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(512))
        assert _closed_without_answer(garbage)
    with socket.create_connection((host, int(port))) as early:
        early.sendall(frame_header(len(request)) + request)  # no handshake at all
        assert _closed_without_answer(early)
    with socket.create_connection((host, int(port))) as wrong:
        handshake = ClientHandshake(os.urandom(32), address)
        wrong.sendall(handshake.receive_data(wrong.recv(56)))
        wrong.sendall(frame_header(len(request)) + request)
        assert _closed_without_answer(wrong, challenge=False)  # no proof, no chunk
    token = cluster.head_node._processes.session.token()
    with socket.create_connection((host, int(port))) as other:
        handshake = ClientHandshake(token, address)
        other.sendall(handshake.receive_data(other.recv(56)))
        proof = other.recv(32)
        handshake.receive_data(proof)
        assert handshake.done  # the token is good, but the port serves chunks only
        stats = m.encode(m.GetNodeStats(), 1)
        other.sendall(frame_header(len(stats)) + stats)
        assert _closed_without_answer(other, challenge=False)
    size = 12 * MiB  # the port still serves pulls
    assert int(ray.get(make.options(resources={"b": 1}).remote(size, 9), timeout=60)[0]) == 9
