"""Counters and gauges about tasks, readable from :meth:`DeferredMiddleware.stats`."""

from __future__ import annotations

import threading
from collections import Counter

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
