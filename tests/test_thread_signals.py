"""Our threads never receive the server's process signals (POSIX signal(7): a
process-directed signal goes to any thread that does not block it). uWSGI handles its stop
signals in C on whichever thread they reach; on one of ours its worker hung at exit
(tests/e2e/test_servers.py stops every server with SIGTERM and fails on a hang: CI caught
the SQLite wake-up listener, started without the mask, hanging a uWSGI worker on 3.13).

Each thread's mask is read from Linux's /proc/self/task/<tid>/status (``SigBlk``), so the
test sees the mask the thread really runs with, whoever started it."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from wsgi_deferred.background import SERVER_SIGNALS, start_thread
from wsgi_deferred.pool import WorkerPool
from wsgi_deferred.stores.sqlite import SQLiteStore

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads thread masks from Linux /proc"
)
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT}


def blocked_signals(thread: threading.Thread) -> set[int]:
    """The signals *thread* blocks, as the kernel holds them."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    mask = int(
        next(line for line in status.splitlines() if line.startswith("SigBlk:")).split()[1], 16
    )
    return {number for number in range(1, 65) if mask & (1 << (number - 1))}


def threads_named(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive()]


@pytest.fixture
def caller_mask() -> Iterator[set[int]]:
    before = set(signal.pthread_sigmask(signal.SIG_BLOCK, []))
    assert not STOP_SIGNALS & before, "the test runner itself blocks a stop signal"
    yield before
    # The starting (server) thread gets its own mask back.
    assert set(signal.pthread_sigmask(signal.SIG_BLOCK, [])) == before


def test_start_thread_blocks_the_stop_signals_in_the_new_thread_only(caller_mask: set[int]) -> None:
    release = threading.Event()
    thread = start_thread(release.wait, name="mask-probe", args=(5,))
    try:
        assert thread.daemon
        assert blocked_signals(thread) >= STOP_SIGNALS
        assert SERVER_SIGNALS >= STOP_SIGNALS
        assert not STOP_SIGNALS & blocked_signals(threading.current_thread())
    finally:
        release.set()
        thread.join(5)


class SleepJob:
    def __init__(self, name: str, release: threading.Event) -> None:
        self.id, self.client_key, self.release = name, None, release

    def run(self) -> None:
        self.release.wait(5)


def test_pool_workers_and_heartbeat_block_the_stop_signals(caller_mask: set[int]) -> None:
    release = threading.Event()
    pool = WorkerPool(
        workers=2, max_pending=10, drain_timeout=5, on_heartbeat=lambda ids: None, name="maskpool"
    )
    try:
        for name in ("a", "b"):
            pool.reserve(None)
            pool.submit(SleepJob(name, release))
        threads = threads_named("maskpool-")
        assert len(threads) == 3, threads  # two workers and the heartbeat
        for thread in threads:
            assert blocked_signals(thread) >= STOP_SIGNALS, thread.name
    finally:
        release.set()
        pool.shutdown()


def test_sqlite_wake_listener_blocks_the_stop_signals(
    caller_mask: set[int], tmp_path: Path
) -> None:
    store = SQLiteStore(str(tmp_path / "tasks.db"))
    try:
        before = set(threads_named("sqlite-wake"))
        store.wait("no-such-task", 0.05)  # a long poll starts the listener
        deadline = time.monotonic() + 5
        while not (set(threads_named("sqlite-wake")) - before) and time.monotonic() < deadline:
            time.sleep(0.01)
        started = set(threads_named("sqlite-wake")) - before
        assert started, "the long poll started no wake-up listener"
        for thread in started:
            assert blocked_signals(thread) >= STOP_SIGNALS
    finally:
        store.close()


def test_every_thread_of_ours_is_started_through_start_thread() -> None:
    # A thread started any other way inherits its starter's mask: the next uWSGI hang.
    package = Path(__file__).resolve().parents[1] / "wsgi_deferred"
    direct = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.name != "background.py" and "threading.Thread(" in path.read_text()
    ]
    assert direct == []
