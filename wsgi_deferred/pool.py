"""The bounded, fork-safe worker pool that runs deferred tasks, and its drain at exit.

* Bounded: at most ``workers`` threads, and at most ``max_pending`` tasks queued + running in
  this process (``max_pending_per_client`` per client); past that :meth:`WorkerPool.reserve`
  raises and the middleware answers ``503``/``429`` without creating anything.
* Lazy and fork-safe: threads start on the first submit in the process that serves. Under
  ``gunicorn --preload`` the app is imported in the master and then forked; threads do not
  survive a fork (POSIX ``fork(2)``), so a child starts its own and forgets the parent's jobs.
* A heartbeat thread renews the leases of this process's unfinished tasks, so another process
  can tell a live task from one whose process died.
* Drain: :meth:`WorkerPool.shutdown` (run at interpreter exit, i.e. when a gunicorn worker
  exits on SIGTERM or ``--max-requests``) stops taking work, lets running tasks finish within
  ``drain_timeout`` seconds, and hands everything else to ``on_abandon`` to be marked ``lost``.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Protocol

from .background import start_thread
from .errors import PoolFull
from .tasklog import task_extra

__all__ = ["DEFAULT_DRAIN_TIMEOUT", "ClientLimit", "PoolJob", "WorkerPool"]

logger = logging.getLogger("wsgi_deferred")

#: Seconds running tasks get to finish at shutdown (gunicorn's graceful_timeout is 30 s).
DEFAULT_DRAIN_TIMEOUT = 25.0
#: Seconds shutdown waits at least for the heartbeat thread to stop.
HEARTBEAT_JOIN_TIMEOUT = 5.0


class ClientLimit(PoolFull):
    """One client already has ``max_pending_per_client`` tasks in this process."""


class PoolJob(Protocol):
    id: str
    client_key: str | None

    def run(self) -> None: ...


#: Put on the queue once per worker thread to stop it.
_STOP = None


class WorkerPool:
    """Threads that run :class:`PoolJob` objects, plus admission control and a heartbeat."""

    def __init__(
        self,
        *,
        workers: int,
        max_pending: int,
        max_pending_per_client: int | None = None,
        heartbeat_interval: float = 10.0,  # seconds between lease renewals
        on_heartbeat: Callable[[list[PoolJob]], None] | None = None,
        on_abandon: Callable[[PoolJob, str], None] | None = None,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        on_release: Callable[[PoolJob], None] | None = None,
        name: str = "wsgi-deferred",
        on_change: Callable[[WorkerPool], None] | None = None,
    ) -> None:
        self.workers = workers
        self.max_pending = max_pending
        self.max_pending_per_client = max_pending_per_client
        self.heartbeat_interval = heartbeat_interval
        self.on_heartbeat = on_heartbeat
        self.on_abandon = on_abandon
        self.drain_timeout = drain_timeout
        #: Called once for every submitted job that leaves the pool, however it ended (run,
        #: skipped, abandoned): gives back what admission took for it (docs/security.md).
        self.on_release = on_release
        self.name = name
        #: Called (outside the lock) after ``pending`` or ``running`` changed: metrics.py
        #: sets its gauges there (prometheus_client's multiprocess mode reads no callbacks).
        self.on_change = on_change
        self._lock = threading.Lock()
        self._reset()
        self._pid = os.getpid()
        self._closed = False
        # Both hooks hold only a weak reference, so a discarded pool can be collected.
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (p := ref()) and p._after_fork())
        atexit.register(lambda: (p := ref()) and p.shutdown())

    def _reset(self) -> None:
        self._queue: queue.SimpleQueue[PoolJob | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._heartbeat: threading.Thread | None = None
        self._wake = threading.Event()
        self._jobs: dict[str, PoolJob] = {}  # reserved, queued or running, by id
        self._running: set[str] = set()
        self._per_client: dict[str, int] = {}
        self._reserved = 0

    def _after_fork(self) -> None:
        # The child inherits the parent's bookkeeping but none of its threads.
        self._lock = threading.Lock()
        self._reset()
        self._pid = os.getpid()
        self._closed = False

    # -- admission -------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Tasks reserved, queued or running in this process."""
        return self._reserved + len(self._jobs)

    @property
    def running(self) -> int:
        return len(self._running)

    def reserve(self, client_key: str | None = None) -> None:
        """Take one slot or raise :class:`PoolFull` / :class:`ClientLimit`. A reservation is
        turned into work by :meth:`submit` or given back by :meth:`release`."""
        with self._lock:
            if self._closed:
                raise PoolFull("the worker pool is shutting down")
            if self._reserved + len(self._jobs) >= self.max_pending:
                raise PoolFull(f"{self.max_pending} tasks already pending in this process")
            limit = self.max_pending_per_client
            if client_key is not None and limit is not None:
                if self._per_client.get(client_key, 0) >= limit:
                    raise ClientLimit(f"this client already has {limit} pending tasks")
                self._per_client[client_key] = self._per_client.get(client_key, 0) + 1
            self._reserved += 1
        self._changed()

    def release(self, client_key: str | None = None) -> None:
        """Give back a reservation that was not submitted."""
        with self._lock:
            self._reserved = max(0, self._reserved - 1)
            self._forget_client(client_key)
        self._changed()

    def _forget_client(self, client_key: str | None) -> None:
        if client_key is not None and client_key in self._per_client:
            self._per_client[client_key] -= 1
            if self._per_client[client_key] <= 0:
                del self._per_client[client_key]

    def submit(self, job: PoolJob) -> None:
        """Queue *job* on a reservation made with :meth:`reserve`."""
        with self._lock:
            if os.getpid() != self._pid:  # forked without our at-fork hook (defensive)
                self._after_fork()
            self._reserved = max(0, self._reserved - 1)
            self._jobs[job.id] = job
            self._start_threads()
        self._queue.put(job)
        self._changed()

    def _start_threads(self) -> None:
        # start_thread blocks the server's stop signals in our threads (background.py).
        while len(self._threads) < self.workers:
            name = f"{self.name}-worker-{len(self._threads) + 1}"
            self._threads.append(start_thread(self._work, name=name))
        if self._heartbeat is None and self.on_heartbeat is not None:
            self._heartbeat = start_thread(self._beat, name=f"{self.name}-heartbeat")

    def jobs(self) -> list[PoolJob]:
        """Snapshot of this process's reserved-and-submitted jobs."""
        with self._lock:
            return list(self._jobs.values())

    def find(self, task_id: str) -> PoolJob | None:
        return self._jobs.get(task_id)

    # -- threads ---------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:  # _STOP
                return
            with self._lock:
                if job.id not in self._jobs:
                    # Abandoned by shutdown() before it started: it must never start, even
                    # when on_abandon does not tell the job itself.
                    continue
                self._running.add(job.id)
            self._changed()
            try:
                job.run()
            except BaseException:  # run() handles app errors; this is a bug in us: live on
                logger.exception(
                    "task %s: internal error in worker", job.id, extra=task_extra(job.id)
                )
            finally:
                with self._lock:
                    self._running.discard(job.id)
                    self._jobs.pop(job.id, None)
                    self._forget_client(job.client_key)
                self._released(job)
                self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change(self)
            except Exception:  # metrics must never cost a task
                logger.exception("pool change hook failed")

    def _beat(self) -> None:
        while not self._wake.wait(self.heartbeat_interval):
            self.beat_now()

    def beat_now(self) -> None:
        jobs = self.jobs()
        if jobs and self.on_heartbeat is not None:
            try:
                self.on_heartbeat(jobs)
            except Exception:
                logger.exception("lease heartbeat failed; will retry")

    # -- shutdown --------------------------------------------------------------------------

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop taking work, let running tasks finish for up to *timeout* seconds (default
        ``drain_timeout``), then abandon the rest. Idempotent; a no-op in a forked child
        that never started threads."""
        with self._lock:
            if self._closed or os.getpid() != self._pid:
                return
            self._closed = True
            threads = list(self._threads)
            # Jobs not yet started will never start: abandon them now, not after the drain.
            waiting = [j for j in self._jobs.values() if j.id not in self._running]
            for job in waiting:
                self._jobs.pop(job.id, None)
        for job in waiting:
            self._abandon(job, "the server process stopped before this task started")
            self._released(job)
        self._changed()
        for _ in threads:
            self._queue.put(_STOP)
        deadline = time.monotonic() + (self.drain_timeout if timeout is None else timeout)
        if threads:
            logger.info("draining %d running task(s)", len(self._running))
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._wake.set()
        if self._heartbeat is not None:
            # Wait for it to notice, so close() leaves no thread behind (at most one renewal
            # can be in flight; a store gives up within a few seconds).
            self._heartbeat.join(max(HEARTBEAT_JOIN_TIMEOUT, deadline - time.monotonic()))
        for job in self.jobs():
            self._abandon(job, "the server process stopped before this task finished")

    def _released(self, job: PoolJob) -> None:
        if self.on_release is None:
            return
        try:
            self.on_release(job)
        except Exception:
            logger.exception(
                "task %s: could not release its admission slot", job.id, extra=task_extra(job.id)
            )

    def _abandon(self, job: PoolJob, reason: str) -> None:
        if self.on_abandon is None:
            return
        try:
            self.on_abandon(job, reason)
        except Exception:
            logger.exception("task %s: could not be marked lost", job.id, extra=task_extra(job.id))

    def threads(self) -> Iterable[threading.Thread]:
        return tuple(self._threads) + ((self._heartbeat,) if self._heartbeat else ())
