"""The status URL: ``SCRIPT_NAME + status_path + id``.

=============  ===================================================================
``GET/HEAD``   queued/running → ``202`` + ``Location`` + ``Retry-After``;
               done → the app's own response, verbatim (less hop-by-hop headers);
               failed/lost → ``500`` naming the state; unknown, expired, deleted,
               cancelled or not yours → one uniform ``404``.
               ``Prefer: wait=N`` holds the request up to N s (capped) until the end,
               within the process's hold budget (:mod:`wsgi_deferred.holds`); a
               poll of a task about to end may be held briefly without asking.
``DELETE``     ``204``: cancel a queued/running task or delete a result.
``POST``       with the form field ``action=cancel``: the no-JavaScript cancel button of
               the waiting page; answers a small "Cancelled" page.
other          ``405`` with ``Allow: GET, HEAD, DELETE``.
=============  ===================================================================
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from .errors import StoreUnavailable
from .estimate import DurationHistory, retry_after_seconds
from .holds import POLL, HoldBudget
from .pages import JSON_TYPE, render_message, render_status, wants_html
from .replay import StartResponse, serve_body
from .rules import parse_prefer
from .stores.base import Store
from .task import TaskRecord, TaskState
from .tasklog import task_extra

__all__ = ["NO_STORE_HEADERS", "StatusEndpoint", "respond", "retry_after"]

logger = logging.getLogger("wsgi_deferred")

#: Headers on every response the middleware writes itself (docs/protocol.md, "Errors").
NO_STORE_HEADERS = [
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
]
ALLOW = "GET, HEAD, DELETE"
#: Seconds a client is told to wait after a 503 (pool full, store down) or a 429.
BUSY_RETRY_AFTER = 5
#: Bytes of form body read for the cancel button (``action=cancel`` is 13 bytes).
MAX_CANCEL_FORM = 1024
#: Seconds a poll without ``Prefer: wait`` may be held, at most, when its task is estimated
#: to end within that time (docs/protocol.md, "Holds"): a client that polls at once and then
#: sleeps ``Retry-After`` gets a short job's result without a wasted second.
BRIEF_HOLD_MAX = 1.0
#: Seconds added to the estimate when briefly holding: estimates are medians, not promises.
BRIEF_HOLD_SLACK = 0.25
#: Seconds a poll is held when the route has no history yet and the task is young
#: (under :data:`YOUNG_TASK` seconds old): most deferred work is short.
UNKNOWN_BRIEF_HOLD = 0.25
YOUNG_TASK = 1.0


def retry_after(record: TaskRecord, remaining: float | None = None) -> int:
    """Whole seconds until the next poll (>= 1): see :func:`retry_after_seconds`."""
    return retry_after_seconds(remaining, time.time() - record.created)


def respond(
    start_response: StartResponse,
    status: str,
    body: bytes,
    content_type: str,
    extra_headers: Iterable[tuple[str, str]] = (),
    head: bool = False,
) -> list[bytes]:
    """Send one of our own small responses."""
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
    headers += NO_STORE_HEADERS
    headers += extra_headers
    start_response(status, headers)
    return [] if head else [body]


def respond_busy(
    start_response: StartResponse, status: str, message: str, html: bool, head: bool = False
) -> list[bytes]:
    """A ``503``/``429`` of ours: the message as a page or text, and when to come back."""
    body, ctype = render_message(status, message, html)
    extra = [("Retry-After", str(BUSY_RETRY_AFTER))]
    return respond(start_response, status, body, ctype, extra, head)


class StatusEndpoint:
    """Answers requests for status URLs (the middleware has checked the id format)."""

    def __init__(
        self,
        store_getter: Callable[[dict[str, Any]], Store],
        *,
        max_wait: float,
        owner_of: Callable[[dict[str, Any]], str | None],
        on_cancel: Callable[[TaskRecord], None],
        holds: HoldBudget | None = None,
        history: DurationHistory | None = None,
        queue: Callable[[], tuple[int, int]] = lambda: (0, 1),
    ) -> None:
        self._store = store_getter
        self.max_wait = max_wait
        self.owner_of = owner_of
        self.on_cancel = on_cancel
        self.holds = holds if holds is not None else HoldBudget()
        self.history = history if history is not None else DurationHistory()
        #: ``() -> (queued tasks, worker threads)`` of this process, for queued estimates.
        self.queue = queue

    def __call__(
        self, environ: dict[str, Any], start_response: StartResponse, task_id: str, url: str
    ) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET").upper()
        html = wants_html(environ)
        head = method == "HEAD"
        try:
            if method in ("GET", "HEAD"):
                return self._get(environ, start_response, task_id, url, html, head)
            if method == "DELETE":
                return self._cancel(environ, start_response, task_id, html, form=False)
            if method == "POST" and _is_cancel_form(environ):
                return self._cancel(environ, start_response, task_id, html, form=True)
        except StoreUnavailable as exc:
            logger.warning(
                "task %s: status unavailable: %s", task_id, exc, extra=task_extra(task_id)
            )
            message = "the task store is unavailable; try again"
            return respond_busy(start_response, "503 Service Unavailable", message, html, head)
        body, ctype = render_message("405 Method Not Allowed", "method not allowed", html)
        return respond(start_response, "405 Method Not Allowed", body, ctype, [("Allow", ALLOW)])

    # -- GET / HEAD ------------------------------------------------------------------------

    def _visible(self, environ: dict[str, Any], record: TaskRecord | None) -> TaskRecord | None:
        """*record*, or None when the requester must get the uniform 404."""
        if record is None or record.state is TaskState.CANCELLED:
            return None
        if record.owner is not None and record.owner != self.owner_of(environ):
            return None
        return record

    def _get(
        self,
        environ: dict[str, Any],
        start_response: StartResponse,
        task_id: str,
        url: str,
        html: bool,
        head: bool,
    ) -> Iterable[bytes]:
        store = self._store(environ)
        record = self._visible(environ, store.get(task_id))
        wait = parse_prefer(environ.get("HTTP_PREFER")).wait
        applied: list[tuple[str, str]] = []
        refused = False
        if record is not None and not record.state.is_final:
            # Long poll (RFC 7240 "wait") or a brief hold of a task about to end; either
            # only within the hold budget, else answered at once (docs/protocol.md, "Holds").
            seconds = min(wait, self.max_wait) if wait else self._brief_hold(record)
            if seconds > 0:
                with self.holds.hold(environ, POLL) as held:
                    if held:
                        record = self._visible(environ, store.wait(task_id, seconds))
                        if wait:
                            applied = [("Preference-Applied", f"wait={math.ceil(seconds)}")]
                    refused = not held
        if record is None:
            return self.not_found(start_response, html, head)
        if record.state is TaskState.DONE:
            self.history.observe(record)
            reader = store.open_body(task_id)
            if reader is None:  # deleted or expired between the two reads
                return self.not_found(start_response, html, head)
            start_response(record.status, list(record.headers or []))
            if head:
                reader.close()
                return []
            return serve_body(environ, reader)
        if record.state.is_final:  # failed or lost
            body, ctype = render_status(record, url, html)
            return respond(start_response, "500 Internal Server Error", body, ctype, head=head)
        return self.accepted(start_response, record, url, html, head, applied, refused)

    def remaining(self, record: TaskRecord) -> float | None:
        """Seconds *record* probably has left (see :mod:`wsgi_deferred.estimate`)."""
        queued, workers = self.queue()
        return self.history.remaining(record, queued_ahead=queued - 1, workers=workers)

    def _brief_hold(self, record: TaskRecord) -> float:
        """Seconds to hold a poll that did not ask to wait: > 0 only when the task should
        end within :data:`BRIEF_HOLD_MAX`, by its route's history (or, with none yet, while
        the task is young)."""
        remaining = self.remaining(record)
        if remaining is None:
            young = time.time() - record.created < YOUNG_TASK
            return UNKNOWN_BRIEF_HOLD if young else 0.0
        if remaining > BRIEF_HOLD_MAX:
            return 0.0
        return min(BRIEF_HOLD_MAX, remaining + max(BRIEF_HOLD_SLACK, remaining / 2))

    def accepted(
        self,
        start_response: StartResponse,
        record: TaskRecord,
        url: str,
        html: bool,
        head: bool = False,
        extra_headers: Iterable[tuple[str, str]] = (),
        refused: bool = False,
    ) -> list[bytes]:
        """The ``202 Accepted`` for a queued or running task (also the first answer);
        *refused*: a hold this poll wanted was refused (the budget is spent)."""
        remaining = self.remaining(record)
        seconds = retry_after(record, remaining)
        if refused and remaining is None:
            # No estimate to aim at: spread a crowd of refused pollers out (holds.backoff).
            seconds = max(seconds, self.holds.backoff())
        # A person watching a page wants to see progress: reload at the age-based pace
        # (1 s while young) unless the estimate says the end comes sooner.
        refresh = min(seconds, retry_after(record)) if html and not refused else seconds
        body, ctype = render_status(record, url, html, refresh=refresh, estimate=remaining)
        headers = [("Location", url), ("Retry-After", str(seconds)), ("Vary", "Accept, Prefer")]
        if html:
            headers.append(("Refresh", f"{refresh}; url={url}"))
        headers += extra_headers
        return respond(start_response, "202 Accepted", body, ctype, headers, head)

    def not_found(
        self, start_response: StartResponse, html: bool, head: bool = False
    ) -> list[bytes]:
        # One body for unknown, expired, deleted, cancelled and not-yours: existence is never
        # revealed (docs/protocol.md, "Errors").
        body, ctype = render_message("404 Not Found", "no such task", html)
        return respond(start_response, "404 Not Found", body, ctype, head=head)

    # -- DELETE / cancel form --------------------------------------------------------------

    def _cancel(
        self,
        environ: dict[str, Any],
        start_response: StartResponse,
        task_id: str,
        html: bool,
        form: bool,
    ) -> Iterable[bytes]:
        store = self._store(environ)
        record = self._visible(environ, store.get(task_id))
        if record is None or not store.cancel(task_id):
            return self.not_found(start_response, html)
        self.on_cancel(record)  # as it was before the cancel
        logger.info("task %s: cancelled by the client", task_id, extra=task_extra(task_id))
        if not form:
            start_response("204 No Content", list(NO_STORE_HEADERS))
            return []
        if html:
            body, ctype = render_message("Cancelled", "The request was cancelled.", html)
        else:
            body, ctype = json.dumps({"id": task_id, "state": "cancelled"}).encode(), JSON_TYPE
        return respond(start_response, "200 OK", body, ctype)


def _is_cancel_form(environ: dict[str, Any]) -> bool:
    """True for the waiting page's ``<form method=post>`` with ``action=cancel``."""
    ctype = environ.get("CONTENT_TYPE", "")
    if not ctype.startswith("application/x-www-form-urlencoded"):
        return False
    try:
        length = min(int(environ.get("CONTENT_LENGTH") or 0), MAX_CANCEL_FORM)
        data = environ["wsgi.input"].read(length) if length > 0 else b""
    except (ValueError, OSError, KeyError):
        return False
    fields = parse_qs(data.decode("latin-1"))
    return fields.get("action") == ["cancel"]
