"""Two hosts: this machine and a network namespace the test creates (its own interface and
address behind a veth pair, its own session directory), joined with ``cellfleet start
--address``. Skipped with the reason where the machine refuses namespaces.

Values stay small (inline): objects cannot move between nodes yet.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from helpers import free_port, wait_until

import cellfleet as ray
from cellfleet._session import Session

pytestmark = pytest.mark.integration


def sh(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


@pytest.fixture
def other_host(tmp_path: Path) -> Iterator[dict]:
    """A namespace with address 10.231.N.2 reached from this host's 10.231.N.1."""
    n = os.getpid() % 200 + 20
    name, outside, inside = f"cfhost{n}", f"cfh{n}", f"cfn{n}"
    host_ip, ns_ip = f"10.231.{n}.1", f"10.231.{n}.2"
    steps = [
        ("ip", "netns", "add", name),
        ("ip", "link", "add", outside, "type", "veth", "peer", "name", inside),
        ("ip", "link", "set", inside, "netns", name),
        ("ip", "addr", "add", f"{host_ip}/24", "dev", outside),
        ("ip", "link", "set", outside, "up"),
        ("ip", "netns", "exec", name, "ip", "addr", "add", f"{ns_ip}/24", "dev", inside),
        ("ip", "netns", "exec", name, "ip", "link", "set", inside, "up"),
        ("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"),
    ]
    try:
        for step in steps:
            done = sh(*step)
            if done.returncode != 0:
                pytest.skip(f"this machine refuses network namespaces ({' '.join(step)}: "
                            f"{done.stderr.strip()})")
        root = tmp_path / "other-host"
        root.mkdir(mode=0o700)
        yield {"name": name, "host_ip": host_ip, "ns_ip": ns_ip, "root": root}
    finally:
        for pid in sh("ip", "netns", "pids", name).stdout.split():
            try:
                psutil.Process(int(pid)).kill()
            except psutil.Error:
                pass
        sh("ip", "link", "del", outside)
        sh("ip", "netns", "del", name)


def cli(*args: str, netns: str | None = None, env: dict | None = None,
        ) -> subprocess.CompletedProcess:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run([*prefix, sys.executable, "-m", "cellfleet.cli", *args],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


@ray.remote(resources={"far": 1})
def where() -> tuple[str, str]:
    return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()


def test_a_node_on_another_host_joins_and_takes_work(other_host):
    port = free_port()
    host_ip, ns_ip = other_host["host_ip"], other_host["ns_ip"]
    address = f"{host_ip}:{port}"
    elsewhere = {"CELLFLEET_TMPDIR": str(other_host["root"])}
    head = cli("start", "--head", "--port", str(port), "--host", host_ip, "--num-cpus", "1")
    assert head.returncode == 0, head.stderr
    try:
        token_file = Session.current().token_file
        # Without the token the other host has no session to take it from: refused clearly.
        no_token = cli("start", "--address", address, netns=other_host["name"], env=elsewhere)
        assert no_token.returncode == 2 and "no token for the cluster" in no_token.stderr
        joined = cli("start", "--address", address, "--host", ns_ip, "--num-cpus", "1",
                     "--resources", '{"far": 1}', "--object-store-memory", str(64 * 2**20),
                     "--token-file", str(token_file), netns=other_host["name"], env=elsewhere)
        assert joined.returncode == 0, joined.stderr
        ray.init(address=address)
        try:
            (far,) = [n for n in ray.nodes() if n["NodeManagerAddress"] == ns_ip]
            assert far["Alive"] and far["Resources"]["far"] == 1
            assert ray.get(where.remote(), timeout=30) == (far["NodeID"], ns_ip)
        finally:
            ray.shutdown()
    finally:
        stopped_there = cli("stop", netns=other_host["name"], env=elsewhere)
        stopped_here = cli("stop")
    assert "Stopped the node" in stopped_there.stdout, stopped_there.stdout
    assert "Stopped the cluster" in stopped_here.stdout, stopped_here.stdout
    wait_until(lambda: not [p for p in psutil.process_iter(["cmdline"])
                            if str(other_host["root"]) in " ".join(p.info["cmdline"] or [])],
               message="the other host's processes to exit")
