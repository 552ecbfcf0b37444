"""Background threads of our own, started so they never take the server's stop signals.

Every thread wsgi_deferred starts (the pool's workers and heartbeat, the SQLite wake-up
listener, the retry sweeper, a delivered task's lease renewal) is started here::

    thread = start_thread(self._loop, name="sqlite-wake")

A new thread inherits its creator's signal mask (POSIX ``pthread_create(3)``), and a
process-directed signal goes to any one thread that does not block it (``signal(7)``). uWSGI
handles its stop signals in C on whichever thread they reach: on one of ours its worker
hung at exit (tests/e2e/test_servers.py stops every server with SIGTERM and fails on a hang).
So the server's stop and reload signals are blocked while the thread starts, and the caller
gets its own mask back. Python's own handlers always run on the main thread anyway.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["SERVER_SIGNALS", "start_thread"]

#: Signals servers use to stop or reload their workers (gunicorn, uWSGI, waitress).
SERVER_SIGNALS = frozenset(
    getattr(signal, name)
    for name in ("SIGHUP", "SIGINT", "SIGQUIT", "SIGTERM", "SIGUSR1", "SIGUSR2")
    if hasattr(signal, name)
)


def start_thread(
    target: Callable[..., object], *, name: str, args: tuple[Any, ...] = ()
) -> threading.Thread:
    """Start a daemon thread running ``target(*args)`` with the server's signals blocked."""
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX: nothing to block
        thread.start()
        return thread
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, SERVER_SIGNALS)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return thread
