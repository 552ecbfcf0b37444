"""How long a task has left: the figure behind ``Retry-After`` and the status body's
``estimate`` (``docs/protocol.md``, "Retry-After and the estimate").

RFC 9110 §15.3.3 asks a 202's status monitor for "an estimate of when the request will be
fulfilled", and clients such as azure-core's ``LROPoller`` sleep exactly the ``Retry-After``
they get, so a constant wastes their time. The estimate here comes from what this process saw:

* the run times of the last :data:`HISTORY_PER_ROUTE` tasks of the same *route* (the task's
  label with its id-like path segments folded, so ``POST /render/42`` and ``POST /render/43``
  share one history), kept for at most :data:`HISTORY_ROUTES` routes (least recently used
  dropped); their median is the typical run time;
* the task's age: a running task has ``typical - (now - started)`` left; one that overran its
  typical time is given half of what it has run so far (tasks that ran long tend to run long);
* for a queued task, its place in the queue: ``typical * (1 + ahead / workers)`` (Little's law).

Runs are learnt from this process's own finishes and from finished records that status polls
read from a shared store, so every worker of ``gunicorn -w N`` learns from all of them.
"""

from __future__ import annotations

import math
import re
import statistics
import threading
import time
from collections import OrderedDict, deque

from .task import TaskRecord, TaskState

__all__ = [
    "HISTORY_PER_ROUTE",
    "HISTORY_ROUTES",
    "MAX_RETRY_AFTER",
    "DurationHistory",
    "retry_after_seconds",
    "route_of",
]

#: Run times remembered per route (their median is the typical time).
HISTORY_PER_ROUTE = 32
#: Routes remembered per process; the least recently used is forgotten first.
HISTORY_ROUTES = 256
#: Finished task ids remembered, so a result polled many times is learnt once.
SEEN_IDS = 4096
#: Longest ``Retry-After`` sent, in seconds: a wrong estimate never costs a client more.
MAX_RETRY_AFTER = 30

# A path segment that names one thing rather than a kind of thing: has a digit, or is long.
_ID_SEGMENT = re.compile(r"^(?=.*\d)[^/]+$|^[^/]{24,}$")


def route_of(label: str | None) -> str:
    """``"POST /render/42/pdf"`` -> ``"POST /render/*/pdf"``: the history key of a label."""
    if not label:
        return ""
    method, _, path = label.partition(" ")
    segments = ["*" if _ID_SEGMENT.match(s) else s for s in path.split("/")]
    return f"{method} {'/'.join(segments)}"


def retry_after_seconds(remaining: float | None, age: float) -> int:
    """The whole number of seconds (RFC 9110 §10.2.3, ``delay-seconds``) a client should
    wait before its next poll. Always >= 1: azure-core reads 0 as "use my 30 s default".

    With an estimate it is rounded *down*, so a polite client's next poll arrives just before
    the end and the brief hold of that poll covers the rest. Without one, it grows with the
    task's age (1 s while young, then 2 s, then 5 s)."""
    if remaining is None:
        if age < 10:
            return 1
        return 2 if age < 60 else 5
    return max(1, min(MAX_RETRY_AFTER, math.floor(remaining)))


class DurationHistory:
    """Per-route run times and the estimate of a task's time left; thread-safe."""

    def __init__(self, per_route: int = HISTORY_PER_ROUTE, routes: int = HISTORY_ROUTES) -> None:
        self.per_route = per_route
        self.routes = routes
        self._lock = threading.Lock()
        self._runs: OrderedDict[str, deque[float]] = OrderedDict()
        self._seen: OrderedDict[str, None] = OrderedDict()

    def record(self, task_id: str, label: str | None, seconds: float) -> None:
        """Learn that task *task_id* of *label* ran for *seconds* (once per id)."""
        if seconds < 0 or not math.isfinite(seconds):
            return
        key = route_of(label)
        with self._lock:
            if task_id in self._seen:
                return
            self._seen[task_id] = None
            if len(self._seen) > SEEN_IDS:
                self._seen.popitem(last=False)
            runs = self._runs.get(key)
            if runs is None:
                runs = self._runs[key] = deque(maxlen=self.per_route)
                if len(self._runs) > self.routes:
                    self._runs.popitem(last=False)
            else:
                self._runs.move_to_end(key)
            runs.append(seconds)

    def observe(self, record: TaskRecord) -> None:
        """Learn from a record a poll read: a ``done`` task with both times known."""
        if (
            record.state is TaskState.DONE
            and record.started is not None
            and record.finished is not None
        ):
            self.record(record.id, record.label, record.finished - record.started)

    def typical(self, label: str | None) -> float | None:
        """The median run time of *label*'s route, or None before the first one ended."""
        with self._lock:
            runs = self._runs.get(route_of(label))
            return statistics.median(runs) if runs else None

    def remaining(
        self,
        record: TaskRecord,
        *,
        queued_ahead: int = 0,
        workers: int = 1,
        now: float | None = None,
    ) -> float | None:
        """Seconds *record* probably has left (0 when final), or None without a history."""
        if record.state.is_final:
            return 0.0
        typical = self.typical(record.label)
        if typical is None:
            return None
        now = time.time() if now is None else now
        if record.state is TaskState.QUEUED or record.started is None:
            return typical * (1 + max(0, queued_ahead) / max(1, workers))
        ran = max(0.0, now - record.started)
        left = typical - ran
        return left if left > 0 else ran / 2
