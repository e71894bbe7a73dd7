"""``cellfleet up hosts.yaml`` / ``cellfleet down hosts.yaml``: a cluster started over SSH.

``up`` starts the head first, then every worker (in parallel) with the head's address, each
through ``ssh HOST PYTHON -m cellfleet.ssh_launcher remote start``. What a node needs (the
cluster token, its resources, its environment) goes through ssh's stdin as one JSON line, never
on a command line another user could read in ``ps``; the node answers with one JSON line
(its session directory, processes, node id). ``up`` is all or nothing: when a host fails, the
nodes already started are stopped again and every failure is reported.

What ``up`` started is kept in a state file of this user (``<session root>/clusters/<name>.json``,
with the token beside it, both 0600), so ``down`` stops exactly those sessions, host by host
(``remote stop``: the session's own processes, found by their command line), and nothing else
that runs there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .ssh_config import ClusterSpec, ConfigError, HostSpec, SSHOptions, load_config

__all__ = ["LaunchError", "StartedNode", "UpResult", "describe", "down", "load_state", "main",
           "ssh_argv", "ssh_failure", "state_paths", "up"]

REPLY_MARK = "CELLFLEET-SSH-REPLY "
REMOTE_START_TIMEOUT_S = 90.0  # past the connect timeout: the node's own start-up deadline
REMOTE_STOP_TIMEOUT_S = 60.0
MAX_PARALLEL_SSH = 8


class LaunchError(Exception):
    """Starting or stopping a node over SSH failed; the message says where and what to do."""


# -- pure: commands and their failures ------------------------------------------------------


def ssh_argv(host: HostSpec, action: str) -> list[str]:
    """The ssh command that runs ``remote ACTION`` of this module on ``host``."""
    opts: SSHOptions = host.ssh
    argv = ["ssh", "-T", "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={max(1, round(opts.connect_timeout))}",
            "-p", str(opts.port)]
    if opts.config_file:
        argv += ["-F", os.path.expanduser(opts.config_file)]
    if opts.key:
        argv += ["-i", os.path.expanduser(opts.key), "-o", "IdentitiesOnly=yes"]
    if opts.user:
        argv += ["-l", opts.user]
    if opts.known_hosts:
        argv += ["-o", f"UserKnownHostsFile={os.path.expanduser(opts.known_hosts)}"]
    for name, value in opts.options:
        argv += ["-o", f"{name}={value}"]
    remote = shlex.join([host.python, "-m", "cellfleet.ssh_launcher", "remote", action])
    return [*argv, "--", host.host, remote]


def ssh_failure(host: HostSpec, returncode: int, stderr: str) -> str:
    """One sentence saying why ``ssh`` to ``host`` failed and what to do about it."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else f"exit code {returncode}"
    text = stderr.lower()
    where = host.label
    if returncode == 255:
        if "permission denied" in text:
            key = f"the key {host.ssh.key}" if host.ssh.key else "ssh's default keys"
            return (f"{where} refused {key} ({last}): add its public key to "
                    f"~{host.ssh.user or ''}/.ssh/authorized_keys there, or set ssh.key / "
                    "ssh.user in the cluster file")
        if "host key verification failed" in text or "host identification has changed" in text:
            return (f"{where}: ssh does not know or trust this host's key ({last}): add it to "
                    "known_hosts (ssh-keyscan), or set ssh.known_hosts / "
                    "ssh.options.StrictHostKeyChecking in the cluster file")
        if any(s in text for s in ("connection refused", "timed out", "no route to host",
                                   "could not resolve", "network is unreachable",
                                   "connection closed", "connection reset")):
            return (f"cannot reach {where} over ssh ({last}): is the host up, and does sshd "
                    f"listen on port {host.ssh.port} (ssh.port in the cluster file)?")
        return f"ssh to {where} failed: {last}"
    if "no module named 'cellfleet'" in text or 'no module named "cellfleet"' in text:
        return (f"cellfleet is not installed for {host.python} on {where}: install it there "
                "(pip install cellfleet, the same version as here), or point 'python:' in "
                "the cluster file at the interpreter that has it")
    if "no module named" in text and "cellfleet.ssh_launcher" in text:
        return (f"the cellfleet on {where} ({host.python}) has no ssh launcher: install the "
                "same cellfleet version as here")
    if returncode == 127 or ("not found" in text and host.python in stderr):
        return (f"there is no {host.python} on {where} ({last}): set 'python:' in the cluster "
                "file to the interpreter that has cellfleet installed")
    return f"{where}: {last}"


