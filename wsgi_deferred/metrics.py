"""Counters and gauges about tasks, readable from :meth:`DeferredMiddleware.stats`."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["Metrics"]


class Metrics:
    """Thread-safe event counters and duration sums for one middleware in one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        #: name -> [count, sum of seconds]
        self.durations: dict[str, list[float]] = {}

    def incr(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.counters[name] += amount

    def observe(self, name: str, seconds: float) -> None:
        with self._lock:
            entry = self.durations.setdefault(name, [0, 0.0])
            entry[0] += 1
            entry[1] += seconds

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {
                "counters": dict(self.counters),
                "durations": {
                    k: {"count": int(v[0]), "sum": v[1]} for k, v in self.durations.items()
                },
            }

    def serve(
        self, stats: dict[str, Any], environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """The ``metrics_path`` endpoint (Prometheus text format)."""
        body = render_prometheus(stats).encode()
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [body]


def render_prometheus(stats: dict[str, Any]) -> str:
    """*stats* (from ``DeferredMiddleware.stats()``) in the Prometheus text format."""
    lines = []
    for name, value in sorted(stats["counters"].items()):
        lines.append(f'wsgi_deferred_events_total{{event="{name}"}} {value}')
    for name, entry in sorted(stats["durations"].items()):
        lines.append(f"wsgi_deferred_{name}_count {entry['count']}")
        lines.append(f"wsgi_deferred_{name}_sum {entry['sum']}")
    lines.append(f"wsgi_deferred_pending {stats['pending']}")
    lines.append(f"wsgi_deferred_running {stats['running']}")
    return "\n".join(lines) + "\n"
