"""What a new user meets first, checked without a kernel process: the kernelspec's logos,
option typos, tracebacks without the runtime's frames, output prefixes and small words."""

from __future__ import annotations

import os
import struct
import sys
import threading
import traceback
from pathlib import Path

import pytest
import tomllib
from IPython.core.error import UsageError
from jupyter_client.kernelspec import KernelSpecManager

from cellfleet._serialization import serialize
from cellfleet.kernel.cluster import ClusterInfo
from cellfleet.kernel.install import LOGOS, SPEC_DIR, main
from cellfleet.kernel.magics import CellfleetMagics, split_line_options
from cellfleet.kernel.remote import parse_options
from cellfleet.kernel.tracebacks import RemoteCellInterrupted, user_traceback
from cellfleet.worker import executor
from cellfleet.worker.output import _prefix

ROOT = Path(__file__).resolve().parents[2]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is no PNG"
    return struct.unpack(">II", data[16:24])


def test_kernelspec_ships_its_logos(tmp_path) -> None:
    spec_dir = Path(SPEC_DIR)
    assert _png_size(spec_dir / "logo-32x32.png") == (32, 32)
    assert _png_size(spec_dir / "logo-64x64.png") == (64, 64)
    assert (spec_dir / "logo-svg.svg").read_text().lstrip().startswith("<svg")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    shipped = pyproject["tool"]["setuptools"]["data-files"]["share/jupyter/kernels/cellfleet"]
    assert {f"kernel/kernelspec/{logo}" for logo in LOGOS} <= set(shipped)
    assert main(["install", "--prefix", str(tmp_path)]) == 0
    kernels = tmp_path / "share" / "jupyter" / "kernels"
    resource_dir = KernelSpecManager(kernel_dirs=[str(kernels)]).get_kernel_spec(
        "cellfleet").resource_dir
    for logo in LOGOS:
        assert (Path(resource_dir) / logo).read_bytes() == (spec_dir / logo).read_bytes()


class _Shell:
    """Enough of a shell to build the magics (their parsers) without a kernel."""

    def __init__(self) -> None:
        self.configurables: list = []
        self.user_ns: dict = {}


@pytest.fixture(scope="module")
def remote_magic():
    return CellfleetMagics(_Shell(), kernel=None).remote


def test_a_typo_gets_the_closest_option_and_the_list(remote_magic) -> None:
    with pytest.raises(UsageError) as error:
        parse_options(remote_magic, "--nowiat", "%%remote")
    text = str(error.value)
    assert "did you mean --nowait?" in text
    assert "'%%remote?'" in text and "--num-cpus" in text and "--all-nodes" in text


def test_an_abbreviation_is_refused(remote_magic) -> None:
    with pytest.raises(UsageError, match="did you mean --num-cpus"):
        parse_options(remote_magic, "--num-cpu 1", "%%remote")
    assert parse_options(remote_magic, "--num-cpus 1", "%%remote").num_cpus == 1.0


def test_line_magic_typos_are_caught_too() -> None:
    with pytest.raises(UsageError, match="did you mean --nowait"):
        split_line_options("--nowiat f(x)")
    with pytest.raises(UsageError, match="did you mean --num-cpus"):
        split_line_options("--num-cpu 2 f(x)")


# The worker's way of storing a return value, compiled as if it were the executor's code.
_STORE_RETURN = """
def store(value):
    try:
        return serialize(value)
    except Exception as exc:
        raise TypeError("Could not serialize the return value of <lambda>() (lock): "
                        f"{exc}") from exc
"""


def _lock_traceback() -> str:
    """What a worker formats when a return value cannot be pickled: executor, serialization
    and cloudpickle frames, then the error the user should read."""
    namespace = {"serialize": serialize}
    exec(compile(_STORE_RETURN, executor.__file__, "exec"), namespace)

    def task() -> None:
        namespace["store"](threading.Lock())

    try:
        task()
    except TypeError as exc:
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def test_a_serialization_failure_shows_no_runtime_frames() -> None:
    text = _lock_traceback()
    assert "_serialization.py" in text and "cloudpickle" in text  # what the worker sends
    shown = user_traceback(text)
    assert "_serialization.py" not in shown and "cloudpickle" not in shown
    assert "direct cause" not in shown
    assert shown.rstrip().endswith("Could not serialize the return value of <lambda>() (lock): "
                                   "cannot pickle '_thread.lock' object")
    assert "in task" in shown and "executor.py" not in shown  # the user's frame stays


def test_a_users_own_chain_is_kept() -> None:
    def inner() -> None:
        raise KeyError("k")

    try:
        try:
            inner()
        except KeyError as exc:
            raise ValueError("v") from exc
    except ValueError as exc:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    shown = user_traceback(text)
    assert shown.count("Traceback (most recent call last):") == 2
    assert "direct cause" in shown and "KeyError: 'k'" in shown and "in inner" in shown
    assert shown.rstrip().endswith("ValueError: v")


def test_an_interrupted_remote_cell_shows_the_cell_not_the_plumbing() -> None:
    error = RemoteCellInterrupted("%%remote\nimport time\nfor k in range(120):\n    "
                                  "time.sleep(1)\n", 7, "cell-7")
    assert isinstance(error, KeyboardInterrupt) and type(error).__name__ == "KeyboardInterrupt"
    text = "\n".join(error._render_traceback_())
    assert "Cell In[7]" in text and "for k in range(120):" in text and "cell-7" in text
    assert "run_cell_magic" not in text


class _Task:
    def __init__(self, name: str, actor_id: bytes = b"", method: str = "") -> None:
        self.name, self.actor_id, self.method = name, actor_id, method


def test_actor_output_is_prefixed_with_the_class_as_ray_does() -> None:
    assert _prefix(_Task("Counter.inc", b"a" * 16, "inc")) == "Counter"
    assert _prefix(_Task("Counter.__init__", b"a" * 16)) == "Counter"
    assert _prefix(_Task("square")) == "square"
    assert _prefix(_Task("cell-3", b"a" * 16, "run")) == "cell-3"  # a name given by the user


def test_cluster_summary_counts_in_words() -> None:
    node = {"node_id": bytes(16), "raylet_address": "127.0.0.1:1", "alive": True,
            "resources": {"CPU": 2.0}, "available": {"CPU": 2.0},
            "store": {"used": 0, "capacity": 2**30, "num_objects": 1}}
    info = ClusterInfo(address="127.0.0.1:2", mode="local", session_dir=None,
                       node_id=bytes(16).hex(), job_id=1, nodes=[node], dashboard_url="/")
    text = repr(info) + info._repr_html_()
    assert "(1 object)" in text and "1 objects" not in text
    assert "1 of 1 node alive" in text
    assert "node(s)" not in text


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX paths")
def test_traceback_filter_knows_other_nodes_installs() -> None:
    text = ("Traceback (most recent call last):\n"
            '  File "/opt/venv/lib/python3.11/site-packages/cellfleet/worker/executor.py", '
            "line 3, in execute\n    x()\n"
            f'  File "{os.path.abspath(__file__)}", line 9, in task\n    boom()\n'
            "RuntimeError: boom\n")
    shown = user_traceback(text)
    assert "executor.py" not in shown and "in task" in shown
    assert shown.rstrip().endswith("RuntimeError: boom")