def _start_request(spec: ClusterSpec, host: HostSpec, token: str | None) -> dict[str, Any]:
    """What ``remote start`` on ``host`` is told (token only for a worker: it joins)."""
    request: dict[str, Any] = {
        "role": "worker" if token else "head", "node_ip": host.node_ip,
        "num_cpus": host.num_cpus, "num_gpus": host.num_gpus, "resources": host.resources,
        "object_store_memory": host.object_store_memory, "env": dict(host.env),
    }
    if token:
        request.update(address=spec.head_address, token=token)
    else:
        request["port"] = spec.port
    return request


def _cli_arguments(request: dict[str, Any], token_file: str | None) -> list[str]:
    """The ``cellfleet start`` arguments a ``remote start`` request stands for."""
    argv = ["start", "--host", request["node_ip"]]
    if token_file:
        argv += ["--address", request["address"], "--token-file", token_file]
    else:
        argv += ["--head", "--port", str(request["port"])]
    for name in ("num_cpus", "num_gpus", "object_store_memory"):
        if request.get(name) is not None:
            argv += [f"--{name.replace('_', '-')}", str(request[name])]
    if request.get("resources"):
        argv += ["--resources", json.dumps(request["resources"])]
    return argv


# -- the launcher's side --------------------------------------------------------------------


@dataclass
class StartedNode:
    """A node ``up`` started: where, and the session that holds its processes."""

    role: str
    host: HostSpec
    session: str
    node_id: str
    raylet_address: str
    pids: list[int]


def _host_from_dict(data: dict[str, Any]) -> HostSpec:
    ssh = data["ssh"]
    return HostSpec(**{**data, "env": tuple(map(tuple, data["env"])),
                       "ssh": SSHOptions(**{**ssh, "options": tuple(map(tuple, ssh["options"]))})})


def _check_local(host: HostSpec) -> None:
    """Fail before ssh for what this machine can tell: a missing key file."""
    key = host.ssh.key
    if key and not os.access(os.path.expanduser(key), os.R_OK):
        raise LaunchError(f"{host.label}: the ssh key {key} does not exist or cannot be read: "
                          "fix ssh.key in the cluster file")


def _remote(host: HostSpec, action: str, request: dict[str, Any], timeout: float) -> dict:
    """Run ``remote ACTION`` on ``host`` with ``request`` on stdin; its JSON reply."""
    _check_local(host)
    argv = ssh_argv(host, action)
    try:
        done = subprocess.run(argv, input=json.dumps(request) + "\n", capture_output=True,
                              text=True, timeout=host.ssh.connect_timeout + timeout)
    except FileNotFoundError:
        raise LaunchError("there is no 'ssh' command on this machine: install an OpenSSH "
                          "client (e.g. apt-get install openssh-client)") from None
    except subprocess.TimeoutExpired:
        raise LaunchError(f"{host.label} did not answer within "
                          f"{host.ssh.connect_timeout + timeout:.0f}s ({action})") from None
    replies = [line[len(REPLY_MARK):] for line in done.stdout.splitlines()
               if line.startswith(REPLY_MARK)]
    if done.returncode != 0 or not replies:
        raise LaunchError(ssh_failure(host, done.returncode, done.stderr or done.stdout))
    return json.loads(replies[-1])


def _start_node(spec: ClusterSpec, host: HostSpec,
                token: str | None) -> tuple[StartedNode, dict]:
    reply = _remote(host, "start", _start_request(spec, host, token), REMOTE_START_TIMEOUT_S)
    return StartedNode(role="worker" if token else "head", host=host, session=reply["session"],
                       node_id=reply["node_id"], raylet_address=reply["raylet_address"],
                       pids=reply["pids"]), reply


def _stop_node(node: StartedNode) -> int:
    reply = _remote(node.host, "stop", {"session": node.session, "env": dict(node.host.env)},
                    REMOTE_STOP_TIMEOUT_S)
    return int(reply["stopped"])


