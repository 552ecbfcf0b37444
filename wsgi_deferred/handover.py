"""A detached job's two endings: handed over to the store (the client gets a ``202``), or
answered inline, as if the app had run in the request's own thread.

A *detached* job is one that may still be answered inline: ``defer_after=S`` runs every
request in the pool and waits S seconds, ``Prefer: wait=N`` on a marked request waits N
(docs/protocol.md, "Waiting"). The middleware waits with :func:`hand_over_after`; when that
returns False it answers with :func:`answer_inline`::

    if not hand_over_after(job, wait, admission, runner, metrics):
        return answer_inline(job, environ, start_response, metrics)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .errors import StoreUnavailable
from .pages import wants_html
from .replay import StartResponse, serve_body
from .status import respond_busy
from .task import TaskState
from .tasklog import task_extra

if TYPE_CHECKING:
    from .admission import Admission
    from .metrics import Metrics
    from .runner import Job, TaskRunner

__all__ = ["answer_inline", "hand_over_after"]

logger = logging.getLogger("wsgi_deferred")


def hand_over_after(
    job: Job, wait: float, admission: Admission, runner: TaskRunner, metrics: Metrics
) -> bool:
    """Wait up to *wait* seconds for an inline finish; True when the job was handed to
    the store (the client gets a 202), False when it must be answered inline."""
    if job.done.wait(wait):
        return False
    with job.lock:
        if job.done.is_set() or job.state in (TaskState.DONE, TaskState.FAILED):
            # Finished (or abandoned by shutdown) in the instant between wait and lock.
            return False
        try:
            if admission.acquire(job.client_key, job.id):
                runner.attach(job)
                return True
            # Over its quota: no 202, the client waits for its answer inline (it holds
            # its own connection, as without the middleware).
            metrics.incr("inline_client_limit")
        except StoreUnavailable:
            admission.release(job.id)
            logger.warning(
                "task %s: store unavailable, answering inline instead",
                job.id,
                extra=task_extra(job.id),
            )
    job.done.wait()  # nothing better to do than what the app would have done inline
    return False


def answer_inline(
    job: Job, environ: dict[str, Any], start_response: StartResponse, metrics: Metrics
) -> Iterable[bytes]:
    """Answer with the job's outcome as if the app had run in this thread."""
    if job.response is None and job.exc_info is None:
        # Abandoned by a shutdown before it started: nothing ran, nothing was stored.
        message = "the server is shutting down"
        return respond_busy(start_response, "503 Service Unavailable", message, wants_html(environ))
    metrics.incr("inline")
    if job.exc_info is not None:
        exc = job.exc_info[1]
        job.exc_info = None
        raise exc  # "identical": the server sees the app's own exception (docs/protocol.md)
    response = job.response
    assert response is not None
    try:
        start_response(response.status, response.headers)
        reader = response.body.open()
    finally:
        response.body.discard()  # an open reader keeps the data (POSIX)
    return serve_body(environ, reader)
