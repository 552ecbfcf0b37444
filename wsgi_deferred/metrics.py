"""Counters, duration histograms and gauges about tasks.

Two views of the same events:

* :meth:`DeferredMiddleware.stats` -- dependency-free, for one middleware in one process::

    {
      "counters": {"deferred": 12, "done": 10, "failed": 1, "cancelled": 1, ...},
      "durations": {"run_seconds": {"count": 11, "sum": 48.2, "buckets": {0.1: 0, ...}}, ...},
      "pending": 3,   # reserved, queued or running in this process
      "running": 2,   # running in a worker thread now
      "queued": 1,    # waiting for a free worker thread (the queue depth)
    }

* the ``metrics_path`` endpoint (off by default). With ``prometheus_client`` installed
  (``pip install wsgi_deferred[prometheus]``) it is the whole deployment: see
  :mod:`wsgi_deferred.prometheus` (multiprocess mode under gunicorn, the default registry,
  histograms per rule). Without it, the endpoint renders :meth:`stats` itself
  (:func:`render_prometheus`): numbers of the one process that answered the scrape, so under
  several worker processes successive scrapes disagree; install prometheus_client there.

Counter names (events): ``deferred`` (answered 202), ``inline`` (raced or ``Prefer: wait`` and
finished in time), ``done``/``failed``/``lost`` (how tasks run here ended), ``cancelled``
(cancellations accepted here), ``rejected_pool_full`` (503), ``rejected_client_limit`` (429),
``rejected_body`` (413 and other unreadable bodies), ``passed_through_large_body``,
``passed_through_anonymous`` (no credential under ``bind``: run inline), ``inline_client_limit``
(a raced request past ``defer_after`` whose client was at its limit: answered inline).
Durations: ``run_seconds`` (start to end of the app's work) and ``wait_seconds`` (accepted to
started: time spent in the queue).
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .prometheus import PrometheusMetrics

__all__ = ["DURATION_BUCKETS", "Metrics", "load_exporter", "render_prometheus"]

#: Upper bounds (seconds) of the duration histogram buckets: from a fast inline answer to the
#: tens of minutes a deferred export may take.
DURATION_BUCKETS: tuple[float, ...] = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
)  # fmt: skip

#: The end states every task counter is exported for, even at zero (dashboards need a series).
_FINAL_STATES = ("done", "failed", "cancelled", "lost")
_PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Histogram:
    __slots__ = ("buckets", "count", "max", "sum")

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0.0
        self.max = 0.0
        self.buckets = [0] * len(DURATION_BUCKETS)  # per bucket, not cumulative

    def add(self, seconds: float) -> None:
        self.count += 1
        self.sum += seconds
        self.max = max(self.max, seconds)
        index = bisect.bisect_left(DURATION_BUCKETS, seconds)
        if index < len(self.buckets):
            self.buckets[index] += 1

    def snapshot(self) -> dict[str, Any]:
        cumulative, running = {}, 0
        for bound, n in zip(DURATION_BUCKETS, self.buckets, strict=True):
            running += n
            cumulative[bound] = running
        return {"count": self.count, "sum": self.sum, "max": self.max, "buckets": cumulative}


class Metrics:
    """Thread-safe event counters and duration histograms; with *prometheus*, also fed to
    prometheus_client when it is installed (:attr:`exporter`)."""

    def __init__(self, prometheus: bool = False) -> None:
        self._lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        self._histograms: dict[str, _Histogram] = {}
        #: This process's prometheus_client metrics, or None (off, or not installed).
        self.exporter: PrometheusMetrics | None = load_exporter() if prometheus else None

    def incr(self, name: str, amount: int = 1) -> None:
        """Count *amount* more of event *name*."""
        with self._lock:
            self.counters[name] += amount
        if self.exporter is not None:
            self.exporter.incr(name, amount)

    def observe(self, name: str, seconds: float, rule: str = "-") -> None:
        """Record one duration under *name* (e.g. ``run_seconds``) for *rule* (the rule that
        deferred the task: a label of the Prometheus histogram only)."""
        seconds = max(0.0, float(seconds))
        with self._lock:
            histogram = self._histograms.get(name)
            if histogram is None:
                histogram = self._histograms[name] = _Histogram()
            histogram.add(seconds)
        if self.exporter is not None:
            self.exporter.observe(name, seconds, rule)

    def watch(self, pool: Any) -> Callable[[Any], None] | None:
        """The ``on_change`` hook that keeps the Prometheus gauges of *pool* (or None)."""
        return self.exporter.watch(pool) if self.exporter is not None else None

    def snapshot(self) -> dict[str, Any]:
        """``{"counters": {...}, "durations": {name: {count, sum, max, buckets}}}``; buckets
        map each upper bound (seconds) to the cumulative count of durations at most that."""
        with self._lock:
            return {
                "counters": dict(self.counters),
                "durations": {k: h.snapshot() for k, h in self._histograms.items()},
            }

    def serve(
        self, stats: dict[str, Any], environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """The ``metrics_path`` endpoint: *stats* in the Prometheus text format (GET/HEAD)."""
        method = environ.get("REQUEST_METHOD", "GET").upper()
        if method not in ("GET", "HEAD"):
            body = b"method not allowed\n"
            start_response(
                "405 Method Not Allowed",
                [
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("Content-Length", str(len(body))),
                    ("Allow", "GET, HEAD"),
                ],
            )
            return [body]
        if self.exporter is not None:
            body, content_type = self.exporter.render()
        else:
            body, content_type = render_prometheus(stats).encode(), _PROMETHEUS_TYPE
        start_response(
            "200 OK",
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
                ("X-Content-Type-Options", "nosniff"),
            ],
        )
        return [] if method == "HEAD" else [body]


def load_exporter() -> PrometheusMetrics | None:
    """This process's prometheus_client metrics, or None when it is not installed (the
    endpoint then serves :func:`render_prometheus`, per process)."""
    try:
        from .prometheus import metrics_for_process
    except ImportError:
        return None
    return metrics_for_process()


def _number(value: float) -> str:
    if isinstance(value, int) or (math.isfinite(value) and value == int(value)):
        return str(int(value))
    return repr(float(value))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _metric_name(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


def render_prometheus(stats: dict[str, Any]) -> str:
    """*stats* (from ``DeferredMiddleware.stats()``) in the Prometheus text exposition format
    (version 0.0.4), with ``# HELP`` and ``# TYPE`` for every family."""
    counters: dict[str, int] = stats.get("counters", {})
    out: list[str] = []

    def family(name: str, kind: str, text: str) -> None:
        out.append(f"# HELP {name} {text}")
        out.append(f"# TYPE {name} {kind}")

    running = int(stats.get("running", 0))
    pending = int(stats.get("pending", 0))
    queued = int(stats.get("queued", max(0, pending - running)))
    family("wsgi_deferred_tasks", "gauge", "Tasks of this process by state, now.")
    out.append(f'wsgi_deferred_tasks{{state="queued"}} {queued}')
    out.append(f'wsgi_deferred_tasks{{state="running"}} {running}')
    family("wsgi_deferred_queue_depth", "gauge", "Accepted tasks waiting for a free worker thread.")
    out.append(f"wsgi_deferred_queue_depth {queued}")
    family(
        "wsgi_deferred_pending",
        "gauge",
        "Tasks reserved, queued or running in this process (max_pending applies to it).",
    )
    out.append(f"wsgi_deferred_pending {pending}")

    family(
        "wsgi_deferred_tasks_finished_total",
        "counter",
        "Tasks that reached an end state in (or were cancelled through) this process.",
    )
    for state in _FINAL_STATES:
        value = int(counters.get(state, 0))
        out.append(f'wsgi_deferred_tasks_finished_total{{state="{state}"}} {value}')
    family(
        "wsgi_deferred_requests_total",
        "counter",
        "What the middleware did with requests it looked at (deferred, inline, rejected...).",
    )
    for name, value in sorted(counters.items()):
        if name not in _FINAL_STATES:
            out.append(f'wsgi_deferred_requests_total{{event="{_label(name)}"}} {int(value)}')

    helps = {
        "run_seconds": "Seconds the application took on a task, start to end.",
        "wait_seconds": "Seconds a task waited in the queue before a worker thread took it.",
    }
    durations: dict[str, dict[str, Any]] = stats.get("durations", {})
    for key in sorted(set(helps) | set(durations)):
        entry = durations.get(key) or {"count": 0, "sum": 0.0, "buckets": {}}
        name = f"wsgi_deferred_{_metric_name(key)}"
        family(name, "histogram", helps.get(key, f"Durations of {key} (seconds)."))
        buckets = entry.get("buckets") or {}
        for bound in DURATION_BUCKETS:
            out.append(f'{name}_bucket{{le="{_number(bound)}"}} {int(buckets.get(bound, 0))}')
        out.append(f'{name}_bucket{{le="+Inf"}} {int(entry["count"])}')
        out.append(f"{name}_sum {_number(entry['sum'])}")
        out.append(f"{name}_count {int(entry['count'])}")
    return "\n".join(out) + "\n"
