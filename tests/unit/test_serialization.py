"""Tests for cellfleet._serialization: code pickled by value keeps its file and source lines."""

from __future__ import annotations

import linecache
import os
import pickle
import subprocess
import sys
import textwrap

from cellfleet._serialization import deserialize_inline, dumps_function, serialize

CELL = "/tmp/ipykernel_4242/cell-in-memory-only.py"
CELL_SOURCE = textwrap.dedent("""\
    def cell_total(n):
        def inner(k):
            return [1 / (k - j) for j in range(n)]
        return inner(n - 1)
""")


def cell_function():
    """A function as a notebook cell makes it: its source lives only in ``linecache``."""
    linecache.cache[CELL] = (len(CELL_SOURCE), None, CELL_SOURCE.splitlines(True), CELL)
    namespace: dict = {}
    exec(compile(CELL_SOURCE, CELL, "exec"), namespace)
    return namespace["cell_total"]


def file_function(n):
    def inner(k):
        return [1 / (k - j) for j in range(n)]
    return inner(n - 1)


def traceback_in_fresh_process(blob: bytes) -> str:
    """Unpickle ``blob`` (a function) in a new interpreter, call it with 3, return the
    formatted traceback it raises."""
    code = textwrap.dedent("""\
        import pickle, sys, traceback
        fn = pickle.loads(sys.stdin.buffer.read())
        try:
            fn(3)
        except ZeroDivisionError:
            sys.stdout.write(traceback.format_exc())
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run([sys.executable, "-c", code], input=blob, env=env,
                          capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def test_code_by_value_keeps_its_file_name_at_every_level():
    fn = pickle.loads(dumps_function(cell_function()))
    inner = next(c for c in fn.__code__.co_consts if hasattr(c, "co_filename"))
    assert fn.__code__.co_filename == CELL
    assert inner.co_filename == CELL
    assert all(c.co_filename == CELL for c in inner.co_consts if hasattr(c, "co_filename"))


def test_traceback_of_a_cell_function_shows_its_lines_in_another_process():
    text = traceback_in_fresh_process(dumps_function(cell_function()))
    assert f'File "{CELL}", line 4, in cell_total' in text
    assert "return inner(n - 1)" in text
    assert f'File "{CELL}", line 3, in inner' in text
    assert "return [1 / (k - j) for j in range(n)]" in text


def test_traceback_of_a_function_in_a_file_names_the_file_and_line():
    from cloudpickle import register_pickle_by_value, unregister_pickle_by_value

    module = sys.modules[__name__]
    register_pickle_by_value(module)
    try:
        blob = serialize(file_function).pickled
    finally:
        unregister_pickle_by_value(module)
    assert b"test_serialization" in blob  # by value: the child cannot import this module
    text = traceback_in_fresh_process(blob)
    line = file_function.__code__.co_firstlineno + 2
    assert f'File "{__file__}", line {line}, in inner' in text
    assert "return [1 / (k - j) for j in range(n)]" in text


def test_source_already_known_to_the_receiver_is_not_replaced():
    fn = cell_function()
    blob = dumps_function(fn)
    mine = ["# the receiver's own lines\n"]
    linecache.cache[CELL] = (len(mine[0]), None, mine, CELL)
    try:
        _, value = deserialize_inline(serialize(fn).inline())
        assert value.__code__.co_filename == CELL
        pickle.loads(blob)
        assert linecache.cache[CELL][2] is mine
    finally:
        linecache.cache.pop(CELL, None)


def test_code_from_a_file_on_disk_does_not_carry_its_source():
    linecache.getlines(__file__)  # cached from disk: the receiver reads the file itself
    blob = dumps_function(lambda: 1)
    assert b"def test_code_from_a_file_on_disk" not in blob
    assert pickle.loads(blob).__code__.co_filename == __file__