def state_paths(name: str) -> tuple[Path, Path]:
    """This user's record of cluster ``name`` that ``up`` keeps: (state, token)."""
    from ._session import root_dir

    folder = root_dir() / "clusters"
    return folder / f"{name}.json", folder / f"{name}.token"


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file only this user can read (0600 from its creation on)."""
    from ._session import _private_root

    _private_root()
    path.parent.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _save_state(spec: ClusterSpec, nodes: list[StartedNode], token: str) -> Path:
    state_file, token_file = state_paths(spec.name)
    _write_private(token_file, token)
    _write_private(state_file, json.dumps({
        "cluster_name": spec.name, "head_address": spec.head_address, "started": time.time(),
        "token_file": str(token_file),
        "nodes": [{**asdict(n), "host": asdict(n.host)} for n in nodes],
    }, indent=1))
    return token_file


def load_state(name: str) -> dict[str, Any] | None:
    """What ``up`` recorded for cluster ``name`` (None: nothing is up under that name)."""
    state_file, _ = state_paths(name)
    try:
        return json.loads(state_file.read_text())
    except FileNotFoundError:
        return None


def _nodes_of(state: dict[str, Any]) -> list[StartedNode]:
    return [StartedNode(**{**n, "host": _host_from_dict(n["host"])}) for n in state["nodes"]]


@dataclass
class UpResult:
    """A cluster ``up`` started: its head's GCS address, the token file, the nodes."""

    head_address: str
    token_file: Path
    nodes: list[StartedNode]


def up(spec: ClusterSpec, say: Callable[[str], None] = print) -> UpResult:
    """Start the head of ``spec`` over ssh, then its workers; all of them or none."""
    if load_state(spec.name) is not None:
        raise LaunchError(f"the cluster '{spec.name}' is up already (see "
                          f"{state_paths(spec.name)[0]}): run 'cellfleet down' with its "
                          "cluster file first")
    for host in spec.hosts:
        _check_local(host)
    say(f"Starting the head of '{spec.name}' on {spec.head.label} ...")
    head, reply = _start_node(spec, spec.head, None)
    token = reply["token"]
    started, failures = [head], []
    token_file = _save_state(spec, started, token)  # recorded at once: an interrupted up
    if spec.workers:                                # still leaves down something to stop
        say(f"Starting {len(spec.workers)} worker node(s), joining {spec.head_address} ...")
        with ThreadPoolExecutor(min(MAX_PARALLEL_SSH, len(spec.workers))) as pool:
            futures = [pool.submit(_start_node, spec, w, token) for w in spec.workers]
            for future in futures:
                try:
                    started.append(future.result()[0])
                    _save_state(spec, started, token)
                except LaunchError as exc:
                    failures.append(str(exc))
    if failures:
        left = [node for node in reversed(started) if isinstance(_try_stop(node), LaunchError)]
        if left:
            _save_state(spec, left, token)
            failures.append(f"{len(left)} node(s) could not be stopped again: 'cellfleet down' "
                            "retries")
        else:
            for path in state_paths(spec.name):
                path.unlink(missing_ok=True)
        raise LaunchError("; ".join(failures) + f" (the {len(started) - len(left)} node(s) "
                          "started meanwhile were stopped again)")
    return UpResult(spec.head_address, token_file, started)


def describe(result: UpResult, config_path: str) -> str:
    """What ``up`` started where, and how to use and stop it."""
    lines = [f"Started {len(result.nodes)} node(s):"]
    for node in result.nodes:
        where = f"GCS {result.head_address}, " if node.role == "head" else ""
        lines.append(f"  {node.role:<7} {node.host.label:<24} {where}raylet "
                     f"{node.raylet_address}, node {node.node_id[:12]}, session {node.session}")
    lines += ["", "Connect from Python on a host of the cluster (the token file is on this "
              "machine: copy it there if this is not one of them):",
              f"    export CELLFLEET_TOKEN_FILE={result.token_file}",
              f"    cellfleet.init(address=\"{result.head_address}\")",
              "", f"Stop it with:\n    cellfleet down {config_path}"]
    return "\n".join(lines)


