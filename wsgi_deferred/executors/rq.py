"""The RQ executor: ``executor="rq+redis://host:6379/2"`` or an ``rq.Queue``
(docs/execution.md).

As with Celery, the web process keeps the captured request in the (shared) store and enqueues
only the task id, by function name (``"wsgi_deferred.executors.rq.perform"``, JSON-serialised
by default: RQ's pickle is unsafe on an untrusted Redis). ``wsgi-deferred worker APP`` runs RQ
workers that import APP once; each job runs in a work horse forked from its worker, passes the
store's delivery gate, and replays against the app inside the middleware. A killed work horse
or worker is RQ's failure; the retry sweeper of the web tier runs a task on a ``retry`` rule
again once its lease lapsed. RQ's own retries and results are not used (``result_ttl=0``).

RQ is an optional extra (``pip install 'wsgi_deferred[rq]'``), imported only here. It does not
run on Redis Cluster (rq#2418).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from redis import Redis
from rq import Queue, Worker
from rq.serializers import JSONSerializer

from ..errors import ConfigurationError
from ..tasklog import task_extra
from .base import RemoteExecutor
from .delivery import run_delivered

if TYPE_CHECKING:
    from ..runner import TaskRunner

__all__ = ["DEFAULT_QUEUE", "PERFORM", "RQExecutor", "perform"]

logger = logging.getLogger("wsgi_deferred")

#: The queue both tiers use, and the function the jobs name.
DEFAULT_QUEUE = "wsgi_deferred"
PERFORM = "wsgi_deferred.executors.rq.perform"
#: Seconds RQ keeps a failed job (a killed horse) for inspection; the store has the truth.
FAILURE_TTL = 3600
#: Seconds to reach Redis before an enqueue gives up (the task then reads `lost`).
CONNECT_TIMEOUT = 4.0

#: The runner of ``wsgi-deferred worker``, set before RQ forks its work horses.
_RUNNER: TaskRunner | None = None


def perform(task_id: str) -> None:
    """The job function: run the task the web tier deferred (work horse side)."""
    if _RUNNER is None:
        raise RuntimeError("wsgi_deferred jobs run under 'wsgi-deferred worker' only")
    run_delivered(_RUNNER, task_id)


class RQExecutor(RemoteExecutor):
    """Attached tasks go to RQ workers; detached ones (inline waits) run here."""

    def __init__(self, runner: TaskRunner, *, engine: str | Queue, **options: Any) -> None:
        super().__init__(runner, **options)
        if isinstance(engine, str):
            connection = Redis.from_url(
                engine, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=CONNECT_TIMEOUT
            )
            engine = Queue(DEFAULT_QUEUE, connection=connection, serializer=JSONSerializer)
        elif not isinstance(engine, Queue):
            raise ConfigurationError(f"not an rq.Queue: {engine!r}")
        self.queue = engine

    def send(self, task_id: str) -> bool:
        try:
            self.queue.enqueue(
                PERFORM, task_id, job_timeout=-1, result_ttl=0, failure_ttl=FAILURE_TTL
            )
        except Exception as exc:  # redis-py's errors, RQ's own
            logger.error(
                "task %s: cannot reach the RQ queue: %s", task_id, exc, extra=task_extra(task_id)
            )
            return False
        return True

    def run_worker(self, middleware: Any, concurrency: int | None, loglevel: str) -> int:
        global _RUNNER
        _RUNNER = middleware.runner
        self._in_worker = True
        queue = self.queue
        if concurrency is None or concurrency <= 1:
            worker = Worker([queue], connection=queue.connection, serializer=queue.serializer)
            worker.work(logging_level=loglevel.upper())
            return 0
        from rq.worker_pool import WorkerPool

        pool = WorkerPool(
            [queue.name], connection=queue.connection, num_workers=concurrency,
            serializer=queue.serializer,
        )  # fmt: skip
        pool.start(logging_level=loglevel.upper())
        return 0
