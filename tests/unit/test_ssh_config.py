"""The cluster file of ``cellfleet up``: parsing, defaults, errors; the ssh commands it makes."""

from __future__ import annotations

import json
import re
import textwrap

import pytest

from cellfleet.ssh_config import ConfigError, SSHOptions, load_config, parse_config
from cellfleet.ssh_launcher import (
    _cli_arguments,
    _host_from_dict,
    _start_request,
    ssh_argv,
    ssh_failure,
)

FULL = textwrap.dedent("""
    cluster_name: lab
    ssh: {user: alice, key: ~/.ssh/lab, port: 2222, options: {StrictHostKeyChecking: yes}}
    python: /opt/venv/bin/python
    env: {CELLFLEET_TMPDIR: /scratch/cf}
    head:
      host: head.example
      node_ip: 10.0.0.1
      port: 7000
      num_cpus: 4
      resources: {big_disk: 1}
      object_store_memory: 200000000
    workers:
      - 10.0.0.2
      - host: 10.0.0.3
        ssh: {user: bob}
        python: /usr/bin/python3
        env: {EXTRA: "1"}
        num_gpus: 2
""")


def parse(text: str):
    return parse_config(textwrap.dedent(text), source="hosts.yaml")


def error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return str(info.value)


def test_a_full_file_with_defaults_and_overrides() -> None:
    spec = parse_config(FULL, default_name="ignored")
    assert spec.name == "lab" and spec.port == 7000
    assert spec.head_address == "10.0.0.1:7000"
    head, plain, bob = spec.hosts
    assert head.host == "head.example" and head.num_cpus == 4
    assert head.resources == {"big_disk": 1.0} and head.object_store_memory == 200_000_000
    assert plain.host == plain.node_ip == "10.0.0.2"
    assert plain.ssh == SSHOptions(user="alice", key="~/.ssh/lab", port=2222,
                                   options=(("StrictHostKeyChecking", "yes"),))
    assert plain.python == "/opt/venv/bin/python" and plain.num_cpus is None
    assert bob.ssh.user == "bob" and bob.ssh.port == 2222 and bob.ssh.key == "~/.ssh/lab"
    assert bob.python == "/usr/bin/python3" and bob.num_gpus == 2
    assert dict(bob.env) == {"CELLFLEET_TMPDIR": "/scratch/cf", "EXTRA": "1"}
    assert bob.label == "bob@10.0.0.3:2222"


def test_the_smallest_file_and_the_name_from_the_file(tmp_path) -> None:
    path = tmp_path / "my-hosts.yaml"
    path.write_text("head: 127.0.0.1\n")
    spec = load_config(path)
    assert spec.name == "my-hosts" and spec.port == 6379 and spec.workers == ()
    assert spec.head.python == "python3" and spec.head.ssh == SSHOptions()