def down(spec: ClusterSpec, say: Callable[[str], None] = print) -> int:
    """Stop the nodes ``up`` started for ``spec`` (workers first); how many were stopped."""
    state = load_state(spec.name)
    if state is None:
        say(f"Nothing to stop: no cluster '{spec.name}' was started with 'cellfleet up'.")
        return 0
    nodes = _nodes_of(state)
    workers = [n for n in nodes if n.role != "head"]
    heads = [n for n in nodes if n.role == "head"]
    left: list[StartedNode] = []
    failures: list[str] = []
    stopped = 0
    for group in (workers, heads):
        if not group:
            continue
        with ThreadPoolExecutor(min(MAX_PARALLEL_SSH, len(group))) as pool:
            for node, outcome in zip(group, pool.map(_try_stop, group), strict=True):
                if isinstance(outcome, LaunchError):
                    left.append(node)
                    failures.append(str(outcome))
                else:
                    stopped += 1
                    say(f"Stopped the {node.role} on {node.host.label} ({outcome} "
                        "process(es))" if outcome else
                        f"The {node.role} on {node.host.label} had stopped already")
    state_file, token_file = state_paths(spec.name)
    if left:
        state["nodes"] = [n for n in state["nodes"] if n["session"] in
                          {m.session for m in left}]
        _write_private(state_file, json.dumps(state, indent=1))
        raise LaunchError("; ".join(failures) + " ('cellfleet down' again stops what is left)")
    state_file.unlink(missing_ok=True)
    token_file.unlink(missing_ok=True)
    return stopped


def _try_stop(node: StartedNode) -> int | LaunchError:
    try:
        return _stop_node(node)
    except LaunchError as exc:
        return exc


# -- the node's side (run through ssh) ------------------------------------------------------


def _reply(data: dict[str, Any]) -> None:
    print(REPLY_MARK + json.dumps(data), flush=True)


def _remote_start(request: dict[str, Any]) -> int:
    """Start this host's node as ``cellfleet start`` does; reply with its session."""
    from . import cli
    from ._session import Session, root_dir

    token_file = None
    try:
        if request["role"] == "worker":
            fd, token_file = tempfile.mkstemp(prefix="cellfleet-token-")  # 0600
            with os.fdopen(fd, "w") as f:
                f.write(request["token"])
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the reply only
            code = cli.main(_cli_arguments(request, token_file))
    finally:
        if token_file:
            os.unlink(token_file)
    if code:
        return code
    mine = sorted(root_dir().glob(f"session_*_{os.getpid()}_*"))
    if not mine:
        print("cellfleet start succeeded but left no session directory", file=sys.stderr)
        return 1
    session = Session(mine[-1])
    info = session.info()
    reply = {"session": str(session.path), "node_id": info["node_id"],
             "raylet_address": info["raylet_address"], "pids": info["pids"]}
    if request["role"] == "head":
        reply.update(token=session.token().decode(), gcs_address=info["gcs_address"])
    _reply(reply)
    return 0


def _remote_stop(request: dict[str, Any]) -> int:
    """Stop the processes of the one session ``up`` started here; reply with their count."""
    from ._session import Session, root_dir

    path = Path(request["session"])
    if path.parent != root_dir() or not path.name.startswith("session_"):
        print(f"{path} is not a session directory of {root_dir()}", file=sys.stderr)
        return 2
    stopped = 0
    if path.is_dir():
        from .cli import _stop_session

        with contextlib.redirect_stdout(sys.stderr):
            stopped = _stop_session(Session(path))
    _reply({"stopped": stopped})
    return 0


def _remote_main(action: str) -> int:
    request = json.loads(sys.stdin.readline())
    os.environ.update(request.get("env") or {})
    return {"start": _remote_start, "stop": _remote_stop}[action](request)


# -- the command ----------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """``cellfleet up|down CLUSTER.yaml``; returns the exit code."""
    command = argv[0] if argv[:1] in (["up"], ["down"]) else "up"
    parser = argparse.ArgumentParser(
        prog=f"cellfleet {command}",
        description="start a head and workers over SSH" if command == "up" else
        "stop the nodes 'cellfleet up' started")
    parser.add_argument("config", help="the cluster file (YAML: head, workers, ssh, python)")
    args = parser.parse_args(argv[1:])
    args.command = command
    try:
        spec = load_config(args.config)
        if args.command == "up":
            print(describe(up(spec), args.config))
        else:
            down(spec)
    except (ConfigError, LaunchError) as exc:
        print(f"cellfleet {args.command}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["remote"] and len(sys.argv) == 3:
        sys.exit(_remote_main(sys.argv[2]))
    sys.exit(main(sys.argv[1:]))
