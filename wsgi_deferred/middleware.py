"""``DeferredMiddleware``: answer slow requests with ``202 Accepted`` and a status URL.

Usage::

    from wsgi_deferred import DeferredMiddleware

    app.wsgi_app = DeferredMiddleware(app.wsgi_app, routes=["POST /render/<id>"])

A request that matches ``routes`` (or asks ``Prefer: respond-async``) is captured, answered
``202`` with ``Location: /status/<id>`` at once, and replayed in a worker thread; the status URL
serves the app's exact response once it is done. With ``defer_after=S`` every request runs in
the pool and only those still running after S seconds get the ``202``. Everything else goes
straight to the app. This module only decides; the work is done by ``capture``, ``runner``,
``pool``, ``status`` and the stores.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from .admission import Admission, default_client_limit
from .binding import Binding, BindOption
from .capture import BodyError, ChainedInput, RequestSnapshot, capture_request
from .errors import ConfigurationError, PoolFull, StoreUnavailable
from .estimate import DurationHistory
from .executors import open_executor
from .handover import answer_inline, hand_over_after
from .holds import INLINE, HoldBudget
from .metrics import Metrics
from .pages import render_message, wants_html
from .pool import DEFAULT_DRAIN_TIMEOUT, ClientLimit
from .replay import StartResponse, WSGIApp
from .rules import RuleSet, parse_prefer
from .runner import Job, TaskRunner
from .sanitize import url_prefix
from .status import StatusEndpoint, respond, respond_busy
from .store_choice import StoreChoice
from .stores import Store
from .task import TaskRecord, TaskState, is_task_id, new_task_id
from .tasklog import task_extra

__all__ = ["DeferredMiddleware"]

logger = logging.getLogger("wsgi_deferred")

DEFAULT_WORKERS = 8  # threads per process
DEFAULT_MAX_PENDING = 1000  # queued + running tasks per process
DEFAULT_STATUS_PATH = "/status/"
DEFAULT_RESULT_TTL = 600.0  # seconds a finished result stays fetchable
DEFAULT_MAX_BODY = 100 * 2**20  # bytes of request body captured at most
DEFAULT_LEASE_TIMEOUT = 30.0  # seconds without a heartbeat before a task reads `lost`
DEFAULT_MAX_ATTEMPTS = 3  # runs at most of a task on a `retry` rule
DEFAULT_MAX_WAIT = 25.0  # seconds a `Prefer: wait` may hold a request (under Heroku's 30 s)
PURGE_INTERVAL = 60.0  # seconds between two sweeps of expired results


class DeferredMiddleware:
    """WSGI middleware that defers marked requests. See the module docstring and README."""

    def __init__(
        self,
        app: WSGIApp,
        routes: Iterable[str] | str | None = None,
        *,
        store: str | Store | None = None,
        workers: int = DEFAULT_WORKERS,
        max_pending: int = DEFAULT_MAX_PENDING,
        status_path: str = DEFAULT_STATUS_PATH,
        result_ttl: float = DEFAULT_RESULT_TTL,
        defer_after: float | None = None,
        honor_prefer: bool = True,
        exclude: Iterable[str] | str | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        lease_timeout: float = DEFAULT_LEASE_TIMEOUT,
        bind: BindOption = None,
        max_pending_per_client: int | None = None,
        max_wait: float = DEFAULT_MAX_WAIT,
        max_holds: int | None = None,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        metrics_path: str | None = None,
        debug: bool = False,
        executor: Any = None,
        retry: Iterable[str] | str | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        if not callable(app):
            raise ConfigurationError(f"app must be a WSGI callable, not {app!r}")
        _require(workers >= 1, "workers must be at least 1")
        _require(max_pending >= 1, "max_pending must be at least 1")
        _require(result_ttl > 0, "result_ttl must be positive (seconds)")
        _require(lease_timeout > 0, "lease_timeout must be positive (seconds)")
        _require(
            isinstance(max_attempts, int) and max_attempts >= 1, "max_attempts must be at least 1"
        )
        _require(max_body >= 0, "max_body must be >= 0 (bytes)")
        _require(max_wait >= 0, "max_wait must be >= 0 (seconds)")
        _require(max_holds is None or max_holds >= 0, "max_holds must be >= 0 (requests)")
        _require(defer_after is None or defer_after >= 0, "defer_after must be >= 0 (seconds)")
        _require(
            max_pending_per_client is None or max_pending_per_client >= 1,
            "max_pending_per_client must be at least 1",
        )
        _require(
            isinstance(status_path, str)
            and status_path.startswith("/")
            and status_path.endswith("/"),
            f"status_path must start and end with '/', not {status_path!r}",
        )
        self.app = app
        self.routes = RuleSet(routes)
        self.exclude = RuleSet(exclude)
        #: Rules whose tasks may run again when the process running them died.
        self.retry = RuleSet(retry)
        self.max_attempts = max_attempts
        self.status_path = status_path
        self.result_ttl = float(result_ttl)
        self.defer_after = defer_after
        self.honor_prefer = honor_prefer
        self.max_body = max_body
        self.max_wait = float(max_wait)
        _require(
            metrics_path is None
            or (metrics_path.startswith("/") and not metrics_path.startswith(status_path)),
            f"metrics_path must start with '/' and lie outside status_path, not {metrics_path!r}",
        )
        #: Path of the Prometheus text endpoint, off (None) by default.
        self.metrics_path = metrics_path
        self.metrics = Metrics(prometheus=metrics_path is not None)
        #: The store given, or the automatic one once the first request chose it.
        self.store_choice = StoreChoice(store)
        self._last_purge = time.monotonic()
        self.binding = Binding(bind, self.store_choice.secret)
        #: Per-client pending tasks, counted in the store for the whole deployment; a fair
        #: share of max_pending unless max_pending_per_client says otherwise.
        self.admission = Admission(
            max_pending_per_client or default_client_limit(max_pending),
            float(lease_timeout),
            self.get_store,
            running_here=lambda task_id: self.pool.find(task_id) is not None,
        )
        self.runner = TaskRunner(
            app,
            self.get_store,
            result_ttl=self.result_ttl,
            lease_timeout=float(lease_timeout),
            on_finished=self._finished,
            debug=debug,
            max_attempts_for=self._max_attempts_for if self.retry else None,
        )
        #: Where tasks run (docs/execution.md, "Execution tier"); ``pool`` is the same object.
        self.executor = self.pool = open_executor(
            executor,
            self.runner,
            workers=workers,
            max_pending=max_pending,
            max_pending_per_client=None,  # counted by self.admission, in the store
            heartbeat_interval=float(lease_timeout) / 3,
            on_heartbeat=self._heartbeat,
            drain_timeout=drain_timeout,
            on_release=self.admission.release_job,
        )
        chosen = self.store_choice.store
        if self.executor.remote and (chosen is None or not chosen.shared):
            # Its tasks run in other processes, which read the captured request from the
            # store: a private (or the automatic, per-server) store would lose every task.
            self.close(0)
            raise ConfigurationError(
                f"executor {type(self.executor).__name__} runs tasks in other processes and "
                "needs a shared store: store='sqlite:///path' (one host) or "
                f"'redis://host:6379/0', the same as the workers', not {store!r}"
            )
        self.pool.on_change = self.metrics.watch(self.pool)  # Prometheus gauges, if on
        #: Requests this process may hold at once (docs/protocol.md, "Holds").
        self.holds = HoldBudget(max_holds)
        #: Run times per route, behind Retry-After (docs/protocol.md, "Retry-After and the
        #: estimate").
        self.history = DurationHistory()
        self.status = StatusEndpoint(
            self.get_store,
            max_wait=self.max_wait,
            owner_of=self.binding.owner_of,
            on_cancel=self._cancelled_locally,
            holds=self.holds,
            history=self.history,
            queue=lambda: (max(0, self.pool.pending - self.pool.running), workers),
        )
        # Pass-through fast path: one startswith per prefix tuple and a dict lookup.
        self._status_len = len(status_path)
        self._prefer_key = "HTTP_PREFER" if honor_prefer else "\0"
        self._route_prefixes = self.routes.prefixes

    # -- the WSGI entry point --------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith(self.status_path):
            task_id = path[self._status_len :]
            if is_task_id(task_id):
                return self.status(
                    environ, start_response, task_id, self.status_url(environ, task_id)
                )
        if path == self.metrics_path:
            return self.metrics.serve(self.stats(), environ, start_response)
        if (
            self.defer_after is None
            and self._prefer_key not in environ
            and not path.startswith(self._route_prefixes)
        ):
            return self.app(environ, start_response)
        return self._dispatch(environ, start_response, path)

    def _dispatch(
        self, environ: dict[str, Any], start_response: StartResponse, path: str
    ) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET").upper()
        if method == "HEAD":
            # Never deferred: a stored HEAD response (Content-Length, no body) would later
            # be served to the GET pollers of the status URL as a truncated response.
            return self.app(environ, start_response)
        prefer = environ.get("HTTP_PREFER", "") if self.honor_prefer else ""
        # Cheap tests first: an unrelated Prefer (return=minimal) or a rule's prefix with
        # another method must stay close to the pass-through cost.
        lowered = prefer.lower()  # RFC 7240 preference names are case-insensitive
        prefs = parse_prefer(prefer) if "respond-async" in lowered or "wait" in lowered else None
        asked_async = prefs is not None and prefs.respond_async
        marked = asked_async or self.routes.matches(method, path)
        if not marked and self.defer_after is None:
            return self.app(environ, start_response)
        if self.exclude and self.exclude.matches(method, path):
            return self.app(environ, start_response)
        if self.binding.is_anonymous(environ):
            # bind is on and this requester has no credential: its task could be bound to
            # nobody (docs/security.md, "Anonymous requesters"), so it runs inline, as is.
            self.metrics.incr("passed_through_anonymous")
            return self.app(environ, start_response)
        if marked:
            wait = min((prefs.wait if prefs else None) or 0.0, self.max_wait)
        else:
            wait = self.defer_after  # type: ignore[assignment]
        return self._defer(environ, start_response, marked, wait, asked_async)

    # -- deferring -------------------------------------------------------------------------

    def _defer(
        self,
        environ: dict[str, Any],
        start_response: StartResponse,
        marked: bool,
        wait: float,
        asked_async: bool,
    ) -> Iterable[bytes]:
        html = wants_html(environ)
        try:
            snapshot = capture_request(environ, self.max_body)
        except BodyError as exc:
            if not marked and exc.status.startswith("413"):
                # defer_after alone: too big to buffer for replay, so run it inline, as is.
                self.metrics.incr("passed_through_large_body")
                if exc.partial is not None:
                    head = exc.partial.open()
                    exc.partial.discard()  # the open reader keeps the data (POSIX)
                    environ["wsgi.input"] = ChainedInput(head, environ["wsgi.input"])
                return self.app(environ, start_response)
            if exc.partial is not None:
                # A marked route answers 413: what was read of the body is never used, and a
                # spilled temp file would otherwise outlive the request (a disk-fill DoS).
                exc.partial.discard()
            self.metrics.incr("rejected_body")
            body, ctype = render_message(exc.status, exc.message, html)
            return respond(start_response, exc.status, body, ctype)
        try:
            self.get_store(environ)  # chosen now, from this request's wsgi.multiprocess
            owner = self.binding.owner_of(environ)
        except StoreUnavailable as exc:
            snapshot.discard()
            return respond_busy(start_response, "503 Service Unavailable", str(exc), html)
        client_key = owner or environ.get("REMOTE_ADDR")
        task_id = new_task_id()
        try:
            self.pool.reserve(client_key)  # this process's queue first: no store trip if full
        except ClientLimit as exc:
            snapshot.discard()
            self.metrics.incr("rejected_client_limit")
            return respond_busy(start_response, "429 Too Many Requests", str(exc), html)
        except PoolFull as exc:
            snapshot.discard()
            self.metrics.incr("rejected_pool_full")
            return respond_busy(start_response, "503 Service Unavailable", str(exc), html)
        job = Job(
            self.runner, task_id, snapshot, owner=owner, client_key=client_key, attached=False
        )
        if self.metrics.exporter is not None:
            job.rule = self._rule_label(environ, asked_async)
        # An inline wait is a hold: past the budget the client gets the 202 at once.
        held = wait > 0 and self.holds.try_acquire(environ, INLINE)
        if not held:
            # A client slot (counted in the store, for the deployment) before the task
            # exists; a job that may finish inline takes one only if it is handed over.
            try:
                # A remote engine's queue may hold the task up to its queued lease.
                lease = self.runner.lease_for(TaskState.QUEUED)
                admitted = self.admission.acquire(client_key, task_id, lease)
                if admitted:
                    self.runner.attach(job)
            except StoreUnavailable as exc:
                self.pool.release(client_key)
                self.admission.release(task_id)
                snapshot.discard()
                return respond_busy(start_response, "503 Service Unavailable", str(exc), html)
            if not admitted and not marked:
                # defer_after alone (no hold to spare): over its quota the client gets what
                # it would get without the middleware, its answer inline, not a 429.
                self.metrics.incr("inline_client_limit")
                self.pool.submit(job)
                job.done.wait()
                return answer_inline(job, environ, start_response, self.metrics)
            if not admitted:
                self.pool.release(client_key)
                snapshot.discard()
                self.metrics.incr("rejected_client_limit")
                message = f"this client already has {self.admission.limit} pending tasks"
                return respond_busy(start_response, "429 Too Many Requests", message, html)
            self.pool.submit(job)
        else:
            try:
                self.pool.submit(job)
                handed_over = hand_over_after(job, wait, self.admission, self.runner, self.metrics)
                if not handed_over:
                    return answer_inline(job, environ, start_response, self.metrics)
            finally:
                self.holds.release()
        self.metrics.incr("deferred")
        logger.info("task %s: deferred %s", job.id, snapshot.label, extra=task_extra(job.id))
        extra = [("Preference-Applied", "respond-async")] if asked_async else []
        with job.lock:
            record = job.record()
        return self.status.accepted(
            start_response, record, self.status_url(environ, job.id), html, extra_headers=extra
        )

    # -- helpers ---------------------------------------------------------------------------

    def status_url(self, environ: dict[str, Any], task_id: str) -> str:
        """``SCRIPT_NAME + status_path + id`` as an absolute path (works behind proxies)."""
        # Normalised first: a SCRIPT_NAME of "//evil.example" must not become a Location
        # on another host (see wsgi_deferred.sanitize).
        script_name = url_prefix(str(environ.get("SCRIPT_NAME", "")))
        return (
            quote(script_name.encode("latin-1", "replace"), safe="/") + self.status_path + task_id
        )

    def get_store(self, environ: dict[str, Any] | None = None) -> Store:
        """The store, created on first use. With ``store=None`` the choice depends on the
        server's ``wsgi.multiprocess``, so every request path passes its *environ*; only
        code that runs after a request chose the store (runner, purge) may omit it."""
        store = self.store_choice.get(environ)
        self.pool.ensure_sweeper()  # retries: once per serving process, a no-op after
        return store

    def _heartbeat(self, jobs: list[Any]) -> None:
        """Renew the leases of this process's tasks and the client slots they hold."""
        try:
            self.runner.heartbeat(jobs)
        finally:
            self.admission.renew()

    def _max_attempts_for(self, snapshot: RequestSnapshot) -> int:
        variables = snapshot.variables
        matched = self.retry.matches(snapshot.method.upper(), variables.get("PATH_INFO", ""))
        return self.max_attempts if matched else 1

    def _cancelled_locally(self, record: TaskRecord) -> None:
        """A DELETE succeeded here; *record* is the task as it was before."""
        job = self.pool.find(record.id)
        if job is not None:
            job.cancel_flag.set()  # type: ignore[attr-defined]
        elif record.state is TaskState.QUEUED:
            # Waiting (at a remote engine, or in another process's queue), where it will
            # never run now: its client slot is free. A running task keeps its slot until
            # its runner has stopped and gives it back. (A worker that took the task between
            # the read and the cancel gets its slot back early: brief over-admission, never
            # a slot left behind.)
            self.admission.release_cancelled(record.id)
        self.metrics.incr("cancelled")

    def _rule_label(self, environ: dict[str, Any], asked_async: bool) -> str:
        """What deferred the request, as a bounded metrics label (never the raw path)."""
        method = environ.get("REQUEST_METHOD", "GET").upper()
        rule = self.routes.rule_for(method, environ.get("PATH_INFO", ""))
        return rule or ("Prefer: respond-async" if asked_async else "defer_after")

    def _finished(self, job: Job, outcome: str, elapsed: float) -> None:
        if outcome != "cancelled":  # a cancel is counted once, where it is accepted
            self.metrics.incr(outcome)
        if outcome == "done":
            self.history.record(job.id, job.snapshot.label, elapsed)
        self.metrics.observe("run_seconds", elapsed, job.rule)
        if job.started is not None:
            self.metrics.observe("wait_seconds", job.started - job.created, job.rule)
        if time.monotonic() - self._last_purge > PURGE_INTERVAL:
            self._last_purge = time.monotonic()
            with contextlib.suppress(StoreUnavailable):
                self.get_store().purge()

    def stats(self) -> dict[str, object]:
        """Counters, durations and gauges of this process (for logs, dashboards, tests)."""
        data = self.metrics.snapshot()
        data["pending"] = pending = self.pool.pending
        data["running"] = running = self.pool.running
        data["queued"] = max(0, pending - running)
        return data

    def close(self, timeout: float | None = None) -> None:
        """Drain the pool (see :meth:`WorkerPool.shutdown`) and close the store."""
        self.pool.shutdown(timeout)
        self.store_choice.close()


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigurationError(message)
