"""The hold budget: how many requests one process may keep waiting at once.

A *hold* is a request the middleware keeps open while it waits for a task to end: a status
``GET`` with ``Prefer: wait=N`` (the waiting page's script sends one), the inline wait of
``defer_after`` or of ``Prefer: wait`` on a marked request, and the brief hold the status
endpoint may give a first poll whose task is about to finish. Each one occupies a request
thread (gthread, waitress) or the whole worker (gunicorn's sync worker), which the app's own
pages then cannot use. So holds are bounded per process (``docs/protocol.md``, "Holds"):

* a hold takes a slot with a **non-blocking** acquire; past the budget the request is answered
  at once (a poll: ``202`` + ``Retry-After`` and no ``Preference-Applied: wait``; an inline
  wait: the ``202``). It is never queued behind other holds and never answered 429/503,
  which pollers such as azure-core treat as errors;
* under a single-threaded worker (``wsgi.multithread`` false) a status poll is never held: the
  one request it would hold is the whole worker. An inline wait is still allowed there, since
  without the middleware that worker would be running the app for the request anyway;
* under gevent or eventlet (``threading`` monkey-patched) a hold costs a greenlet, not a thread,
  and the budget is :data:`GREEN_MAX_HOLDS` unless set by hand;
* otherwise the budget is ``max_holds`` (default :data:`DEFAULT_MAX_HOLDS`);
  ``wsgi-deferred serve`` sets it from ``--threads`` with :func:`holds_for_threads`;
* a crowd of refused pollers still costs CPU per poll, so past
  :data:`REFUSED_POLLS_PER_SECOND` refusals a second the ``Retry-After`` of a refused poll
  whose task has no estimate grows with the crowd (:meth:`HoldBudget.backoff`).

Usage::

    budget = HoldBudget(max_holds=2)
    with budget.hold(environ, POLL) as held:
        if held:
            record = store.wait(task_id, seconds)
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

__all__ = [
    "DEFAULT_MAX_HOLDS",
    "GREEN_MAX_HOLDS",
    "INLINE",
    "POLL",
    "HoldBudget",
    "green_threads",
    "holds_for_threads",
]

#: Holds per process when nobody says how many request threads there are: 2 of gunicorn's
#: ``--threads 8`` (the README's deployment), leaving 6 to the app's pages; 2 of waitress's
#: default 4 still leaves half.
DEFAULT_MAX_HOLDS = 2
#: Holds per process under gevent/eventlet, where a held request is a parked greenlet
#: (a few KiB), not one of a fixed number of threads.
GREEN_MAX_HOLDS = 1000
#: Fraction of a worker's request threads that :func:`holds_for_threads` gives to holds.
HOLD_SHARE = 0.25
#: Refused polls per second a process is willing to answer; past it, refused polls of tasks
#: with no estimate are told to come back later (:meth:`HoldBudget.backoff`), so a crowd of
#: waiting pages costs the app's pages CPU in proportion to this, not to the crowd's size.
REFUSED_POLLS_PER_SECOND = 50
#: Longest ``Retry-After`` the back-off gives, in seconds.
MAX_BACKOFF = 10

#: A status poll (``Prefer: wait``, a waiting page's long poll, a brief hold of a first poll).
POLL = "poll"
#: The inline wait of ``defer_after`` or of ``Prefer: wait`` on a marked request.
INLINE = "inline"


def holds_for_threads(threads: int) -> int:
    """The budget for a worker with *threads* request threads: a quarter, at least 1 when
    there is more than one thread (``--threads 8`` -> 2, ``--threads 32`` -> 8)."""
    if threads <= 1:
        return 0
    return max(1, int(threads * HOLD_SHARE))


def green_threads() -> bool:
    """True when ``threading`` is monkey-patched by gevent or eventlet (checked without
    importing either: only a process that already imported one can be patched)."""
    gevent_monkey = sys.modules.get("gevent.monkey")
    if gevent_monkey is not None:
        with contextlib.suppress(Exception):
            if gevent_monkey.is_module_patched("threading"):
                return True
    patcher = sys.modules.get("eventlet.patcher")
    if patcher is not None:
        with contextlib.suppress(Exception):
            if patcher.is_monkey_patched("thread"):
                return True
    return False


class HoldBudget:
    """A per-process counter of held requests; see the module docstring."""

    def __init__(self, max_holds: int | None = None) -> None:
        if max_holds is not None and max_holds < 0:
            raise ValueError("max_holds must be >= 0")
        #: The limit set by hand (None: automatic, see :meth:`limit`).
        self.max_holds = max_holds
        self._lock = threading.Lock()
        self._held = 0
        self._pid = os.getpid()
        self._green: bool | None = None
        #: Holds refused since the start (for metrics and tests).
        self.refused = 0
        # Refusals in the current and the previous whole second (time.monotonic()).
        self._second = 0
        self._this_second = 0
        self._last_second = 0

    @property
    def held(self) -> int:
        """Requests held right now in this process."""
        with self._lock:
            self._after_fork()
            return self._held

    def limit(self, environ: dict[str, Any], kind: str = POLL) -> int:
        """How many holds of *kind* this process may have for a request like *environ*."""
        if not environ.get("wsgi.multithread", False):
            # One request at a time: a held poll would be the whole worker (gunicorn sync).
            return 0 if kind == POLL else 1
        if self.max_holds is not None:
            return self.max_holds
        if self._green is None:
            self._green = green_threads()
        return GREEN_MAX_HOLDS if self._green else DEFAULT_MAX_HOLDS

    def try_acquire(self, environ: dict[str, Any], kind: str = POLL) -> bool:
        """Take a slot if one is free; never blocks. Pair a True answer with :meth:`release`."""
        limit = self.limit(environ, kind)
        with self._lock:
            self._after_fork()
            if self._held < limit:
                self._held += 1
                return True
            self.refused += 1
            self._roll()
            self._this_second += 1
            return False

    def backoff(self) -> int:
        """Whole seconds a refused poll should wait, from the refusals of the last second:
        1 while they stay under :data:`REFUSED_POLLS_PER_SECOND`, then proportionally more
        (256 refused clients -> 6 s), at most :data:`MAX_BACKOFF`."""
        with self._lock:
            self._roll()
            rate = max(self._last_second, self._this_second)
        return max(1, min(MAX_BACKOFF, math.ceil(rate / REFUSED_POLLS_PER_SECOND)))

    def _roll(self) -> None:
        second = int(time.monotonic())
        if second != self._second:
            self._last_second = self._this_second if second == self._second + 1 else 0
            self._this_second, self._second = 0, second

    def release(self) -> None:
        with self._lock:
            self._after_fork()
            if self._held > 0:
                self._held -= 1

    @contextlib.contextmanager
    def hold(self, environ: dict[str, Any], kind: str = POLL) -> Iterator[bool]:
        """``with budget.hold(environ) as held:``; the slot (if any) is released on every
        way out of the block: the task ended, the wait timed out, the store failed, or the
        client went away (the server's write raising inside the block)."""
        held = self.try_acquire(environ, kind)
        try:
            yield held
        finally:
            if held:
                self.release()

    def _after_fork(self) -> None:
        # A child forked while the parent held requests inherits a count no thread of the
        # child will ever release (only the forking thread survives a fork): start afresh.
        pid = os.getpid()
        if pid != self._pid:
            self._pid, self._held = pid, 0
