"""Session directories: dead sessions are told from live ones by their lock, then reclaimed."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellfleet._session import Session, reclaim_dead_sessions
from cellfleet._shm import SHM_DIR


@pytest.fixture
def sessions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Session]]:
    """Sessions of a private root, each with a (tiny) arena in /dev/shm; removed afterwards."""
    monkeypatch.setenv("CELLFLEET_TMPDIR", str(tmp_path / "root"))
    made: list[Session] = []
    yield made
    for session in made:
        session.release()
        session.remove_arenas()


def new_session(made: list[Session], created_ns: int) -> tuple[Session, Path]:
    session = Session.create()
    made.append(session)
    os.utime(session.path / "token", ns=(created_ns, created_ns))
    arena = Path(SHM_DIR) / f"{session.arena_prefix}00000000"
    arena.write_bytes(b"x")
    return session, arena


def test_dead_sessions_lose_their_arenas_and_all_but_the_newest_directories(sessions) -> None:
    live, live_arena = new_session(sessions, 10**18)
    dead = [new_session(sessions, i * 10**9) for i in range(1, 8)]
    for session, _ in dead:
        session.release()
    assert reclaim_dead_sessions(keep=5) == (7, 2)
    assert live_arena.exists() and live.path.exists()
    assert not any(arena.exists() for _, arena in dead)
    assert [s.path.exists() for s, _ in dead] == [False, False, True, True, True, True, True]
    assert reclaim_dead_sessions(keep=5) == (0, 0)


def test_a_session_stays_while_any_process_holding_its_lock_lives(sessions) -> None:
    session, arena = new_session(sessions, 1)
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE, pass_fds=(session.lock_fd,))
    try:
        session.release()  # the creator is gone; its child (a raylet, say) still runs
        assert reclaim_dead_sessions(keep=0) == (0, 0)
        assert arena.exists() and session.path.exists()
    finally:
        child.stdin.close()
        child.wait(10)
    assert reclaim_dead_sessions(keep=0) == (1, 1)
    assert not arena.exists() and not session.path.exists()


def test_arenas_of_other_sessions_are_left_alone(sessions) -> None:
    session, arena = new_session(sessions, 1)
    other = Path(SHM_DIR) / f"cellfleet-session_elsewhere_{os.getpid()}-00000000"
    other.write_bytes(b"x")
    try:
        session.release()
        assert reclaim_dead_sessions() == (1, 0)
        assert other.exists() and not arena.exists()
    finally:
        other.unlink()
