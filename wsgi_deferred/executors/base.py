"""The executor interface: where deferred tasks run (docs/execution.md, "Execution tier").

Every executor is a :class:`~wsgi_deferred.pool.WorkerPool` (admission control, the local
threads, the lease heartbeat, the drain at exit) plus three decisions of its own:

* :meth:`Executor.submit` of an *attached* job (its record is in the store): run it here
  (threads) or hand its id to an engine (Celery, RQ). A *detached* job (``defer_after``,
  ``Prefer: wait``) may still be answered inline, so it always runs in this process.
* :meth:`Executor.resubmit`: run again a task named only by its id, re-queued by the store
  after its runner died (a ``retry`` rule).
* :meth:`Executor.run_worker`: the ``wsgi-deferred worker`` side of a remote executor.

The retry sweeper lives here too: with ``retry`` rules and a shared store, one thread per
process looks at the store's retry candidates every ``heartbeat_interval`` seconds (a
bounded batch) and re-submits the tasks the store re-queued, which closes the gap of a
duplicate delivery skipped while the first runner still lived.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from ..background import start_thread
from ..errors import DeferredError, PoolFull, StoreUnavailable
from ..pool import WorkerPool
from ..task import TaskState
from ..tasklog import task_extra
from .delivery import Redelivery

if TYPE_CHECKING:
    from ..runner import TaskRunner

__all__ = ["QUEUED_LEASE", "SWEEP_BATCH", "Executor", "RemoteExecutor"]

logger = logging.getLogger("wsgi_deferred")

#: Retry candidates one sweep looks at, at most (the sweep stays cheap on a big store).
SWEEP_BATCH = 100
#: Seconds a task sent to a remote engine may wait in its queue (nobody renews its lease
#: there) before it reads ``lost``; RabbitMQ's own consumer_timeout is 30 minutes.
QUEUED_LEASE = 3600.0


class Executor(WorkerPool):
    """Base of every executor; as it is, it runs everything in this process's threads."""

    #: True when attached tasks run in other processes (a ``wsgi-deferred worker``).
    remote = False

    def __init__(self, runner: TaskRunner, *, engine: Any = None, **pool_options: Any) -> None:
        options = {"on_heartbeat": runner.heartbeat, "on_abandon": runner.abandon}
        super().__init__(**{**options, **pool_options})
        self.runner = runner
        #: What followed ``<scheme>+`` in the executor URL, or the engine object given.
        self.engine = engine
        runner.keep_requests = self.remote
        runner.queued_lease = QUEUED_LEASE if self.remote else None
        self._sweeper_pid = 0
        #: Set by run_worker. A worker process does not sweep: its store connections would
        #: cross the fork of every new pool child (SQLite forbids that), and one sweeper per
        #: child would be too many; the web tier sweeps.
        self._in_worker = False
        self._sweep_stop = threading.Event()
        #: task id -> monotonic time of its last re-submission from this process
        self._resubmitted: dict[str, float] = {}

    # -- what each executor decides -----------------------------------------------------------

    def resubmit(self, task_id: str) -> bool:
        """Run the re-queued task *task_id* again; False when there is no room now."""
        try:
            self.reserve(None)
        except PoolFull:
            return False
        self.submit(Redelivery(self.runner, task_id))  # type: ignore[arg-type]
        return True

    def run_worker(self, middleware: Any, concurrency: int | None, loglevel: str) -> int:
        """Run this executor's worker in this process (``wsgi-deferred worker``)."""
        raise DeferredError(
            "the thread executor runs tasks in the web process; "
            "'wsgi-deferred worker' needs executor=celery+... or rq+..."
        )

    # -- the retry sweeper --------------------------------------------------------------------

    def ensure_sweeper(self) -> None:
        """Start this process's retry sweeper if retries are possible (cheap when running).
        Called once the store is chosen, in the process that serves (never before a fork)."""
        if self._sweeper_pid == os.getpid() or not self.runner.retries or self._closed:
            return
        if self._in_worker:
            return
        with self._lock:
            if self._sweeper_pid == os.getpid():
                return
            self._sweeper_pid = os.getpid()
            self._sweep_stop = threading.Event()
            self._resubmitted.clear()
        if not self.runner.store.shared:
            return  # one process: nobody else could run a task again
        start_thread(self._sweep_loop, name=f"{self.name}-sweeper")

    def _sweep_loop(self) -> None:
        while not self._sweep_stop.wait(self.heartbeat_interval):
            try:
                self.sweep()
            except StoreUnavailable as exc:
                logger.warning("retry sweep skipped: %s", exc)
            except Exception:
                logger.exception("retry sweep failed; will try again")

    def sweep(self) -> int:
        """One pass: re-submit the tasks the store re-queued. Returns how many."""
        store, now = self.runner.store, time.monotonic()
        quiet = self.runner.lease_timeout  # seconds before the same task is re-submitted again
        self._resubmitted = {k: t for k, t in self._resubmitted.items() if now - t < quiet}
        count = 0
        for task_id in store.retry_candidates(SWEEP_BATCH):
            if task_id in self._resubmitted or self.find(task_id) is not None:
                continue
            record = store.get(task_id)  # applies the lease rules: a dead runner's task re-queues
            if record is None or record.state is not TaskState.QUEUED or record.attempts < 1:
                continue  # running, final, or never started (its first delivery is on its way)
            if self.resubmit(task_id):
                self._resubmitted[task_id] = now
                count += 1
                logger.info(
                    "task %s: re-submitted (attempt %d)",
                    task_id,
                    record.attempts + 1,
                    extra=task_extra(task_id),
                )
        return count

    def shutdown(self, timeout: float | None = None) -> None:
        self._sweep_stop.set()
        super().shutdown(timeout)


class RemoteExecutor(Executor):
    """Base of the engines' executors: an attached task's id goes to the engine (its captured
    request is already in the store, see ``TaskRunner.attach``); a detached one runs here."""

    remote = True

    def send(self, task_id: str) -> bool:
        """Hand *task_id* to the engine; False (logged) when it cannot be reached."""
        raise NotImplementedError

    def submit(self, job: Any) -> None:
        if not getattr(job, "attached", False):
            super().submit(job)  # detached: may be answered inline, so it runs here
            return
        self.release(job.client_key)  # nothing runs here; the slot is free again
        job.snapshot.discard()  # the store has it
        if not self.send(job.id):
            self._released(job)  # nothing will run it: its client slot is free again
            message = "the task queue could not be reached"
            expires = time.time() + self.runner.result_ttl
            try:
                self.runner.store.fail(job.id, TaskState.LOST.value, message, expires)
            except StoreUnavailable:
                logger.error(
                    "task %s: not queued and not marked lost", job.id, extra=task_extra(job.id)
                )
        job.done.set()

    def resubmit(self, task_id: str) -> bool:
        return self.send(task_id)
