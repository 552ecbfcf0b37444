"""The app behind the waiting end-to-end tests (tests/e2e/test_waiting.py).

``POST /job?ms=N``  works N milliseconds (deferred), answers ``{"ms": N}``.
``GET /hello``      a fast page, passed through.

``WAITING_STORE`` picks the store, ``WAITING_MAX_HOLDS`` the hold budget (unset: automatic).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from wsgi_deferred import DeferredMiddleware


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == "/job":
        query = parse_qs(environ.get("QUERY_STRING", ""))
        ms = min(int(query.get("ms", ["0"])[0]), 60_000)
        time.sleep(ms / 1000)
        body = json.dumps({"ms": ms, "pid": os.getpid()}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


_holds = os.environ.get("WAITING_MAX_HOLDS")
application = DeferredMiddleware(
    app,
    routes=["POST /job"],
    store=os.environ.get("WAITING_STORE") or None,
    max_holds=int(_holds) if _holds else None,
)