def test_an_unreadable_file_names_its_path(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read the cluster file .*missing.yaml"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(("text", "expected"), [
    ("head: [unclosed\n", r"not valid YAML at line 2"),
    ("- a\n- b\n", r"must be a mapping with at least 'head"),
    ("workers: [a]\n", r"has no 'head' field: add 'head: \{host: HOSTNAME\}'"),
    ("head: a\nworker: [b]\n", r"unknown field\(s\) worker: the fields are cluster_name, env"),
    ("head: {hostname: a}\n", r"head has unknown field\(s\) hostname"),
    ("head: {num_cpus: 2}\n", r"head has no 'host' field"),
    ("head: a\nworkers: b\n", r"workers must be a list of hosts"),
    ("head: a\nworkers: [{host: b, num_cpus: two}]\n",
     r"workers\[0\].num_cpus must be a whole number of at least 0, got 'two'"),
    ("head: {host: a, num_cpus: -1}\n", r"head.num_cpus must be a whole number"),
    ("head: {host: a, resources: {CPU: 2}}\n", r"head.resources names CPU: use num_cpus"),
    ("head: {host: a, resources: {x: -1}}\n", r"head.resources.x must be a number of at least 0"),
    ("head: {host: a, resources: [x]}\n", r"head.resources must be a mapping"),
    ("head: {host: a, object_store_memory: 1000}\n", r"at least 1048576 \(1 MiB\)"),
    ("head: {host: a, port: 70000}\n", r"head.port must be a port number from 1 to 65535"),
    ("head: a\nssh: {port: ssh}\n", r"ssh.port must be a port number"),
    ("head: a\nssh: {keyfile: x}\n", r"ssh has unknown field\(s\) keyfile"),
    ("head: a\nssh: {connect_timeout: 0}\n", r"ssh.connect_timeout must be a number of seconds"),
    ("head: a\nssh: {options: [x]}\n", r"ssh.options must be a mapping"),
    ("head: a\nenv: {1X: y}\n", r"env has '1X', which is not an environment variable name"),
    ("head: a\nenv: {X: [1]}\n", r"env.X must be a string or a number"),
    ("head: {host: ''}\n", r"head.host must be a non-empty string"),
    ("head: 5\n", r"head must be a host name or a mapping"),
    ("head: a\nworkers: [b, {host: c, node_ip: b}]\n",
     r"workers\[1\] listens on b, as workers\[0\] does: give each node its own host"),
    ("head: a\nworkers: [a]\n", r"workers\[0\] listens on a, as head does"),
    ("cluster_name: 'a b'\nhead: a\n", r"cluster_name must be a word"),
])
def test_malformed_files_name_the_field_and_the_fix(text: str, expected: str) -> None:
    message = error(text)
    assert message.startswith("hosts.yaml")
    assert re.search(expected, message), message


def test_ssh_command_carries_options_but_never_the_token() -> None:
    spec = parse_config(FULL)
    head, worker = spec.head, spec.workers[0]
    argv = ssh_argv(worker, "start")
    assert argv[:4] == ["ssh", "-T", "-o", "BatchMode=yes"]
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-l") + 1] == "alice"
    assert argv[argv.index("-i") + 1].endswith("/.ssh/lab")
    assert "StrictHostKeyChecking=yes" in argv
    assert argv[-3:] == ["--", "10.0.0.2",
                         "/opt/venv/bin/python -m cellfleet.ssh_launcher remote start"]
    request = _start_request(spec, worker, token="s3cret")
    assert request["token"] == "s3cret" and request["address"] == "10.0.0.1:7000"
    assert not any("s3cret" in part for part in argv)
    head_request = _start_request(spec, head, token=None)
    assert "token" not in head_request and head_request["port"] == 7000
    assert _cli_arguments(head_request, None) == [
        "start", "--host", "10.0.0.1", "--head", "--port", "7000", "--num-cpus", "4",
        "--object-store-memory", "200000000", "--resources", '{"big_disk": 1.0}']
    assert _cli_arguments(request, "/tmp/t") == [
        "start", "--host", "10.0.0.2", "--address", "10.0.0.1:7000", "--token-file", "/tmp/t"]


@pytest.mark.parametrize(("code", "stderr", "expected"), [
    (255, "root@h: Permission denied (publickey).", "refused the key ~/.ssh/lab"),
    (255, "ssh: connect to host h port 22: Connection refused", "cannot reach alice@h:2222"),
    (255, "ssh: Could not resolve hostname nope", "is the host up"),
    (255, "Host key verification failed.", "add it to known_hosts"),
    (1, "ModuleNotFoundError: No module named 'cellfleet'", "cellfleet is not installed for"),
    (127, "bash: /opt/venv/bin/python: No such file or directory", "there is no /opt/venv"),
    (2, "cellfleet start: the cluster refused", "alice@h:2222: cellfleet start: the cluster"),
])
def test_ssh_failures_say_what_to_do(code: int, stderr: str, expected: str) -> None:
    host = parse_config(FULL).workers[0]
    host = type(host)(**{**host.__dict__, "host": "h"})
    assert expected in ssh_failure(host, code, stderr)


def test_a_host_survives_the_state_file() -> None:
    from dataclasses import asdict

    for host in parse_config(FULL).hosts:
        assert _host_from_dict(json.loads(json.dumps(asdict(host)))) == host
