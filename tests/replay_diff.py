"""What a replay may change in the environ an app sees, written out independently of the
library (README, "What the replay sees"), and a key-by-key comparison against it.

Used by tests/test_replay_faithful.py (in process) and tests/e2e/test_replay_servers.py (the
same request through gunicorn, waitress and uWSGI).
"""

from __future__ import annotations

import json
from typing import Any

#: The request fields a replay never gets, whatever ``Connection`` says (RFC 9110 §7.6.1,
#: §6.6.2 Trailer, §11.7.1 and §11.7.4 the Proxy-* pair), as CGI variables.
HOP_BY_HOP = {
    "HTTP_CONNECTION",
    "HTTP_KEEP_ALIVE",
    "HTTP_PROXY_AUTHENTICATE",
    "HTTP_PROXY_AUTHORIZATION",
    "HTTP_PROXY_CONNECTION",
    "HTTP_TE",
    "HTTP_TRAILER",
    "HTTP_TRANSFER_ENCODING",
    "HTTP_UPGRADE",
}
#: ``wsgi.*`` keys the replay sets itself, to these values when given.
REPLAY_SETS = {"wsgi.input", "wsgi.errors", "wsgi.multithread", "wsgi.run_once"}
REPLAY_VALUES = {"wsgi.multithread": True, "wsgi.run_once": False}
#: ``wsgi.*`` keys copied from the original unchanged.
COPIED_WSGI = {"wsgi.url_scheme", "wsgi.multiprocess", "wsgi.version"}
#: Keys the middleware adds for the app (README, "Inside a deferred request").
ADDED_PREFIX = "wsgi_deferred."


def describe(value: Any) -> Any:
    """A JSON-able picture of one environ value: text as it is, simple values by repr,
    objects by type (an app on a real server sends this back for comparison)."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (bool, int, float, tuple)):
        return ["repr", repr(value)]
    return ["type", type(value).__name__]


def picture(environ: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps({key: describe(value) for key, value in environ.items()}))


def named_by_connection(environ: dict[str, Any]) -> set[str]:
    """CGI names of the fields the request's ``Connection`` header lists (RFC 9110 §7.6.1)."""
    value = environ.get("HTTP_CONNECTION")
    if not isinstance(value, str):
        return set()
    tokens = (token.strip() for token in value.split(","))
    return {"HTTP_" + token.upper().replace("-", "_") for token in tokens if token}


def undocumented_differences(
    inline: dict[str, Any], replayed: dict[str, Any], body: bytes, ignore: frozenset[str]
) -> dict[str, tuple[Any, Any]]:
    """Every key whose value in *replayed* differs from *inline* beyond the documented list,
    as ``key -> (inline value, replayed value)``; *ignore* names test artefacts (e.g.
    ``REMOTE_PORT`` of two different connections). Both sides are :func:`picture`s."""
    missing = object()
    differences: dict[str, tuple[Any, Any]] = {}
    dropped = HOP_BY_HOP | named_by_connection(inline)
    for key in sorted(set(inline) | set(replayed)):
        before, after = inline.get(key, missing), replayed.get(key, missing)
        if key in ignore:
            continue
        if key.startswith(ADDED_PREFIX) and before is missing:
            continue  # the middleware's own additions
        if key in REPLAY_SETS:
            wrong = key in REPLAY_VALUES and after != describe(REPLAY_VALUES[key])
            if wrong or after is missing:
                differences[key] = (before, after)
            continue
        if "." in key and key not in COPIED_WSGI:
            # Server objects tied to the connection (gunicorn.socket, wsgi.file_wrapper,
            # wsgi.input_terminated, uwsgi.*, waitress.*): dropped, never invented.
            if after is not missing:
                differences[key] = (before, after)
            continue
        if key == "CONTENT_LENGTH" and not inline_length(inline) and after is not missing:
            # A body framed without a length (chunked, read to EOF) gets its exact size;
            # an empty one only when it was chunked; otherwise it stays as it was.
            chunked = "HTTP_TRANSFER_ENCODING" in inline
            if (body or chunked) and after == str(len(body)):
                continue
        if key in dropped and key.startswith("HTTP_"):
            if after is not missing:
                differences[key] = (before, after)
            continue
        if "." not in key and before is not missing and not isinstance(before, str):
            if after is not missing:  # a non-text CGI value is not copied
                differences[key] = (before, after)
            continue
        if before != after:
            differences[key] = (before, after)
    return differences


def inline_length(environ: dict[str, Any]) -> bool:
    value = environ.get("CONTENT_LENGTH")
    return isinstance(value, str) and value.strip() != ""
