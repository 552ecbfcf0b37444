"""Running a task known only by its id: a remote executor's delivery, or a retry.

:func:`run_delivered` passes the store's delivery gate, loads the captured request from the
store, and replays it with the runner, under a lease heartbeat of its own (a Celery pool child
has no pool heartbeat; a retry in the thread pool renews its own lease too). A
:class:`Redelivery` is the pool job the retry sweeper queues for it (docs/execution.md).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING

from ..admission import release_kept_slot, release_slot
from ..background import start_thread
from ..errors import StoreUnavailable
from ..task import TaskState, is_task_id
from ..tasklog import task_extra
from ..tracing import context_from_traceparent
from .snapshots import restore_snapshot, stored_text

if TYPE_CHECKING:
    from ..runner import TaskRunner
    from ..stores.base import Store

__all__ = ["HEARTBEAT_JOIN_TIMEOUT", "Redelivery", "run_delivered"]

logger = logging.getLogger("wsgi_deferred")

#: Seconds a finished delivery waits at most for its heartbeat thread to stop.
HEARTBEAT_JOIN_TIMEOUT = 5.0
#: The limit a running task re-takes its own client slot with: it was admitted already.
ALREADY_ADMITTED = 2**31


def run_delivered(runner: TaskRunner, task_id: str, redelivery: Redelivery | None = None) -> str:
    """Run the task *task_id* whose captured request is in the store. Returns ``"skipped"``
    (final, or its lease is held and live elsewhere, or *task_id* is no task id), ``"lost"``
    (its request is gone or unreadable: it reads lost) or ``"ran"``."""
    from ..runner import Job

    if not isinstance(task_id, str) or not is_task_id(task_id):  # an engine's message
        logger.error("ignoring a delivery with a malformed task id %r", task_id)
        return "skipped"
    store = runner.store
    record = store.deliver(task_id, time.time() + runner.lease_timeout)
    if record is None:
        logger.info(
            "task %s: delivery skipped (final, or running elsewhere)",
            task_id,
            extra=task_extra(task_id),
        )
        _release_if_final(runner, task_id)
        return "skipped"
    traceparent = client = None
    try:
        kept = store.load_request(task_id)
        if kept:
            traceparent, client = (
                stored_text(kept[0], "traceparent"),
                stored_text(kept[0], "client"),
            )
        if client is not None:
            # The slot the accepting process took (for the queued lease), or again after
            # it lapsed (a retry whose first runner died): from now on it lives by this
            # run's lease, so a failure from here on frees it within one lease.
            _take_slot(runner, client, task_id)
        snapshot = restore_snapshot(*kept, runner.spool_threshold) if kept else None
    except ValueError as exc:
        logger.error(
            "task %s: captured request unreadable: %s", task_id, exc, extra=task_extra(task_id)
        )
        snapshot = None
    if snapshot is None:
        expires = time.time() + runner.result_ttl
        try:
            store.fail(task_id, TaskState.LOST.value, "its captured request is gone", expires)
        finally:
            if client is not None:
                release_slot(store, client, task_id)
        return "lost"
    job = Job(runner, task_id, snapshot, owner=record.owner, attached=True)
    job.created, job.delivered, job.kept_request = record.created, True, True
    job.attempts, job.max_attempts = record.attempts, record.max_attempts
    # Not this process's request: continue the accepting request's trace from its traceparent.
    job.traceparent, job.context = traceparent, context_from_traceparent(traceparent)
    if redelivery is not None:  # so a local DELETE and shutdown reach the job
        job.cancel_flag, redelivery.job = redelivery.cancel_flag, job
    name = f"wsgi-deferred-lease-{task_id[:6]}"
    beat = start_thread(_beat, name=name, args=(runner, job, client))
    try:
        runner.run(job)
    finally:
        job.done.set()
        beat.join(HEARTBEAT_JOIN_TIMEOUT)
        # The client's slot (taken by the web process that accepted the task) ends with the
        # run, unless the task was re-queued to run again: then it stays taken until then.
        if client is not None and not _requeued(store, task_id):
            release_slot(store, client, task_id)
    return "ran"


def _beat(runner: TaskRunner, job: object, client: str | None) -> None:
    """Renew the task's lease, and its client's admission slot, while it runs."""
    done: threading.Event = job.done  # type: ignore[attr-defined]
    task_id: str = job.id  # type: ignore[attr-defined]
    while not done.wait(runner.lease_timeout / 3):
        try:
            runner.heartbeat([job])
            if client is not None:
                with contextlib.suppress(NotImplementedError):
                    slots = [(client, task_id)]
                    runner.store.renew_slots(slots, time.time() + runner.lease_timeout)
        except Exception:
            logger.exception("task %s: lease heartbeat failed; will retry", task_id)


def _take_slot(runner: TaskRunner, client: str, task_id: str) -> None:
    # Never refused: the task was admitted when it was accepted; this only names its slot.
    expires = time.time() + runner.lease_timeout
    with contextlib.suppress(NotImplementedError, StoreUnavailable):
        runner.store.acquire_slot(client, task_id, ALREADY_ADMITTED, expires)


def _requeued(store: Store, task_id: str) -> bool:
    try:
        record = store.get(task_id)
    except StoreUnavailable:
        return False
    return record is not None and not record.state.is_final


def _release_if_final(runner: TaskRunner, task_id: str) -> None:
    """A delivery of a task that ended without running here (cancelled while queued): give
    back the slot it still holds, or it would count against its client until it expires."""
    store = runner.store
    try:
        record = store.get(task_id)
    except StoreUnavailable:
        return
    if record is not None and record.state.is_final:
        release_kept_slot(store, task_id)
    # else gone (its slot expired with it), or running elsewhere (that run gives it back)


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
