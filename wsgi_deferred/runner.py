"""One task's journey through a worker thread: claim, replay, buffer, record the outcome.

A :class:`Job` is this process's handle on a task. It starts either *attached* (its record is
already in the store: a plain marked request, answered ``202`` at once) or *detached* (nobody
outside this process knows it yet: ``defer_after`` and ``Prefer: wait`` give it a chance to
finish inline). A detached job that is still running when the inline wait ends is attached
then; the job's lock makes "finished inline" and "handed to the store" mutually exclusive, so a
result is never both served inline and stored, nor lost between the two.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from .admission import slot_client
from .buffers import SPOOL_THRESHOLD
from .capture import RequestSnapshot
from .errors import StoreUnavailable
from .executors.snapshots import snapshot_meta
from .replay import BufferedResponse, ExcInfo, WSGIApp, run_and_buffer, strip_hop_by_hop
from .stores.base import Store
from .task import TaskRecord, TaskState
from .tasklog import set_current_task_id, task_extra
from .tracing import current_traceparent

__all__ = ["Job", "TaskRunner"]

logger = logging.getLogger("wsgi_deferred")

#: Seconds between two store look-ups made by ``environ["wsgi_deferred.cancelled"]()``.
CANCEL_CHECK_INTERVAL = 1.0
#: Seconds in the past a let-go lease is set to, so the store re-queues the task at once.
LEASE_LET_GO = 0.001


class Job:
    """This process's handle on one task (see the module docstring)."""

    def __init__(
        self,
        runner: TaskRunner,
        task_id: str,
        snapshot: RequestSnapshot,
        *,
        owner: str | None = None,
        client_key: str | None = None,
        attached: bool = True,
    ) -> None:
        self.runner = runner
        self.id = task_id
        self.snapshot = snapshot
        self.owner = owner
        self.client_key = client_key
        self.attached = attached
        self.created = time.time()
        self.state = TaskState.QUEUED
        self.started: float | None = None
        self.progress: float | None = None
        self.message: str | None = None
        self.lock = threading.Lock()
        self.done = threading.Event()
        #: Set by a local DELETE, a lease renewal that was refused, or shutdown.
        self.cancel_flag = threading.Event()
        #: Set (under ``lock``, before ``cancel_flag``) when shutdown gave up on the job:
        #: whatever the app returns afterwards is a cut-short answer, never the result.
        self.abandoned = False
        #: True once ``cancelled()`` answered True to the app.
        self.cancel_seen = False
        self._last_cancel_check = 0.0
        #: Outcome kept for an inline answer (detached jobs only).
        self.response: BufferedResponse | None = None
        self.exc_info: ExcInfo | None = None
        # Made in the accepting request's thread: the replay runs in a copy of its context
        # (trace context, see tracing.py), and the traceparent outlives this process.
        self.context = contextvars.copy_context()
        self.traceparent = current_traceparent()
        #: The rule that deferred it: the ``rule`` label of the duration histograms.
        self.rule = "-"
        #: Runs allowed (``max_attempts`` on a retry rule with a shared store, else 1), runs
        #: started, and whether the store keeps the captured request (docs/execution.md).
        self.max_attempts = 1
        self.attempts = 0
        self.kept_request = False
        #: True when the delivery gate was already passed (a remote delivery or a retry).
        self.delivered = False

    def run(self) -> None:
        self.runner.run(self)

    def record(self) -> TaskRecord:
        """The store record describing this job now."""
        return TaskRecord(
            id=self.id,
            state=self.state,
            created=self.created,
            started=self.started,
            progress=self.progress,
            message=self.message,
            owner=self.owner,
            label=self.snapshot.label,
            lease_expires=time.time() + self.runner.lease_for(self.state),
            attempts=self.attempts,
            max_attempts=self.max_attempts,
        )

    # -- the callables an app finds in its environ -------------------------------------------

    def report_progress(self, fraction: float | None = None, message: str | None = None) -> None:
        """``environ["wsgi_deferred.progress"]``: record progress (0..1) and/or a message."""
        if fraction is not None:
            fraction = min(1.0, max(0.0, float(fraction)))
        if message is not None:
            message = str(message)[:500]
        with self.lock:
            self.progress, self.message = fraction, message
            attached = self.attached
        if attached:
            try:
                self.runner.store.set_progress(self.id, fraction, message)
            except StoreUnavailable:
                logger.warning(
                    "task %s: progress not recorded, store unavailable",
                    self.id,
                    extra=task_extra(self.id),
                )

    def is_cancelled(self) -> bool:
        """``environ["wsgi_deferred.cancelled"]``: True once the client cancelled the task."""
        if self.cancel_flag.is_set():
            self.cancel_seen = True
            return True
        now = time.monotonic()
        if self.attached and now - self._last_cancel_check >= CANCEL_CHECK_INTERVAL:
            self._last_cancel_check = now
            try:
                record = self.runner.store.get(self.id)
            except StoreUnavailable:
                return False
            if record is None or record.state is TaskState.CANCELLED:
                self.cancel_flag.set()
        if self.cancel_flag.is_set():
            self.cancel_seen = True
            return True
        return False


