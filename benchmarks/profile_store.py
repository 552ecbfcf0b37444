"""Diagnostic, not a benchmark: what one deferred round trip costs each store, in-process.

Runs jobs one after another through ``DeferredMiddleware`` (``POST /job`` → 202, then
``GET`` the status URL with ``Prefer: wait=10``), called directly, no HTTP server, and prints
per job: wall and process CPU time, calls of each store method, SQL statements (SQLite) and
Redis round trips. ``--profile`` adds cProfile's top functions for the request thread.

    .venv/bin/python benchmarks/profile_store.py memory:// sqlite:///var/tmp/p.db \\
        redis://127.0.0.1:6379/9
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import functools
import io
import pstats
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.apps import REDIS_PREFIX_DEFAULT, job_app
from benchmarks.common import STORE_REDIS_DB, delete_prefix
from wsgi_deferred import DeferredMiddleware
from wsgi_deferred.stores import Store, open_store

STORE_METHODS = ("create", "claim", "finish", "get", "wait", "open_body", "renew", "cancel")
COUNTS: collections.Counter[str] = collections.Counter()


def counted_store(url: str) -> Store:
    if url.startswith("redis://"):
        import redis.connection

        from wsgi_deferred.stores.redis import RedisStore

        original = redis.connection.AbstractConnection.send_packed_command

        def send(self: Any, *args: Any, **kwargs: Any) -> Any:
            COUNTS["redis round trips"] += 1
            return original(self, *args, **kwargs)

        redis.connection.AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
        store: Store = RedisStore(url, prefix=REDIS_PREFIX_DEFAULT)
    else:
        if url.startswith("sqlite://"):
            connect = sqlite3.connect

            def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
                conn = connect(*args, **kwargs)
                conn.set_trace_callback(lambda _sql: COUNTS.update(["SQL statements"]))
                return conn

            sqlite3.connect = traced  # type: ignore[assignment]
        store = open_store(url)
    for name in STORE_METHODS:
        method = getattr(store, name)

        def wrapper(*args: Any, _method: Any = method, _name: str = name, **kw: Any) -> Any:
            COUNTS[f"store.{_name}()"] += 1
            return _method(*args, **kw)

        setattr(store, name, functools.wraps(method)(wrapper))
    return store


def call(app: Any, environ: dict[str, Any]) -> tuple[str, dict[str, str]]:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen["status"], seen["headers"] = status, dict(headers)

    result = app(environ, start_response)
    for _ in result:
        pass
    getattr(result, "close", lambda: None)()
    return seen["status"], seen["headers"]


def one_job(app: Any) -> None:
    environ = {
        "REQUEST_METHOD": "POST", "PATH_INFO": "/job", "SCRIPT_NAME": "", "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_LENGTH": "0", "REMOTE_ADDR": "127.0.0.1", "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr, "wsgi.multithread": True,
        "wsgi.multiprocess": True,
    }  # fmt: skip
    status, headers = call(app, environ)
    assert status.startswith("202"), status
    environ.update(REQUEST_METHOD="GET", PATH_INFO=headers["Location"], CONTENT_LENGTH="")
    environ.update({"HTTP_PREFER": "wait=10", "wsgi.input": io.BytesIO(b"")})
    status, _ = call(app, environ)
    assert status.startswith("200"), status


def profile(url: str, jobs: int, with_profile: bool) -> None:
    COUNTS.clear()
    app = DeferredMiddleware(job_app, routes=["POST /job"], store=counted_store(url))
    try:
        for _ in range(min(100, jobs)):  # warm-up: connections, schema, pool threads
            one_job(app)
        COUNTS.clear()
        profiler = cProfile.Profile() if with_profile else None
        wall, cpu = time.perf_counter(), time.process_time()
        if profiler:
            profiler.enable()
        for _ in range(jobs):
            one_job(app)
        if profiler:
            profiler.disable()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        app.close()
    print(f"{url}: {wall / jobs * 1e6:,.0f} µs wall, {cpu / jobs * 1e6:,.0f} µs CPU per job")
    for name, count in sorted(COUNTS.items()):
        print(f"    {name:22} {count / jobs:6.2f} per job")
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
        print(out.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description="per-job cost of each store, in-process")
    parser.add_argument("urls", nargs="*", help="store URLs (default: memory, SQLite, Redis)")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        urls = args.urls or [
            "memory://",
            f"sqlite://{tmp}/profile.db",
            f"redis://127.0.0.1:6379/{STORE_REDIS_DB}",
        ]
        try:
            for url in urls:
                profile(url, args.jobs, args.profile)
        finally:
            if any(u.startswith("redis://") for u in urls):
                delete_prefix(STORE_REDIS_DB, REDIS_PREFIX_DEFAULT)


if __name__ == "__main__":
    main()
