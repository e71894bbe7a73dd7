"""The public surface of ``cellfleet`` is deliberate: this test pins it."""

from __future__ import annotations

import subprocess
import sys

import cellfleet

PUBLIC = [
    "ActorClass", "ActorHandle", "ObjectID", "ObjectRef", "available_resources", "cancel",
    "cluster_resources", "exceptions", "get", "get_actor", "get_gpu_ids",
    "get_runtime_context", "init", "is_initialized", "kill", "method", "nodes", "put",
    "remote", "shutdown", "wait",
]


def test_all_is_pinned() -> None:
    assert sorted(cellfleet.__all__) == sorted(PUBLIC)


def test_every_public_name_resolves() -> None:
    for name in cellfleet.__all__:
        assert getattr(cellfleet, name) is not None, name
    from cellfleet import ObjectRef, exceptions  # noqa: F401


def test_unknown_names_raise_attribute_error() -> None:
    try:
        cellfleet.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_runtime_processes_do_not_import_the_driver_api() -> None:
    code = ("import sys, cellfleet.gcs.server, cellfleet.raylet.server; "
            "print('cellfleet.api' in sys.modules, 'cellfleet.actor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]
