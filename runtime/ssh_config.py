"""The cluster file of ``cellfleet up`` / ``cellfleet down``: parsed and checked, no I/O.

A small YAML file names the head host, the worker hosts and how to reach them::

    cluster_name: lab           # optional (default: the file's name without .yaml)
    ssh:                        # defaults for every host; each host may override them
      user: alice               # default: this user
      key: ~/.ssh/id_ed25519    # default: ssh's own choice
      port: 22
      connect_timeout: 10       # seconds
      known_hosts: ~/.ssh/known_hosts
      config_file: none         # ssh -F (default: ssh's own ~/.ssh/config)
      options: {StrictHostKeyChecking: accept-new}   # more ssh -o NAME=VALUE
    python: /opt/venv/bin/python  # the interpreter with cellfleet installed (default: python3)
    env: {CELLFLEET_TMPDIR: /scratch/cellfleet}      # set on every host for the node
    head:
      host: 10.0.0.1            # ssh destination
      node_ip: 10.0.0.1         # the address the node listens on (default: host)
      port: 6379                # the GCS port
      num_cpus: 8
      num_gpus: 0
      resources: {big_disk: 1}
      object_store_memory: 2000000000
    workers:
      - host: 10.0.0.2
        num_cpus: 16
      - 10.0.0.3                # a bare host takes every default

Every error names the field (``workers[1].num_cpus``) and says what to write instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ClusterSpec", "ConfigError", "HostSpec", "SSHOptions", "load_config",
           "parse_config"]

DEFAULT_GCS_PORT = 6379
DEFAULT_PYTHON = "python3"
DEFAULT_CONNECT_TIMEOUT_S = 10.0
MIN_STORE_BYTES = 1 << 20

_SSH_KEYS = {"user", "key", "port", "connect_timeout", "known_hosts", "config_file", "options"}
_NODE_KEYS = {"num_cpus", "num_gpus", "resources", "object_store_memory"}
_HOST_KEYS = {"host", "node_ip", "ssh", "python", "env"} | _NODE_KEYS
_TOP_KEYS = {"cluster_name", "ssh", "python", "env", "head", "workers"}


class ConfigError(ValueError):
    """The cluster file is not usable; the message names the field and the fix."""


@dataclass(frozen=True)
class SSHOptions:
    """How to reach one host (None: ssh's own default)."""

    user: str | None = None
    key: str | None = None
    port: int = 22
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S
    known_hosts: str | None = None
    config_file: str | None = None
    options: tuple[tuple[str, str], ...] = ()

    def destination(self, host: str) -> str:
        return f"{self.user}@{host}" if self.user else host


@dataclass(frozen=True)
class HostSpec:
    """One node to start: where, how to reach it, and what it offers."""

    host: str
    node_ip: str
    ssh: SSHOptions
    python: str = DEFAULT_PYTHON
    env: tuple[tuple[str, str], ...] = ()
    num_cpus: int | None = None
    num_gpus: int | None = None
    resources: dict[str, float] = field(default_factory=dict)
    object_store_memory: int | None = None

    @property
    def label(self) -> str:
        """How reports name this host (its ssh destination and port)."""
        where = self.ssh.destination(self.host)
        return where if self.ssh.port == 22 else f"{where}:{self.ssh.port}"


@dataclass(frozen=True)
class ClusterSpec:
    """A parsed cluster file: the head (with its GCS port) and the workers."""

    name: str
    head: HostSpec
    port: int
    workers: tuple[HostSpec, ...] = ()

    @property
    def head_address(self) -> str:
        """The GCS address workers join."""
        return f"{self.head.node_ip}:{self.port}"

    @property
    def hosts(self) -> tuple[HostSpec, ...]:
        return (self.head, *self.workers)


def load_config(path: str | Path) -> ClusterSpec:
    """Read and check a cluster file; ConfigError (with the path) when it cannot be used."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the cluster file {path}: {exc.strerror}") from None
    return parse_config(text, source=str(path), default_name=_stem(path))


def _stem(path: Path) -> str:
    return path.name.removesuffix(".yaml").removesuffix(".yml") or "cluster"


def parse_config(text: str, source: str = "hosts.yaml",
                 default_name: str = "cluster") -> ClusterSpec:
    """Parse a cluster file's text; every problem raises ConfigError naming the field."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source} is not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a mapping with at least 'head: {{host: ...}}', "
                          f"got {type(data).__name__}")
    return _Parser(source).cluster(data, default_name)


