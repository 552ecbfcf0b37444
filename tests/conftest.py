from __future__ import annotations

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


@pytest.fixture
def no_thread_leak() -> Iterator[None]:
    """Fail a test that leaves a thread running (pool workers, heartbeats, servers)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + THREAD_GRACE
    while True:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not extra, f"test left threads running: {[t.name for t in extra]}"
