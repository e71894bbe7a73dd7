"""``cellfleet up`` / ``down`` through a real sshd of the test's own on loopback addresses.

The sshd runs from a temporary directory (its own host key, config and authorized key for
root) on 127.0.0.1 and 127.0.0.2 at a free port; /etc/ssh and ~/.ssh are never read or written
(the client runs with ``-F /dev/null`` and a known_hosts file of the test).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from helpers import free_port, runtime_processes, wait_until

import cellfleet
from cellfleet.ssh_launcher import load_state, state_paths

pytestmark = pytest.mark.integration

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")  # sshd refuses to start without it (Debian's build)
HOSTS = ("127.0.0.1", "127.0.0.2")


@dataclass
class Sshd:
    """The test's sshd: where it listens and the client files that reach it."""

    argv: list[str]
    port: int
    key: Path
    other_key: Path  # a key sshd does not accept
    known_hosts: Path
    log: Path
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = proc = subprocess.Popen(self.argv)
        wait_until(lambda: proc.poll() is not None or all(_accepts(h, self.port) for h in HOSTS),
                   timeout=10, message="sshd to listen")
        assert proc.poll() is None, f"sshd exited: {self.log.read_text()}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        assert not any(_accepts(h, self.port) for h in HOSTS)


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)],
                   check=True)


def _accepts(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.2).close()
    except OSError:
        return False
    return True


@pytest.fixture
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    if os.geteuid() != 0 or not os.path.exists(SSHD) or not shutil.which("ssh"):
        pytest.skip("needs root, /usr/sbin/sshd (openssh-server) and ssh (openssh-client)")
    folder = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key", "other_key"):
        _keygen(folder / name)
    (folder / "authorized_keys").write_text((folder / "client_key.pub").read_text())
    port = free_port()
    config = folder / "sshd_config"
    config.write_text(textwrap.dedent(f"""\
        ListenAddress {HOSTS[0]}:{port}
        ListenAddress {HOSTS[1]}:{port}
        HostKey {folder / 'host_key'}
        AuthorizedKeysFile {folder / 'authorized_keys'}
        PidFile none
        StrictModes no
        PermitRootLogin prohibit-password
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        UsePAM no
        AllowUsers root
        """))
    host_key = (folder / "host_key.pub").read_text().strip()
    known_hosts = folder / "known_hosts"
    known_hosts.write_text("".join(f"[{h}]:{port} {host_key}\n" for h in HOSTS))
    made_privsep = not PRIVSEP_DIR.exists()
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    log = folder / "sshd.log"
    server = Sshd([SSHD, "-D", "-f", str(config), "-E", str(log)], port,
                  folder / "client_key", folder / "other_key", known_hosts, log)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if made_privsep:
            PRIVSEP_DIR.rmdir()


def write_hosts(path: Path, sshd: Sshd, *, key: Path | None = None,
                worker: str = HOSTS[1], python: str = sys.executable) -> tuple[Path, str]:
    """A cluster file: a head on 127.0.0.1 and a worker, each with a session root of its own."""
    name = f"ssh-{secrets.token_hex(3)}"
    root = Path(os.environ["CELLFLEET_TMPDIR"]) / name
    path.write_text(textwrap.dedent(f"""\
        cluster_name: {name}
        ssh:
          user: root
          key: {key or sshd.key}
          port: {sshd.port}
          connect_timeout: 5
          known_hosts: {sshd.known_hosts}
          config_file: /dev/null
          options: {{StrictHostKeyChecking: yes, GlobalKnownHostsFile: /dev/null}}
        python: {python}
        head:
          host: {HOSTS[0]}
          port: {free_port()}
          num_cpus: 1
          object_store_memory: {64 * 2**20}
          env: {{CELLFLEET_TMPDIR: {root}/head}}
        workers:
          - host: {worker}
            num_cpus: 1
            resources: {{on_worker: 1}}
            object_store_memory: {64 * 2**20}
            env: {{CELLFLEET_TMPDIR: {root}/worker}}
        """))
    return path, name


def cellfleet_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cellfleet.cli", *args], capture_output=True,
                          text=True, timeout=180)


def processes_under(name: str) -> list[psutil.Process]:
    """Runtime processes of the sessions of cluster ``name`` (its session roots)."""
    marker = str(Path(os.environ["CELLFLEET_TMPDIR"]) / name)
    return [p for p in runtime_processes() if marker in " ".join(p.info["cmdline"] or [])]


def kill_leftovers(name: str) -> None:
    for proc in processes_under(name):
        proc.kill()


@cellfleet.remote(resources={"on_worker": 1})
def where() -> tuple[str, str]:
    ctx = cellfleet.get_runtime_context()
    return ctx.get_node_id(), socket.gethostname()