class TaskRunner:
    """Runs jobs against one app and one store; shared by every worker thread."""

    def __init__(
        self,
        app: WSGIApp,
        store_getter: Callable[[], Store],
        *,
        result_ttl: float,
        lease_timeout: float,
        spool_dir: str | None = None,
        on_finished: Callable[[Job, str, float], None] | None = None,
        debug: bool = False,
        max_attempts_for: Callable[[RequestSnapshot], int] | None = None,
    ) -> None:
        self.app = app
        self._store_getter = store_getter
        self.result_ttl = result_ttl
        self.lease_timeout = lease_timeout
        self.spool_dir = spool_dir
        self.spool_threshold = SPOOL_THRESHOLD  # bytes of a restored request body in memory
        self.on_finished = on_finished
        #: Show a failed task's traceback to the client (development only; docs/protocol.md).
        self.debug = debug
        #: Runs allowed for a request: ``max_attempts`` on a ``retry`` rule, else 1.
        self.max_attempts_for = max_attempts_for
        #: Set by executors that run tasks elsewhere: every task's request is kept in the store,
        #: and a queued task's lease lasts ``queued_lease`` seconds (None: lease_timeout).
        self.keep_requests = False
        self.queued_lease: float | None = None

    @property
    def store(self) -> Store:
        return self._store_getter()

    def lease_for(self, state: TaskState) -> float:
        """Seconds of a new record's lease: a task queued at a remote engine waits in its
        queue, where nobody renews it, for up to ``queued_lease`` seconds."""
        if state is TaskState.QUEUED and self.queued_lease is not None:
            return max(self.queued_lease, self.lease_timeout)
        return self.lease_timeout

    @property
    def retries(self) -> bool:
        """True when some requests may run again after their runner died."""
        return self.max_attempts_for is not None

    def attach(self, job: Job) -> None:
        """Put *job*'s record in the store (raises StoreUnavailable). Caller holds job.lock
        for a detached job that may be running. With a shared store, the captured request
        goes there first when another process may have to run it: always for a remote
        executor, on a ``retry`` rule for the thread pool (docs/execution.md, "Retries")."""
        store = self.store
        if store.shared and self.max_attempts_for is not None:
            job.max_attempts = max(1, self.max_attempts_for(job.snapshot))
        if job.state is TaskState.RUNNING:
            job.attempts = max(job.attempts, 1)  # a detached job handed over mid-run
        if store.shared and (self.keep_requests or job.max_attempts > 1):
            try:
                store.save_request(
                    job.id,
                    snapshot_meta(job.snapshot, job.traceparent, slot_client(job.client_key)),
                    job.snapshot.body,
                )
                job.kept_request = True
            except ValueError:  # the body is gone: the run it was captured for just ended
                job.max_attempts = 1
        store.create(job.record())
        job.attached = True

    def run(self, job: Job) -> None:
        if job.cancel_flag.is_set():
            job.snapshot.discard()
            job.done.set()
            return
        with job.lock:
            if job.attached and not job.delivered:
                try:
                    record = self.store.deliver(job.id, time.time() + self.lease_timeout)
                except StoreUnavailable:
                    logger.error(
                        "task %s: store unavailable, cannot start; lease will lapse",
                        job.id,
                        extra=task_extra(job.id),
                    )
                    record = None
                if record is None:  # cancelled (or marked lost) while queued
                    job.snapshot.discard()
                    self.forget_request(job)
                    job.done.set()
                    return
                job.attempts = record.attempts
            elif not job.attached:
                job.attempts = 1
            job.state = TaskState.RUNNING
            job.started = time.time()
        logger.info("task %s: started %s", job.id, job.snapshot.label, extra=task_extra(job.id))
        environ = job.snapshot.replay_environ(
            job.id,
            {
                "wsgi_deferred.id": job.id,
                "wsgi_deferred.progress": job.report_progress,
                "wsgi_deferred.cancelled": job.is_cancelled,
                "wsgi_deferred.traceparent": job.traceparent,
            },
        )
        response: BufferedResponse | None = None
        exc_info: ExcInfo | None = None
        try:
            response = job.context.run(self._replay, job.id, environ)
        except BaseException:
            # Even SystemExit/KeyboardInterrupt from the app only fail this task: letting
            # them end the worker thread would strand every task queued behind it.
            exc_info = sys.exc_info()  # type: ignore[assignment]
        finally:
            job.snapshot.discard()
        with job.lock:
            # Shutdown cut it short: an attached job's answer is never the result (the
            # store already reads lost, or will); a detached one's inline client still
            # waits here, and gets the answer unless the app saw cancelled() and returned
            # early (docs/execution.md, "Shutdown").
            cut = job.abandoned and (job.attached or job.cancel_seen)
            if cut:
                if response is not None:
                    response.body.discard()
                job.response, job.exc_info = None, None  # a waiter inline answers 503
                attached = job.attached
        if cut:
            if attached:
                self._give_up(job, "the server process stopped before this task finished")
            job.done.set()
            return
        with job.lock:
            job.state = TaskState.DONE if response is not None else TaskState.FAILED
            if not job.attached:
                # Detached: the inline waiter takes the outcome (and re-raises an error).
                job.response, job.exc_info = response, exc_info
                job.done.set()
                return
        self._record_outcome(job, response, exc_info)
        job.done.set()

    def _replay(self, task_id: str, environ: dict[str, Any]) -> BufferedResponse:
        """Runs inside the job's copy of the accepting request's context (tracing.py)."""
        set_current_task_id(task_id)
        return run_and_buffer(self.app, environ, spool_dir=self.spool_dir)

    def _record_outcome(
        self, job: Job, response: BufferedResponse | None, exc_info: ExcInfo | None
    ) -> None:
        expires = time.time() + self.result_ttl
        elapsed = time.time() - (job.started or job.created)
        try:
            if response is not None:
                headers = strip_hop_by_hop(response.headers)
                if self.store.finish(job.id, response.status, headers, response.body, expires):
                    logger.info(
                        "task %s: done, %s in %.3fs",
                        job.id,
                        response.status,
                        elapsed,
                        extra=task_extra(job.id),
                    )
                    outcome = "done"
                else:
                    logger.info(
                        "task %s: finished after it was cancelled; result discarded",
                        job.id,
                        extra=task_extra(job.id),
                    )
                    outcome = "cancelled"
            else:
                assert exc_info is not None
                logger.error(
                    "task %s: the application raised; state failed",
                    job.id,
                    exc_info=exc_info,
                    extra=task_extra(job.id),
                )
                message = f"the application raised {exc_info[0].__name__}"
                if self.debug:
                    message = "".join(traceback.format_exception(*exc_info))
                self.store.fail(job.id, TaskState.FAILED.value, message, expires)
                outcome = "failed"
        except StoreUnavailable:
            if response is not None:
                response.body.discard()
            logger.error(
                "task %s: store unavailable, outcome not recorded; lease will lapse",
                job.id,
                extra=task_extra(job.id),
            )
            outcome = "lost"
        finally:
            exc_info = None
        if outcome != "lost":
            self.forget_request(job)
        if self.on_finished is not None:
            self.on_finished(job, outcome, elapsed)

    def heartbeat(self, jobs: list[Any]) -> None:
        """Renew the leases of this process's attached, unfinished jobs (a redelivery renews
        its own, see :mod:`wsgi_deferred.executors.delivery`)."""
        live = [
            job for job in jobs if isinstance(job, Job) and job.attached and not job.done.is_set()
        ]
        if not live:
            return
        renewed = self.store.renew([job.id for job in live], time.time() + self.lease_timeout)
        for job in live:
            if job.id not in renewed:
                job.cancel_flag.set()  # cancelled, deleted or declared lost elsewhere

    def abandon(self, job: Any, reason: str) -> None:
        """Shutdown gave up on *job*: make sure no client waits for it forever, and that
        nothing the app returns after this is stored as its result."""
        if not isinstance(job, Job):  # a Redelivery (executors/delivery.py)
            if job.job is not None:
                self.abandon(job.job, reason)
            return  # never started here: it stays queued in the store for another process
        with job.lock:
            job.abandoned = True
        job.cancel_flag.set()
        with job.lock:
            attached = job.attached
            if job.state is TaskState.QUEUED:
                # Never started, and the pool will not start it now: free its captured
                # body (a spilled temp file outlives the process otherwise).
                job.snapshot.discard()
                if not attached:
                    # Detached: wake its inline waiter, which answers 503. Under the lock,
                    # so the waiter cannot attach it meanwhile.
                    job.done.set()
                    return
        if attached and not job.done.is_set():
            self._give_up(job, reason)

    def _give_up(self, job: Job, reason: str) -> None:
        """End an attached job this process will not finish: on a retry rule with runs left
        its lease is let go at once, so the store re-queues it for another process (the
        retry sweeper, docs/execution.md); otherwise it reads ``lost``."""
        if self.may_run_again(job) and self.store.renew([job.id], time.time() - LEASE_LET_GO):
            logger.warning(
                "task %s: let go for another process to run: %s",
                job.id,
                reason,
                extra=task_extra(job.id),
            )
            return
        if self.store.fail(job.id, TaskState.LOST.value, reason, time.time() + self.result_ttl):
            logger.warning("task %s: marked lost: %s", job.id, reason, extra=task_extra(job.id))
        self.forget_request(job)

    @staticmethod
    def may_run_again(job: Job) -> bool:
        # Only a job that started a run here: the store re-queues running tasks, never queued
        # ones (a queued job abandoned at shutdown reads lost, with its real reason).
        return job.kept_request and 1 <= job.attempts < job.max_attempts

    def forget_request(self, job: Job) -> None:
        if job.kept_request:
            try:
                self.store.delete_request(job.id)
            except StoreUnavailable:
                logger.warning(
                    "task %s: captured request not deleted (store unavailable)",
                    job.id,
                    extra=task_extra(job.id),
                )
