"""The pool's threads never receive the server's process signals (POSIX signal(7): a
process-directed signal goes to any thread that does not block it). uWSGI handles its stop
signals in C on whichever thread they reach; on one of ours its worker hung at exit
(tests/e2e/test_servers.py stops every server with SIGTERM and fails on a hang)."""

from __future__ import annotations

import signal
import threading

import pytest

from wsgi_deferred.pool import WorkerPool

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks only"
)
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT}


class MaskJob:
    """Records the signal mask of the thread that runs it."""

    def __init__(self, name: str) -> None:
        self.id = name
        self.client_key = None
        self.mask: set[signal.Signals] = set()
        self.done = threading.Event()

    def run(self) -> None:
        self.mask = set(signal.pthread_sigmask(signal.SIG_BLOCK, []))
        self.done.set()


def test_pool_threads_block_the_stop_signals_and_the_caller_keeps_its_mask() -> None:
    before = set(signal.pthread_sigmask(signal.SIG_BLOCK, []))
    assert not STOP_SIGNALS & before, "the test runner itself blocks a stop signal"
    pool = WorkerPool(workers=2, max_pending=10, drain_timeout=5)
    try:
        jobs = [MaskJob("a"), MaskJob("b")]
        for job in jobs:
            pool.reserve(None)
            pool.submit(job)
        for job in jobs:
            assert job.done.wait(5)
            assert job.mask >= STOP_SIGNALS, job.mask
        # The submitting (server) thread gets its own mask back.
        assert set(signal.pthread_sigmask(signal.SIG_BLOCK, [])) == before
    finally:
        pool.shutdown()
