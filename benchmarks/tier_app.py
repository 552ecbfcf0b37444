"""The app of the execution-tier benchmark (``tier.py``), for gunicorn and the worker alike.

``POST /job``          the instant job of the round trip (``{"ok": true}``).
``POST /cpu``          pure-Python work until cancelled (at most ``?seconds=N``, 60 by default).
``POST /retry/sleep``  sleeps in small steps, reporting ``pid=<pid>``; on a ``retry`` rule.
``GET /hello``         pass-through.

``threads`` runs tasks in the web process's pool, ``tier`` on Celery (``TIER_BROKER``), ``rq``
on RQ (``TIER_RQ``); all
use the store ``TIER_STORE`` (Redis, key prefix ``TIER_PREFIX``) and ``TIER_LEASE``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from wsgi_deferred import DeferredMiddleware

from .apps import job_app


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    seconds = float(parse_qs(environ.get("QUERY_STRING", "")).get("seconds", ["60"])[0])
    deadline = time.monotonic() + seconds
    if path == "/cpu":
        cancelled, total = environ["wsgi_deferred.cancelled"], 0
        while time.monotonic() < deadline and not cancelled():
            for i in range(20_000):  # ~1 ms of bytecode: the GIL is what it holds
                total += i * i
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(total).encode()]
    if path == "/retry/sleep":
        progress, cancelled = environ["wsgi_deferred.progress"], environ["wsgi_deferred.cancelled"]
        while time.monotonic() < deadline and not cancelled():
            progress(None, f"pid={os.getpid()}")
            time.sleep(0.02)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"slept"]
    return job_app(environ, start_response)


def _store() -> Any:
    from wsgi_deferred.stores.redis import RedisStore

    return RedisStore(os.environ["TIER_STORE"], prefix=os.environ.get("TIER_PREFIX", "tier:"))


def _build(executor: Any) -> DeferredMiddleware:
    return DeferredMiddleware(
        app,
        routes=["POST /job", "POST /cpu", "POST /retry/sleep"],
        retry=["POST /retry/sleep"],
        store=_store(),
        executor=executor,
        lease_timeout=float(os.environ.get("TIER_LEASE", "3")),
        drain_timeout=1.0,
    )


def __getattr__(name: str) -> Any:
    # Built on first access, so importing this module opens no store.
    if name == "threads":
        return _build(None)
    if name == "tier":
        return _build("celery+" + os.environ["TIER_BROKER"])
    if name == "rq":
        return _build("rq+" + os.environ["TIER_RQ"])
    raise AttributeError(name)