class _Parser:
    """Turns the YAML mapping into specs; ``source`` prefixes every message."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, what: str) -> ConfigError:
        return ConfigError(f"{self.source}: {where} {what}")

    def check_keys(self, where: str, data: dict, allowed: set[str]) -> None:
        unknown = sorted(str(k) for k in data if k not in allowed)
        if unknown:
            raise self.fail(where or "the file", f"has unknown field(s) {', '.join(unknown)}: "
                            f"the fields are {', '.join(sorted(allowed))}")

    def cluster(self, data: dict, default_name: str) -> ClusterSpec:
        self.check_keys("", data, _TOP_KEYS)
        name = data.get("cluster_name", default_name)
        if not isinstance(name, str) or not name or not all(
                c.isalnum() or c in "-_." for c in name) or name.startswith("."):
            raise self.fail("cluster_name", f"must be a word of letters, digits, '-', '_' or "
                            f"'.', got {name!r}")
        if "head" not in data:
            raise self.fail("the file", "has no 'head' field: add 'head: {host: HOSTNAME}'")
        ssh = self.ssh_options("ssh", data.get("ssh") or {}, SSHOptions())
        python = self.string("python", data.get("python", DEFAULT_PYTHON))
        env = self.env("env", data.get("env") or {}, ())
        defaults = (ssh, python, env)
        head_data = data["head"]
        port = DEFAULT_GCS_PORT
        if isinstance(head_data, dict) and "port" in head_data:
            head_data = dict(head_data)
            port = self.port("head.port", head_data.pop("port"))
        head = self.host("head", head_data, defaults)
        workers_data = data.get("workers") or []
        if not isinstance(workers_data, list):
            raise self.fail("workers", "must be a list of hosts (each '- HOST' or "
                            "'- {host: HOST, ...}')")
        workers = tuple(self.host(f"workers[{i}]", w, defaults)
                        for i, w in enumerate(workers_data))
        seen: dict[str, str] = {head.node_ip: "head"}
        for i, worker in enumerate(workers):
            if worker.node_ip in seen:
                raise self.fail(f"workers[{i}]", f"listens on {worker.node_ip}, as "
                                f"{seen[worker.node_ip]} does: give each node its own "
                                "host or node_ip")
            seen[worker.node_ip] = f"workers[{i}]"
        return ClusterSpec(name=name, head=head, port=port, workers=workers)

    def host(self, where: str, data: Any,
             defaults: tuple[SSHOptions, str, tuple[tuple[str, str], ...]]) -> HostSpec:
        if isinstance(data, str):
            data = {"host": data}
        if not isinstance(data, dict):
            raise self.fail(where, f"must be a host name or a mapping with 'host:', got "
                            f"{data!r}")
        self.check_keys(where, data, _HOST_KEYS)
        if "host" not in data:
            raise self.fail(where, "has no 'host' field: add 'host: HOSTNAME' (the ssh "
                            "destination)")
        ssh, python, env = defaults
        host = self.string(f"{where}.host", data["host"])
        return HostSpec(
            host=host,
            node_ip=self.string(f"{where}.node_ip", data.get("node_ip", host)),
            ssh=self.ssh_options(f"{where}.ssh", data.get("ssh") or {}, ssh),
            python=self.string(f"{where}.python", data.get("python", python)),
            env=self.env(f"{where}.env", data.get("env") or {}, env),
            num_cpus=self.count(f"{where}.num_cpus", data.get("num_cpus")),
            num_gpus=self.count(f"{where}.num_gpus", data.get("num_gpus")),
            resources=self.resources(f"{where}.resources", data.get("resources") or {}),
            object_store_memory=self.store_bytes(f"{where}.object_store_memory",
                                                 data.get("object_store_memory")),
        )

    def ssh_options(self, where: str, data: Any, base: SSHOptions) -> SSHOptions:
        if not isinstance(data, dict):
            raise self.fail(where, "must be a mapping (user, key, port, connect_timeout, "
                            "known_hosts, config_file, options)")
        self.check_keys(where, data, _SSH_KEYS)
        options = dict(base.options)
        raw_options = data.get("options") or {}
        if not isinstance(raw_options, dict):
            raise self.fail(f"{where}.options", "must be a mapping of ssh option names to "
                            "values, e.g. {StrictHostKeyChecking: accept-new}")
        for name, value in raw_options.items():
            options[self.word(f"{where}.options", name)] = self.scalar(
                f"{where}.options.{name}", value)
        timeout = data.get("connect_timeout", base.connect_timeout)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
                0 < timeout <= 600):
            raise self.fail(f"{where}.connect_timeout", f"must be a number of seconds "
                            f"between 0 and 600, got {timeout!r}")
        return SSHOptions(
            user=self.optional_string(f"{where}.user", data.get("user", base.user)),
            key=self.optional_string(f"{where}.key", data.get("key", base.key)),
            port=self.port(f"{where}.port", data.get("port", base.port)),
            connect_timeout=float(timeout),
            known_hosts=self.optional_string(f"{where}.known_hosts",
                                             data.get("known_hosts", base.known_hosts)),
            config_file=self.optional_string(f"{where}.config_file",
                                             data.get("config_file", base.config_file)),
            options=tuple(sorted(options.items())),
        )

    def env(self, where: str, data: Any,
            base: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        if not isinstance(data, dict):
            raise self.fail(where, "must be a mapping of variable names to values")
        out = dict(base)
        for name, value in data.items():
            if not isinstance(name, str) or not name.replace("_", "a").isalnum() or \
                    name[0].isdigit():
                raise self.fail(where, f"has {name!r}, which is not an environment "
                                "variable name (letters, digits and '_')")
            out[name] = self.scalar(f"{where}.{name}", value)
        return tuple(sorted(out.items()))

    def resources(self, where: str, data: Any) -> dict[str, float]:
        if not isinstance(data, dict):
            raise self.fail(where, "must be a mapping of resource names to amounts, e.g. "
                            "{big_disk: 1}")
        out = {}
        for name, amount in data.items():
            if name in ("CPU", "GPU"):
                raise self.fail(where, f"names {name}: use num_{name.lower()}s instead")
            if not isinstance(name, str) or not name:
                raise self.fail(where, f"has the name {name!r}: resource names are strings")
            if isinstance(amount, bool) or not isinstance(amount, (int, float)) or \
                    amount < 0 or not math.isfinite(amount):
                raise self.fail(f"{where}.{name}", f"must be a number of at least 0, got "
                                f"{amount!r}")
            out[name] = float(amount)
        return out

    def count(self, where: str, value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(where, f"must be a whole number of at least 0, got {value!r}")
        return value

    def store_bytes(self, where: str, value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < MIN_STORE_BYTES:
            raise self.fail(where, f"must be a number of bytes of at least {MIN_STORE_BYTES} "
                            f"(1 MiB), got {value!r}")
        return value

    def port(self, where: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
            raise self.fail(where, f"must be a port number from 1 to 65535, got {value!r}")
        return value

    def string(self, where: str, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(where, f"must be a non-empty string, got {value!r}")
        return value.strip()

    def optional_string(self, where: str, value: Any) -> str | None:
        return None if value is None else self.string(where, value)

    def word(self, where: str, value: Any) -> str:
        if not isinstance(value, str) or not value.isalnum():
            raise self.fail(where, f"has {value!r}, which is not an ssh option name")
        return value

    def scalar(self, where: str, value: Any) -> str:
        if isinstance(value, bool):
            return "yes" if value else "no"
        if not isinstance(value, (str, int, float)):
            raise self.fail(where, f"must be a string or a number, got {value!r}")
        return str(value)
