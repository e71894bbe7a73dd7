"""Code from a module the workers cannot import travels by value: tasks, actor classes with
their methods, static and class methods."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest

import cellfleet

pytestmark = pytest.mark.integration

MODULE = textwrap.dedent("""
    import cellfleet

    SCALE = 3

    @cellfleet.remote
    class Counter:
        start = 10

        def __init__(self):
            self.n = self.start

        def inc(self):
            self.n += self.twice(SCALE)
            return self.n

        @staticmethod
        def twice(x):
            return 2 * x

        @classmethod
        def named(cls):
            return cls.__name__

    @cellfleet.remote
    def scaled(x):
        return SCALE * x
""")


def test_an_actor_class_from_a_module_only_the_driver_can_import(cluster, tmp_path: Path,
                                                                 monkeypatch) -> None:
    (tmp_path / "driver_only_module.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("driver_only_module")
    try:
        counter = module.Counter.remote()
        assert cellfleet.get(counter.inc.remote(), timeout=60) == 16
        assert cellfleet.get(module.scaled.remote(5), timeout=60) == 15
        assert module.Counter.start == 10 and module.Counter.twice(4) == 8
        assert module.Counter.named() == "Counter"
        with pytest.raises(AttributeError, match="is an actor method"):
            module.Counter.inc  # noqa: B018
        cellfleet.kill(counter)
    finally:
        sys.modules.pop("driver_only_module", None)
