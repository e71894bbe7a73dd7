"""Tests for cellfleet._shm.SharedArena."""

from __future__ import annotations

import gc
import glob
import os
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from cellfleet._shm import SHM_DIR, SharedArena

PREFIX = f"cftest-shm-{os.getpid()}-"
CAP = 1 << 20
PAGE = 4096


def wait_for(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``pred`` (collecting garbage in between) until true or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        if pred():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)


def run_child(code: str) -> str:
    """Run ``code`` in a fresh interpreter that can import cellfleet; return its stdout."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=False, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="module", autouse=True)
def _no_leftover_files() -> Iterator[None]:
    yield
    leftovers = glob.glob(os.path.join(SHM_DIR, PREFIX + "*"))
    for path in leftovers:
        os.unlink(path)
    assert not leftovers, f"tests left files behind: {leftovers}"


@pytest.fixture
def name() -> Iterator[str]:
    n = PREFIX + uuid.uuid4().hex
    yield n
    try:
        os.unlink(os.path.join(SHM_DIR, n))
    except FileNotFoundError:
        pass


@pytest.fixture
def arena(name: str) -> Iterator[SharedArena]:
    a = SharedArena.create(name, CAP)
    yield a
    a.close()


# ---------------------------------------------------------------------- lifecycle


def test_create_file_mode_size_and_no_prefault(arena: SharedArena) -> None:
    st_ = os.stat(os.path.join(SHM_DIR, arena.name))
    assert stat.S_IMODE(st_.st_mode) == 0o600
    assert st_.st_size == CAP
    assert st_.st_blocks == 0, "create must not touch the pages"
    assert arena.capacity == CAP
    assert not arena.closed


def test_create_is_exclusive(arena: SharedArena) -> None:
    with pytest.raises(FileExistsError):
        SharedArena.create(arena.name, CAP)


def test_create_invalid_arguments(name: str) -> None:
    with pytest.raises(ValueError):
        SharedArena.create(name, 0)
    assert not os.path.exists(os.path.join(SHM_DIR, name))
    for bad in ("", "a/b", ".", ".."):
        with pytest.raises(ValueError):
            SharedArena.create(bad, CAP)


def test_attach_missing_raises(name: str) -> None:
    with pytest.raises(FileNotFoundError):
        SharedArena.attach(name)


def test_unlink_removes_file(name: str) -> None:
    a = SharedArena.create(name, CAP)
    a.write(0, [b"still here"])
    view = a.read_view(0, 10)
    a.unlink()
    assert not os.path.exists(os.path.join(SHM_DIR, name))
    assert bytes(view) == b"still here"  # mappings outlive the name
    a.close()
    with pytest.raises(FileNotFoundError):
        SharedArena.attach(name)


def test_close_is_idempotent_and_disables_io(arena: SharedArena) -> None:
    arena.close()
    arena.close()
    assert arena.closed
    with pytest.raises(ValueError):
        arena.write(0, [b"x"])
    with pytest.raises(ValueError):
        arena.read_view(0, 1)
    with pytest.raises(ValueError):
        arena.writable_view(0, 1)


def test_close_releases_fds(name: str) -> None:
    before = open_fds()
    a = SharedArena.create(name, CAP)
    b = SharedArena.attach(name)
    b.close()
    a.close()
    assert open_fds() == before


def test_context_manager(name: str) -> None:
    with SharedArena.create(name, CAP) as a:
        a.write(0, [b"x"])
    assert a.closed


# ---------------------------------------------------------------------- data movement


def test_attach_same_process_sees_writes(arena: SharedArena) -> None:
    other = SharedArena.attach(arena.name)
    try:
        assert other.capacity == CAP
        arena.write(PAGE, [b"hello ", b"world"])
        assert bytes(other.read_view(PAGE, 11)) == b"hello world"
        other.write(2 * PAGE, [b"back"])
        assert bytes(arena.read_view(2 * PAGE, 4)) == b"back"
    finally:
        other.close()


def test_child_process_sees_parent_writes_and_vice_versa(arena: SharedArena) -> None:
    payload = bytes(range(256)) * 64
    arena.write(3 * PAGE, [payload])
    out = run_child(f"""
        import hashlib
        from cellfleet._shm import SharedArena
        a = SharedArena.attach({arena.name!r})
        print(a.capacity, hashlib.sha256(a.read_view({3 * PAGE}, {len(payload)})).hexdigest())
        a.write({10 * PAGE}, [b"from child", bytearray(b"!")])
        a.close()
    """)
    import hashlib

    assert out.split() == [str(CAP), hashlib.sha256(payload).hexdigest()]
    assert bytes(arena.read_view(10 * PAGE, 11)) == b"from child!"


def test_child_creates_parent_attaches(name: str) -> None:
    run_child(f"""
        from cellfleet._shm import SharedArena
        a = SharedArena.create({name!r}, {CAP})
        a.write(0, [b"made by child"])
        a.close()
    """)
    a = SharedArena.attach(name)
    try:
        assert bytes(a.read_view(0, 13)) == b"made by child"
    finally:
        a.unlink()
        a.close()


def test_write_chunks_consecutively_from_various_buffers(arena: SharedArena) -> None:
    arr = np.arange(12, dtype=np.int32).reshape(3, 4)
    chunks = [b"ab", bytearray(b"cd"), memoryview(b"xxef")[2:], b"", arr, memoryview(arr)]
    arena.write(5, chunks)
    expected = b"abcdef" + arr.tobytes() * 2
    assert bytes(arena.read_view(5, len(expected))) == expected


def test_write_accepts_generator(arena: SharedArena) -> None:
    arena.write(0, (bytes([i]) * 3 for i in range(3)))
    assert bytes(arena.read_view(0, 9)) == b"\x00\x00\x00\x01\x01\x01\x02\x02\x02"


def test_write_out_of_bounds(arena: SharedArena) -> None:
    with pytest.raises(ValueError):
        arena.write(CAP - 3, [b"ab", b"cd"])
    with pytest.raises(ValueError):
        arena.write(-1, [b"a"])
    arena.write(CAP - 4, [b"ab", b"cd"])
    assert bytes(arena.read_view(CAP - 4, 4)) == b"abcd"


def test_write_rejects_non_contiguous(arena: SharedArena) -> None:
    arr = np.arange(16, dtype=np.uint8)[::2]
    with pytest.raises((BufferError, TypeError, ValueError)):
        arena.write(0, [arr])


def test_writable_view(arena: SharedArena) -> None:
    w = arena.writable_view(PAGE, 4)
    assert not w.readonly
    w[:] = b"wxyz"
    assert bytes(arena.read_view(PAGE, 4)) == b"wxyz"
    with pytest.raises(ValueError):
        arena.writable_view(CAP, 1)
    arena.close()  # an outstanding writable view does not make close() fail
    w[0:1] = b"W"
    assert bytes(w) == b"Wxyz"


# ---------------------------------------------------------------------- read views


def test_read_view_is_read_only(arena: SharedArena) -> None:
    arena.write(0, [b"abc"])
    v = arena.read_view(0, 3)
    assert v.readonly
    with pytest.raises(TypeError):
        v[0] = 1
    with pytest.raises(TypeError):
        v[0:2] = b"zz"
    assert bytes(v) == b"abc"


def test_read_view_is_zero_copy(arena: SharedArena) -> None:
    v = arena.read_view(2 * PAGE, 5)
    arena.write(2 * PAGE, [b"after"])
    assert bytes(v) == b"after"
    arena.writable_view(2 * PAGE, 1)[0] = ord("A")
    assert bytes(v) == b"After"


@pytest.mark.parametrize("offset", [0, 1, PAGE - 1, PAGE, 3 * PAGE + 123])
@pytest.mark.parametrize("size", [1, 100, PAGE, 2 * PAGE + 5])
def test_read_view_unaligned_offsets(arena: SharedArena, offset: int, size: int) -> None:
    data = os.urandom(size)
    arena.write(offset, [data])
    v = arena.read_view(offset, size)
    assert len(v) == size and v.nbytes == size and v.format == "B"
    assert bytes(v) == data


def test_read_view_out_of_bounds(arena: SharedArena) -> None:
    with pytest.raises(ValueError):
        arena.read_view(CAP - 1, 2)
    with pytest.raises(ValueError):
        arena.read_view(-1, 1)
    assert len(arena.read_view(CAP - 1, 1)) == 1
    assert len(arena.read_view(CAP, 0)) == 0


def test_numpy_over_read_view_is_read_only_and_shared(arena: SharedArena) -> None:
    src = np.arange(1000, dtype=np.float64)
    arena.write(PAGE, [src])
    arr = np.frombuffer(arena.read_view(PAGE, src.nbytes), dtype=np.float64)
    assert not arr.flags.writeable
    with pytest.raises(ValueError):
        arr[0] = 1.0
    with pytest.raises(ValueError):
        arr.flags.writeable = True
    np.testing.assert_array_equal(arr, src)
    arena.write(PAGE, [np.full(1000, 7.5)])
    assert (arr == 7.5).all()  # same memory, not a copy
    arena.writable_view(PAGE, 8)[:] = np.float64(-1.0).tobytes()
    assert arr[0] == -1.0


def test_zero_size_read(arena: SharedArena) -> None:
    calls: list[int] = []
    v = arena.read_view(PAGE, 0, on_release=lambda: calls.append(1))
    assert v.readonly and len(v) == 0 and bytes(v) == b""
    assert np.frombuffer(v, dtype=np.uint8).size == 0
    del v
    assert wait_for(lambda: calls == [1])


def test_on_release_fires_once_after_all_derived_objects_are_gone(arena: SharedArena) -> None:
    calls: list[int] = []
    arena.write(0, [np.arange(256, dtype=np.uint8)])
    view = arena.read_view(0, 256, on_release=lambda: calls.append(1))
    arr = np.frombuffer(view, dtype=np.uint8)
    sub = view[10:20]
    arr2 = arr[5:].reshape(-1, 1)
    del view
    gc.collect()
    assert calls == []
    del arr
    gc.collect()
    assert calls == []
    assert arr2[0, 0] == 5  # memory still valid
    del arr2
    gc.collect()
    assert calls == []
    assert bytes(sub) == bytes(range(10, 20))
    del sub
    assert wait_for(lambda: calls == [1])
    for _ in range(3):
        gc.collect()
    assert calls == [1]


def test_on_release_is_per_view(arena: SharedArena) -> None:
    released: list[str] = []
    a = arena.read_view(0, 16, on_release=lambda: released.append("a"))
    b = arena.read_view(0, 16, on_release=lambda: released.append("b"))
    c = arena.read_view(0, 16)  # no callback
    del b
    assert wait_for(lambda: released == ["b"])
    del c
    del a
    assert wait_for(lambda: sorted(released) == ["a", "b"])


def test_on_release_survives_reference_cycles(arena: SharedArena) -> None:
    calls: list[int] = []

    class Holder:
        pass

    h = Holder()
    h.self = h  # type: ignore[attr-defined]
    h.arr = np.frombuffer(  # type: ignore[attr-defined]
        arena.read_view(0, 64, on_release=lambda: calls.append(1)), dtype=np.uint8)
    del h
    assert wait_for(lambda: calls == [1])


def test_views_outlive_close_and_unlink(name: str) -> None:
    calls: list[int] = []
    a = SharedArena.create(name, CAP)
    a.write(PAGE, [b"persist"])
    arr = np.frombuffer(a.read_view(PAGE, 7, on_release=lambda: calls.append(1)),
                        dtype=np.uint8)
    a.close()
    a.unlink()
    assert arr.tobytes() == b"persist"
    assert calls == []
    del arr
    assert wait_for(lambda: calls == [1])


def mappings_of(arena: SharedArena) -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if line.rstrip().endswith("/" + arena.name))


def test_live_views_hold_no_fd_and_no_mapping_of_their_own(arena: SharedArena) -> None:
    """Regression: each view had its own mmap (one dup'ed fd each), so holding 2,000 large
    objects failed with EMFILE under ``ulimit -n 1024``."""
    gc.collect()
    fds, maps = open_fds(), mappings_of(arena)
    assert maps == 1
    released: list[int] = []
    views = [arena.read_view(i % 200 * PAGE, PAGE, on_release=lambda: released.append(1))
             for i in range(2000)]
    arrays = [np.frombuffer(v, dtype=np.uint8) for v in views[::2]]
    assert (open_fds(), mappings_of(arena)) == (fds, maps)
    del views
    gc.collect()
    assert len(released) == 1000  # the views no array holds
    del arrays
    assert wait_for(lambda: len(released) == 2000)
    assert (open_fds(), mappings_of(arena)) == (fds, maps)


def test_released_views_do_not_leak_fds_or_mappings(arena: SharedArena) -> None:
    gc.collect()
    before = open_fds()
    views = [arena.read_view(i * PAGE, PAGE) for i in range(200)]
    del views
    assert wait_for(lambda: open_fds() == before)


def test_discard_gives_written_pages_back_to_the_system(name: str) -> None:
    size = 8 << 20
    with SharedArena.create(name, size) as a:
        a.write(0, [b"\x01" * size])
        path = os.path.join(SHM_DIR, name)
        full = os.stat(path).st_blocks
        a.discard(PAGE + 1, size - PAGE - 1)  # the partial first page is kept
        assert os.stat(path).st_blocks <= full // 4
        assert bytes(a.read_view(PAGE - 1, 1)) == b"\x01"
        assert bytes(a.read_view(2 * PAGE, 4)) == b"\0\0\0\0"
        assert os.stat(path).st_size == size
