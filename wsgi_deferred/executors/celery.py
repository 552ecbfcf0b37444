"""The Celery executor: ``executor="celery+amqp://guest@host//"``, ``"celery+redis://host/1"``
or a ``celery.Celery`` app (docs/execution.md, "Execution tier").

The web process keeps the captured request in the (shared) store and sends Celery only the
task id, by name (``send_task``): it needs no task code, and no payload travels through the
broker (the JSON serializer would base64 bodies; Redis brokers keep every in-flight message
twice). ``wsgi-deferred worker APP`` runs a prefork Celery worker that imports APP once,
before forking, and replays each delivery against the app inside the middleware.

Delivery options: ``acks_late`` (acked once the run ended), ``reject_on_worker_lost`` (a pool
child killed by a signal puts its message back instead of acking it), prefetch 1 (one task
per child at a time) and ``ignore_result`` (state and response live in the store). Every
delivery passes the store's gate (:meth:`~wsgi_deferred.stores.base.Store.deliver`), so the
Redis broker's redelivery of a task that outlives ``visibility_timeout``, and the requeue of a
killed child's message, never run a task twice while its lease is live.

Celery is an optional extra (``pip install 'wsgi_deferred[celery]'``), imported only here.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from celery import Celery

from ..errors import ConfigurationError
from ..tasklog import task_extra
from .base import RemoteExecutor
from .delivery import run_delivered

if TYPE_CHECKING:
    from ..runner import TaskRunner

__all__ = ["DEFAULT_QUEUE", "TASK_NAME", "CeleryExecutor", "configure"]

logger = logging.getLogger("wsgi_deferred")

#: The name the web tier sends and the worker registers.
TASK_NAME = "wsgi_deferred.run"
#: Queue (and routing key) of wsgi_deferred's messages, apart from an app's own tasks.
DEFAULT_QUEUE = "wsgi_deferred"
#: Seconds to reach the broker before a submit gives up (the task then reads `lost`).
CONNECT_TIMEOUT = 4.0
#: Publishing retries when the broker connection drops: bounded, so a request never hangs.
PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.0, "interval_step": 0.5, "interval_max": 1.0}
#: Task options of the worker side (the research note in docs/execution.md gives the reasons).
TASK_OPTIONS: dict[str, Any] = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "ignore_result": True,
    "bind": False,
}


def configure(app: Celery) -> Celery:
    """The settings of a Celery app made from an ``executor`` URL."""
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_timeout=CONNECT_TIMEOUT,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


class CeleryExecutor(RemoteExecutor):
    """Attached tasks go to Celery workers; detached ones (inline waits) run here."""

    def __init__(
        self,
        runner: TaskRunner,
        *,
        engine: str | Celery,
        **options: Any,
    ) -> None:
        super().__init__(runner, **options)
        if isinstance(engine, str):
            engine = configure(Celery("wsgi_deferred", broker=engine, set_as_current=False))
        elif not isinstance(engine, Celery):
            raise ConfigurationError(f"not a celery.Celery app: {engine!r}")
        self.celery = engine
        #: The queue both tiers use: the app's ``wsgi_deferred_queue`` setting, if any.
        self.queue: str = engine.conf.get("wsgi_deferred_queue") or DEFAULT_QUEUE

    # -- the web side -------------------------------------------------------------------------

    def send(self, task_id: str) -> bool:
        """Send the task id to the workers; False (logged) when the broker is unreachable."""
        try:
            self.celery.send_task(
                TASK_NAME,
                args=[task_id],
                queue=self.queue,
                ignore_result=True,
                retry=True,
                retry_policy=PUBLISH_RETRY,
            )
        except Exception as exc:  # kombu/amqp raise their own errors (OperationalError...)
            logger.error(
                "task %s: cannot reach the Celery broker: %s",
                task_id,
                exc,
                extra=task_extra(task_id),
            )
            return False
        return True

    # -- the worker side ----------------------------------------------------------------------

    def run_worker(self, middleware: Any, concurrency: int | None, loglevel: str) -> int:
        runner = middleware.runner

        @self.celery.task(name=TASK_NAME, **TASK_OPTIONS)  # type: ignore[misc]
        def run(task_id: str) -> None:
            run_delivered(runner, task_id)

        self._in_worker = True
        argv = [
            "worker",
            "--pool=prefork",
            f"--queues={self.queue}",
            "--prefetch-multiplier=1",
            f"--loglevel={loglevel}",
            f"--hostname=wsgi-deferred-{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
        if concurrency is not None:
            argv.append(f"--concurrency={concurrency}")
        self.celery.worker_main(argv)
        return 0
