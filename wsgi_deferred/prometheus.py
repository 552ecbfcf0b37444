"""Deployment-wide metrics through ``prometheus_client`` (``wsgi_deferred[prometheus]``).

Imported only when metrics are on (``metrics_path`` set) and prometheus_client is installed;
otherwise :mod:`wsgi_deferred.metrics` serves its own per-process text.

* One set of metric objects per process, in prometheus_client's default registry, so an app
  that exposes ``prometheus_client.REGISTRY`` at its own ``/metrics`` shows ours too, and
  every :class:`~wsgi_deferred.DeferredMiddleware` of the process counts into them.
* Under several worker processes (``gunicorn -w N``), prometheus_client's multiprocess mode
  (``PROMETHEUS_MULTIPROC_DIR`` set before prometheus_client is imported): every process
  writes its values to files in that directory, and a scrape of any worker reads them all.
  Counters and histograms of a worker that died stay in the sum (a counter never goes back);
  ``gunicorn``'s ``child_exit`` hook must call :func:`mark_process_dead` so the live gauges of
  a dead worker are dropped (``wsgi-deferred serve`` does both; docs/deploying.md shows the
  two lines for plain gunicorn).
* Multiprocess mode reads files, not callbacks, at scrape time, so the gauges are *set* by
  each process whenever its pool changes (``WorkerPool.on_change``) and summed over live
  processes (``livesum``).
* Duration histograms carry a ``rule`` label: the route rule that deferred the task (or
  ``Prefer: respond-async`` / ``defer_after``), never the raw path, so cardinality is bounded
  by the configuration.
"""

from __future__ import annotations

import os
import struct
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    exposition,
    multiprocess,
)

from .errors import ConfigurationError

__all__ = [
    "KNOWN_EVENTS",
    "MULTIPROC_ENV",
    "PrometheusMetrics",
    "mark_process_dead",
    "metrics_for_process",
]

#: The variable prometheus_client reads (at import) to turn on its multiprocess mode.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Events exported at zero before they first happen (dashboards need a series).
KNOWN_EVENTS = (
    "deferred", "inline", "rejected_pool_full", "rejected_client_limit", "rejected_body",
    "passed_through_large_body",
)  # fmt: skip
FINAL_STATES = ("done", "failed", "cancelled", "lost")
#: Reads of the multiprocess directory one scrape tries, and the seconds between two.
SCRAPE_ATTEMPTS = 5
SCRAPE_RETRY_PAUSE = 0.01
CONTENT_TYPE = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4", exposition.CONTENT_TYPE_LATEST)


class _Pool(Protocol):
    @property
    def pending(self) -> int: ...
    @property
    def running(self) -> int: ...


