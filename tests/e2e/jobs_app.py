"""A plain WSGI app for end-to-end load and fault tests, wrapped from environment variables.

``POST /job``     echoes its body reversed, with its SHA-256 and the worker's pid in headers.
``POST /sleep``   ``?seconds=N``: works N s in small steps, reporting its pid as progress and
                  stopping early when cancelled.
``GET /hello``    pass-through.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from wsgi_deferred import DeferredMiddleware


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    pid = str(os.getpid())
    if path == "/job":
        body = environ["wsgi.input"].read()
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/octet-stream"),
                ("X-Digest", hashlib.sha256(body).hexdigest()),
                ("X-Pid", pid),
            ],
        )
        return [body[::-1]]
    if path == "/sleep":
        seconds = float(parse_qs(environ.get("QUERY_STRING", "")).get("seconds", ["1"])[0])
        progress = environ.get("wsgi_deferred.progress", lambda *a, **k: None)
        cancelled = environ.get("wsgi_deferred.cancelled", lambda: False)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not cancelled():
            progress(None, f"pid={pid}")
            time.sleep(0.05)
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Pid", pid)])
        return [f"slept {seconds} in {pid}".encode()]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


application = DeferredMiddleware(
    app,
    routes=["POST /job", "POST /sleep"],
    store=os.environ.get("JOBS_STORE") or None,
    lease_timeout=float(os.environ.get("JOBS_LEASE", "30")),
    drain_timeout=float(os.environ.get("JOBS_DRAIN", "25")),
    workers=int(os.environ.get("JOBS_POOL", "8")),
)
