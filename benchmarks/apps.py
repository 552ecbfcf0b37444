"""The small WSGI apps the benchmarks serve under gunicorn, configured by environment variables.

``hello``        ``GET /hello`` → ``hello``: a plain WSGI app, the raw baseline.
``hello_wrapped`` the same app behind ``DeferredMiddleware(routes=["POST /render/<id>"])``.
``jobs``         ``POST /job`` answers at once (an instant job; ``?ms=N`` works N ms first)
                 and is a deferred route;
                 the store comes from ``BENCH_STORE`` (a ``redis://`` URL gets the key prefix
                 ``BENCH_REDIS_PREFIX``, so the benchmark never touches anyone else's keys).
``big``          ``GET /big?mib=N`` yields N MiB in 64 KiB chunks; a deferred route.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

from wsgi_deferred import DeferredMiddleware
from wsgi_deferred.stores import Store, open_store

CHUNK = 64 * 1024
JOB_RESULT = b'{"ok": true}'
REDIS_PREFIX_DEFAULT = "wsgi_deferred_bench:"


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


def job_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == "/job":
        ms = parse_qs(environ.get("QUERY_STRING", "")).get("ms")
        if ms:  # ``POST /job?ms=N``: a job that works N milliseconds (at most a minute)
            time.sleep(min(int(ms[0]), 60_000) / 1000)
        start_response(
            "200 OK",
            [("Content-Type", "application/json"), ("Content-Length", str(len(JOB_RESULT)))],
        )
        return [JOB_RESULT]
    return hello(environ, start_response)


def big_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    query = parse_qs(environ.get("QUERY_STRING", ""))
    mib = int(query.get("mib", ["1"])[0])
    start_response(
        "200 OK",
        [("Content-Type", "application/octet-stream"), ("Content-Length", str(mib << 20))],
    )
    return _chunks(mib * (1 << 20) // CHUNK)


def _chunks(count: int) -> Iterator[bytes]:
    chunk = b"x" * CHUNK  # one buffer, yielded again and again: the app itself holds 64 KiB
    for _ in range(count):
        yield chunk


def bench_store() -> str | Store:
    """The store named by ``BENCH_STORE`` (default memory); Redis gets a private prefix."""
    url = os.environ.get("BENCH_STORE", "memory://")
    if url.startswith("redis://"):
        from wsgi_deferred.stores.redis import RedisStore

        prefix = os.environ.get("BENCH_REDIS_PREFIX", REDIS_PREFIX_DEFAULT)
        return RedisStore(url, prefix=prefix)
    return open_store(url)


hello_wrapped = DeferredMiddleware(hello, routes=["POST /render/<id>"], store="memory://")


def __getattr__(name: str) -> Any:
    # Built on first access, so importing this module for ``hello`` opens no store.
    if name == "jobs":
        holds = os.environ.get("BENCH_MAX_HOLDS")  # unset: automatic, the default
        return DeferredMiddleware(
            job_app,
            routes=["POST /job"],
            store=bench_store(),
            max_holds=int(holds) if holds else None,
        )
    if name == "big":
        return DeferredMiddleware(big_app, routes=["GET /big"], store=bench_store())
    raise AttributeError(name)
