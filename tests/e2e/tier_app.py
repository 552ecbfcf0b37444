"""The app of the execution-tier tests, for the web tier (gunicorn) and the worker alike.

Configured by environment variables, so both tiers build the same middleware:

``TIER_STORE``   the shared store URL.
``TIER_BROKER``  a Celery broker URL (amqp://... or redis://...), or ``rq+redis://...`` for
                 RQ; empty: the thread executor.
``TIER_QUEUE``   the Celery queue of this test.
``TIER_LEASE``   lease_timeout in seconds.
``TIER_RUNS``    a directory: every run of /sleep appends its pid to ``<task id>.runs`` there.

``POST /job``           echoes its body reversed, with its SHA-256, the running pid and its
                        parent's (an RQ work horse lives for one job only).
``POST /sleep``         ``?seconds=N``: works N s, reporting ``pid=<pid>`` as progress
                        (``&again=M``: M s on every run after the first).
``POST /retry/sleep``   the same, on a ``retry`` rule (max_attempts=2).
``GET /hello``          pass-through.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from wsgi_deferred import DeferredMiddleware

BROKER = os.environ.get("TIER_BROKER", "")
VISIBILITY = float(os.environ.get("TIER_VISIBILITY", "3600"))


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    pid = str(os.getpid())
    if path == "/job":
        body = environ["wsgi.input"].read()
        headers = [("X-Digest", hashlib.sha256(body).hexdigest()), ("X-Pid", pid),
                   ("X-Parent-Pid", str(os.getppid()))]  # fmt: skip
        start_response("200 OK", [("Content-Type", "application/octet-stream"), *headers])
        return [body[::-1]]
    if path in ("/sleep", "/retry/sleep"):
        query = parse_qs(environ.get("QUERY_STRING", ""))
        seconds = float(query.get("seconds", ["1"])[0])
        runs = os.environ.get("TIER_RUNS")
        if runs:
            path = os.path.join(runs, environ["wsgi_deferred.id"] + ".runs")
            if "again" in query and os.path.exists(path):  # a second run may be shorter
                seconds = float(query["again"][0])
            with open(path, "a") as log:
                log.write(pid + "\n")
        progress = environ["wsgi_deferred.progress"]
        cancelled = environ["wsgi_deferred.cancelled"]
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not cancelled():
            progress(None, f"pid={pid}")
            time.sleep(0.05)
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Pid", pid)])
        return [f"slept {seconds} in {pid}".encode()]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def _executor() -> Any:
    if not BROKER or BROKER.startswith("rq+"):
        return BROKER or None  # the thread executor, or RQ by URL
    from celery import Celery

    from wsgi_deferred.executors.celery import configure

    celery_app = configure(Celery("tier_tests", broker=BROKER, set_as_current=False))
    celery_app.conf.wsgi_deferred_queue = os.environ.get("TIER_QUEUE", "wsgi_deferred_tests")
    if BROKER.startswith("redis"):
        # A small visibility timeout, swept every second: a long task is redelivered while
        # it still runs (kombu transport/redis.py), which the delivery gate must skip.
        celery_app.conf.broker_transport_options = {
            "visibility_timeout": VISIBILITY,
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
        }
    return celery_app


application = DeferredMiddleware(
    app,
    routes=["POST /job", "POST /sleep", "POST /retry/sleep"],
    retry=["POST /retry/sleep"],
    max_attempts=2,
    store=os.environ["TIER_STORE"],
    executor=_executor(),
    lease_timeout=float(os.environ.get("TIER_LEASE", "30")),
    drain_timeout=float(os.environ.get("TIER_DRAIN", "25")),
)
