"""The app the hostile-input suite (test_hostile.py) probes, as issue 8's probe configured it:
``bind="cookie:session"``, a small ``max_body``, the default store, the fair-share client limit.

``POST /job``      reads its body, answers its length and SHA-256.
``POST /sleep``    ``?seconds=N``: works N s (stops early when cancelled), reporting progress
                   with a message that carries markup, to check that pages escape it.
``GET /hello``     pass-through.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from wsgi_deferred import DeferredMiddleware

# The middleware's own log lines go to gunicorn's stderr (the test reads that log).
_handler = logging.StreamHandler(sys.stderr)
_handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
for _name in ("wsgi_deferred", "wsgi_deferred.app"):
    logging.getLogger(_name).addHandler(_handler)
    logging.getLogger(_name).setLevel(logging.INFO)

PROGRESS_MESSAGE = '<script>alert(1)</script> & "quotes"'


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path.endswith("/job"):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.errors"].write(f"job at {path}\n")
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/plain"),
                ("X-Length", str(len(body))),
                ("X-Declared", environ.get("CONTENT_LENGTH", "-")),
                ("X-Digest", hashlib.sha256(body).hexdigest()),
            ],
        )
        return [b"job done"]
    if path == "/sleep":
        seconds = float(parse_qs(environ.get("QUERY_STRING", "")).get("seconds", ["1"])[0])
        progress = environ.get("wsgi_deferred.progress", lambda *a, **k: None)
        cancelled = environ.get("wsgi_deferred.cancelled", lambda: False)
        progress(0.5, PROGRESS_MESSAGE)
        deadline = time.monotonic() + min(seconds, 30.0)
        while time.monotonic() < deadline and not cancelled():
            time.sleep(0.05)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"slept"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


application = DeferredMiddleware(
    app,
    routes=["POST /job", "POST /sleep", "POST /mnt/job"],
    bind="cookie:session",
    max_body=int(os.environ.get("HOSTILE_MAX_BODY", "2000000")),
    max_pending=int(os.environ.get("HOSTILE_MAX_PENDING", "30")),  # fair share: 3 per client
    drain_timeout=5.0,
)
