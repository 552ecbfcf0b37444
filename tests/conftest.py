from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.resource_tracker
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# Shared test helpers (store_contract.py, apps.py) live beside the tests.
sys.path.insert(0, str(Path(__file__).parent))

# Session-wide Redis Cluster and Sentinel, started once for every module that asks.
from redis_cluster import redis_cluster, redis_sentinel  # noqa: F401

#: Seconds a test's own threads get to end after it returns (a pool's drain, a server thread).
THREAD_GRACE = 5.0
#: Threads a library starts lazily for an object of wider scope and keeps for its lifetime:
#: the default executor of playwright's event loop (the module-scoped browser).
_LIBRARY_THREADS = ("asyncio_",)


def _kept(name: str) -> bool:
    # The default store's private directory is meant to outlive a request (and a restart):
    # it is data, not a leak. Everything else a test leaves in $TMPDIR is one.
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return name == f"wsgi-deferred-{uid}"


@pytest.fixture(autouse=True)
def private_tmpdir(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """Every test gets its own empty ``$TMPDIR`` and fails if it leaves a file there: a
    spooled body, a partial upload or a temp file nobody removed (docs/security.md)."""
    tmp_path_factory.getbasetemp()  # fixed before TMPDIR moves, so tmp_path stays outside
    directory = Path(tempfile.mkdtemp(prefix="wsgi-deferred-test-"))
    monkeypatch.setenv("TMPDIR", str(directory))
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    try:
        yield directory
        left = sorted(p.name for p in directory.iterdir() if not _kept(p.name))
        assert not left, f"test left files in $TMPDIR: {left}"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_thread_leak() -> Iterator[None]:
    """Fail a test that leaves a thread running (pool workers, heartbeats, servers). A
    fixture of wider scope must stop its threads in the test that started them, or be
    function-scoped."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + THREAD_GRACE
    while True:
        extra = [
            t
            for t in threading.enumerate()
            if t not in before and t.is_alive() and not t.name.startswith(_LIBRARY_THREADS)
        ]
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not extra, f"test left threads running: {[t.name for t in extra]}"


def _children() -> set[int]:
    pids: set[int] = set()
    with contextlib.suppress(OSError):
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as handle:
                pids.update(int(pid) for pid in handle.read().split())
    # multiprocessing's resource tracker lives until the interpreter exits, by design.
    tracker = getattr(getattr(multiprocessing, "resource_tracker", None), "_resource_tracker", None)
    pids.discard(getattr(tracker, "_pid", None))  # type: ignore[arg-type]
    return {pid for pid in pids if _alive(pid)}


def _alive(pid: int) -> bool:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is not running
    return False


@pytest.fixture(scope="session", autouse=True)
def no_process_leak() -> Iterator[None]:
    """Fail the run if a test left a child process running (gunicorn, redis-server...)."""
    before = _children()
    yield
    deadline = time.monotonic() + THREAD_GRACE
    while (left := _children() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"the tests left child processes running: {sorted(left)}"
