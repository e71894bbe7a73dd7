"""A driver sees what its own job's tasks print, not what other jobs on the cluster print."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from helpers import free_port

pytestmark = pytest.mark.integration

DRIVER = textwrap.dedent("""
    import sys
    import cellfleet

    @cellfleet.remote
    def speak(word):
        print(word, flush=True)
        return word

    cellfleet.init(address=sys.argv[1])
    print("READY", flush=True)
    if sys.argv[2] == "wait":
        sys.stdin.readline()
    cellfleet.get(speak.remote(sys.argv[3]), timeout=60)
    cellfleet.shutdown()
""")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cellfleet.cli", *args], capture_output=True,
                          text=True, timeout=60)


def test_each_driver_gets_only_its_own_jobs_task_output() -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    first = None
    try:
        assert _cli("start", "--head", "--port", str(port), "--num-cpus", "1").returncode == 0
        first = subprocess.Popen([sys.executable, "-c", DRIVER, address, "wait", "from-first"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        assert first.stdout.readline().strip() == "READY", first.stderr.read()
        second = subprocess.run([sys.executable, "-c", DRIVER, address, "go", "from-second"],
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stderr
        assert "from-second" in second.stdout and "from-first" not in second.stdout
        out, err = first.communicate("\n", timeout=120)
        assert first.returncode == 0, err
        assert "from-first" in out
        assert "from-second" not in out, "another job's task output reached this driver"
    finally:
        if first is not None and first.poll() is None:
            first.kill()
            first.wait()
        _cli("stop", "--all")