def test_up_runs_work_on_the_worker_and_down_leaves_nothing(
        sshd: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, name = write_hosts(tmp_path / "hosts.yaml", sshd)
    try:
        started = cellfleet_cli("up", str(config))
        assert started.returncode == 0, started.stderr
        state = load_state(name)
        head, worker = state["nodes"]
        assert (head["role"], worker["role"]) == ("head", "worker")
        assert worker["raylet_address"].startswith(f"{HOSTS[1]}:")
        assert f"GCS {state['head_address']}" in started.stdout
        assert worker["session"] in started.stdout and "cellfleet down" in started.stdout
        assert oct(Path(state["token_file"]).stat().st_mode & 0o777) == "0o600"
        pids = {*head["pids"], *worker["pids"]}
        assert all(psutil.pid_exists(pid) for pid in pids)

        monkeypatch.setenv("CELLFLEET_TOKEN_FILE", state["token_file"])
        cellfleet.init(address=state["head_address"])
        try:
            alive = {n["NodeID"]: n["NodeManagerAddress"] for n in cellfleet.nodes()
                     if n["Alive"]}
            assert alive == {head["node_id"]: HOSTS[0], worker["node_id"]: HOSTS[1]}
            node_id, _ = cellfleet.get(where.remote(), timeout=60)
            assert node_id == worker["node_id"]
        finally:
            cellfleet.shutdown()

        stopped = cellfleet_cli("down", str(config))
        assert stopped.returncode == 0, stopped.stderr
        assert "Stopped the worker on root@127.0.0.2" in stopped.stdout
        assert "Stopped the head on root@127.0.0.1" in stopped.stdout
        wait_until(lambda: not processes_under(name), timeout=15,
                   message="the cluster's processes to exit")
        assert load_state(name) is None and not state_paths(name)[1].exists()
        again = cellfleet_cli("down", str(config))
        assert again.returncode == 0 and "Nothing to stop" in again.stdout
    finally:
        cellfleet_cli("down", str(config))
        kill_leftovers(name)
    sshd.stop()
    assert sshd.proc.returncode is not None


def test_down_keeps_what_it_could_not_reach_for_the_next_down(
        sshd: Sshd, tmp_path: Path) -> None:
    config, name = write_hosts(tmp_path / "hosts.yaml", sshd)
    try:
        assert cellfleet_cli("up", str(config)).returncode == 0
        pids = {pid for node in load_state(name)["nodes"] for pid in node["pids"]}
        sshd.stop()
        failed = cellfleet_cli("down", str(config))
        assert failed.returncode == 1 and "cannot reach root@127.0.0.2" in failed.stderr
        assert "'cellfleet down' again stops what is left" in failed.stderr
        assert len(load_state(name)["nodes"]) == 2
        assert all(psutil.pid_exists(pid) for pid in pids)  # nothing stopped blindly
        sshd.start()
        stopped = cellfleet_cli("down", str(config))
        assert stopped.returncode == 0, stopped.stderr
        assert load_state(name) is None
        wait_until(lambda: not processes_under(name), timeout=15,
                   message="the cluster's processes to exit")
    finally:
        cellfleet_cli("down", str(config))
        kill_leftovers(name)


def assert_up_fails(config: Path, name: str, expected: str) -> str:
    """``up`` fails with ``expected`` in its message and leaves nothing running or recorded."""
    try:
        failed = cellfleet_cli("up", str(config))
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert expected in failed.stderr, failed.stderr
        assert load_state(name) is None
        wait_until(lambda: not processes_under(name), timeout=15,
                   message="the started head to be stopped again")
        return failed.stderr
    finally:
        kill_leftovers(name)


def test_a_key_the_host_refuses(sshd: Sshd, tmp_path: Path) -> None:
    config, name = write_hosts(tmp_path / "hosts.yaml", sshd, key=sshd.other_key)
    stderr = assert_up_fails(config, name, "root@127.0.0.1")
    assert "refused the key" in stderr and "authorized_keys" in stderr


def test_an_unreachable_worker_stops_the_head_again(sshd: Sshd, tmp_path: Path) -> None:
    config, name = write_hosts(tmp_path / "hosts.yaml", sshd, worker="127.0.0.3")
    stderr = assert_up_fails(config, name, "cannot reach root@127.0.0.3")
    assert "were stopped again" in stderr


def test_a_host_without_cellfleet(sshd: Sshd, tmp_path: Path) -> None:
    python = "/usr/bin/python3"
    probe = subprocess.run([python, "-c", "import cellfleet"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip(f"{python} has cellfleet installed")
    config, name = write_hosts(tmp_path / "hosts.yaml", sshd, python=python)
    assert_up_fails(config, name, f"cellfleet is not installed for {python} on root@127.0.0.1")


def test_a_malformed_cluster_file(tmp_path: Path) -> None:
    config = tmp_path / "hosts.yaml"
    config.write_text("head: {host: 127.0.0.1, num_cpus: many}\n")
    failed = cellfleet_cli("up", str(config))
    assert failed.returncode == 2
    assert "head.num_cpus must be a whole number of at least 0, got 'many'" in failed.stderr


def test_the_cluster_magic_starts_and_stops_a_cluster_file(
        sshd: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    from types import SimpleNamespace

    from cellfleet.kernel.cluster import KernelRuntime
    from cellfleet.kernel.magics import CellfleetMagics

    config, name = write_hosts(tmp_path / "hosts.yaml", sshd)
    monkeypatch.delenv("CELLFLEET_TOKEN_FILE", raising=False)
    runtime = KernelRuntime(address=None, num_cpus=1, log_handler=None)
    kernel = SimpleNamespace(runtime=runtime,
                             remote_runner=SimpleNamespace(forget_actors=lambda: None))
    magics = CellfleetMagics(None, kernel)
    try:
        info = magics.cluster(f"start {config}")
        assert len(info.alive_nodes) == 2 and info.address == load_state(name)["head_address"]
        worker = load_state(name)["nodes"][1]
        assert cellfleet.get(where.remote(), timeout=60)[0] == worker["node_id"]
        assert "Started 2 node(s)" in capsys.readouterr().out
        magics.cluster("stop")
        out = capsys.readouterr().out
        assert "cellfleet: Stopped the worker on root@127.0.0.2" in out
        assert not cellfleet.is_initialized() and load_state(name) is None
        assert "CELLFLEET_TOKEN_FILE" not in os.environ
        wait_until(lambda: not processes_under(name), timeout=15,
                   message="the cluster's processes to exit")
    finally:
        cellfleet.shutdown()
        cellfleet_cli("down", str(config))
        kill_leftovers(name)
