"""Running a task known only by its id: a remote executor's delivery, or a retry.

:func:`run_delivered` passes the store's delivery gate, loads the captured request from the
store, and replays it with the runner, under a lease heartbeat of its own (a Celery pool child
has no pool heartbeat; a retry in the thread pool renews its own lease too). A
:class:`Redelivery` is the pool job the retry sweeper queues for it (docs/execution.md).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from ..background import start_thread
from ..errors import StoreUnavailable
from ..task import TaskState
from ..tasklog import task_extra
from ..tracing import context_from_traceparent
from .snapshots import restore_snapshot, stored_traceparent

if TYPE_CHECKING:
    from ..runner import TaskRunner

__all__ = ["HEARTBEAT_JOIN_TIMEOUT", "Redelivery", "run_delivered"]

logger = logging.getLogger("wsgi_deferred")

#: Seconds a finished delivery waits at most for its heartbeat thread to stop.
HEARTBEAT_JOIN_TIMEOUT = 5.0


def run_delivered(runner: TaskRunner, task_id: str, redelivery: Redelivery | None = None) -> str:
    """Run the task *task_id* whose captured request is in the store. Returns ``"skipped"``
    (final, or its lease is held and live elsewhere), ``"lost"`` (its request is gone or
    unreadable: it reads lost) or ``"ran"``."""
    from ..runner import Job

    store = runner.store
    record = store.deliver(task_id, time.time() + runner.lease_timeout)
    if record is None:
        logger.info(
            "task %s: delivery skipped (final, or running elsewhere)",
            task_id,
            extra=task_extra(task_id),
        )
        return "skipped"
    traceparent = None
    try:
        kept = store.load_request(task_id)
        traceparent = stored_traceparent(kept[0]) if kept else None
        snapshot = restore_snapshot(*kept, runner.spool_threshold) if kept else None
    except ValueError as exc:
        logger.error(
            "task %s: captured request unreadable: %s", task_id, exc, extra=task_extra(task_id)
        )
        snapshot = None
    if snapshot is None:
        expires = time.time() + runner.result_ttl
        store.fail(task_id, TaskState.LOST.value, "its captured request is gone", expires)
        return "lost"
    job = Job(runner, task_id, snapshot, owner=record.owner, attached=True)
    job.created, job.delivered, job.kept_request = record.created, True, True
    job.attempts, job.max_attempts = record.attempts, record.max_attempts
    # Not this process's request: continue the accepting request's trace from its traceparent.
    job.traceparent, job.context = traceparent, context_from_traceparent(traceparent)
    if redelivery is not None:  # so a local DELETE and shutdown reach the job
        job.cancel_flag, redelivery.job = redelivery.cancel_flag, job
    beat = start_thread(_beat, name=f"wsgi-deferred-lease-{task_id[:6]}", args=(runner, job))
    try:
        runner.run(job)
    finally:
        job.done.set()
        beat.join(HEARTBEAT_JOIN_TIMEOUT)
    return "ran"


def _beat(runner: TaskRunner, job: object) -> None:
    done: threading.Event = job.done  # type: ignore[attr-defined]
    while not done.wait(runner.lease_timeout / 3):
        try:
            runner.heartbeat([job])
        except Exception:
            logger.exception("task %s: lease heartbeat failed; will retry", job.id)  # type: ignore[attr-defined]


class Redelivery:
    """A pool job for a task known only by its id: the retry sweeper queues one to run a
    re-queued task in this process."""

    attached = False  # its lease is renewed by run_delivered, not by the pool's heartbeat

    def __init__(self, runner: TaskRunner, task_id: str) -> None:
        self.runner = runner
        self.id = task_id
        self.client_key: str | None = None
        self.cancel_flag = threading.Event()  # shared with the Job, for a local DELETE
        self.done = threading.Event()
        self.job: object | None = None

    def run(self) -> None:
        try:
            run_delivered(self.runner, self.id, self)
        except StoreUnavailable:
            logger.warning(
                "task %s: store unavailable, retry not started", self.id, extra=task_extra(self.id)
            )
        finally:
            self.done.set()
