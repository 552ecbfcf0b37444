"""An app that answers with the environ it was called with (as tests/replay_diff.py pictures
it) and the SHA-256 of the body it read, wrapped so that ``Prefer: respond-async`` defers it:
the same request, inline and replayed, on a real server."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from replay_diff import picture

from wsgi_deferred import DeferredMiddleware


def read_body(environ: dict[str, Any]) -> bytes:
    """The body as PEP 3333 says to read it: to EOF when terminated, else CONTENT_LENGTH."""
    stream = environ["wsgi.input"]
    if environ.get("wsgi.input_terminated"):
        chunks = []
        for _ in range(10_000):  # bounded: 640 MB at most, far above any test body
            data = stream.read(65536)
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)
    length = int(environ.get("CONTENT_LENGTH") or 0)
    return stream.read(length) if length > 0 else b""


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = read_body(environ)
    document = {
        "environ": picture(environ),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "body_length": len(body),
    }
    data = json.dumps(document).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


application = DeferredMiddleware(app, store=os.environ.get("JOBS_STORE") or None)