def mark_process_dead(pid: int) -> None:
    """gunicorn's ``child_exit``: drop the live gauges of worker *pid* (multiprocess mode)."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)


class PrometheusMetrics:
    """This process's prometheus_client metrics (one instance: :func:`metrics_for_process`)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY, buckets: tuple[float, ...] = ()):
        from .metrics import DURATION_BUCKETS

        buckets = buckets or DURATION_BUCKETS
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.finished = Counter(
            "wsgi_deferred_tasks_finished",
            "Tasks that reached an end state (cancelled: cancellations accepted).",
            ["state"],
            registry=registry,
        )
        self.requests = Counter(
            "wsgi_deferred_requests",
            "What the middleware did with requests it looked at (deferred, inline, rejected...).",
            ["event"],
            registry=registry,
        )
        self.durations = {
            "run_seconds": Histogram(
                "wsgi_deferred_run_seconds",
                "Seconds the application took on a task, start to end, by rule.",
                ["rule"],
                buckets=buckets,
                registry=registry,
            ),
            "wait_seconds": Histogram(
                "wsgi_deferred_wait_seconds",
                "Seconds a task waited in the queue before a worker thread took it, by rule.",
                ["rule"],
                buckets=buckets,
                registry=registry,
            ),
        }
        self.tasks = Gauge(
            "wsgi_deferred_tasks",
            "Tasks queued or running in the live processes, now.",
            ["state"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.queue_depth = Gauge(
            "wsgi_deferred_queue_depth",
            "Accepted tasks waiting for a free worker thread (live processes).",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.pending = Gauge(
            "wsgi_deferred_pending",
            "Tasks reserved, queued or running (live processes; max_pending is per process).",
            multiprocess_mode="livesum",
            registry=registry,
        )
        # Labelled children looked up once: labels() validates and locks on every call.
        self._counters: dict[str, Any] = {s: self.finished.labels(s) for s in FINAL_STATES}
        self._counters.update({e: self.requests.labels(e) for e in KNOWN_EVENTS})
        self._histograms: dict[tuple[str, str], Any] = {}
        self._gauges = (
            self.tasks.labels("queued"), self.tasks.labels("running"), self.queue_depth,
            self.pending,
        )  # fmt: skip
        self._last: tuple[int, ...] | None = None
        # Weak references: a discarded middleware's pool leaves the sum (a WeakSet costs
        # several µs per iteration, on every pool change).
        self._pools: list[weakref.ref[Any]] = []
        self._lock = threading.Lock()
        self.pool_changed()  # the gauges exist at zero from the start

    def incr(self, name: str, amount: int = 1) -> None:
        child = self._counters.get(name)
        if child is None:
            family = self.finished if name in FINAL_STATES else self.requests
            child = self._counters[name] = family.labels(name)
        child.inc(amount)

    def observe(self, name: str, seconds: float, rule: str) -> None:
        child = self._histograms.get((name, rule))
        if child is None:
            histogram = self.durations.get(name)
            if histogram is None:
                return
            child = self._histograms[name, rule] = histogram.labels(rule)
        child.observe(seconds)

    def watch(self, pool: _Pool) -> Callable[[Any], None]:
        """Count *pool* in this process's gauges; returns its ``on_change`` hook."""
        with self._lock:
            self._pools = [r for r in self._pools if r() is not None] + [weakref.ref(pool)]
        return self.pool_changed

    def pool_changed(self, _pool: object = None) -> None:
        # Under the lock, the last caller reads the latest state of every pool: the gauges
        # end up right even when two threads change pools at once.
        with self._lock:
            pending = running = 0
            for ref in self._pools:
                pool = ref()
                if pool is not None:
                    pending += pool.pending
                    running += pool.running
            queued = max(0, pending - running)
            values = (queued, running, queued, pending)
            last = self._last or (-1,) * len(values)
            self._last = values
            for gauge, value, before in zip(self._gauges, values, last, strict=True):
                if value != before:  # each set is a write to this process's file
                    gauge.set(value)

    def render(self) -> tuple[bytes, str]:
        """The scrape: every process's values in multiprocess mode, else this registry."""
        if not self.multiprocess:
            return exposition.generate_latest(REGISTRY), CONTENT_TYPE
        for attempt in range(SCRAPE_ATTEMPTS):
            registry = CollectorRegistry()  # per scrape, as prometheus_client documents
            multiprocess.MultiProcessCollector(registry)
            try:
                return exposition.generate_latest(registry), CONTENT_TYPE
            except struct.error:
                # A worker that is booting has created its file but not yet sized it (an
                # empty file for a few microseconds): read them all again.
                if attempt == SCRAPE_ATTEMPTS - 1:
                    raise
                time.sleep(SCRAPE_RETRY_PAUSE)
        raise AssertionError("unreachable")


_instance: PrometheusMetrics | None = None
_instance_lock = threading.Lock()


def metrics_for_process() -> PrometheusMetrics:
    """The one :class:`PrometheusMetrics` of this process (metric names register once)."""
    global _instance
    with _instance_lock:
        if _instance is None:
            directory = os.environ.get(MULTIPROC_ENV)
            if directory and not os.path.isdir(directory):
                raise ConfigurationError(
                    f"{MULTIPROC_ENV}={directory!r} is not a directory: create it (empty) "
                    "before the server starts, or unset it"
                )
            _instance = PrometheusMetrics()
        return _instance
