"""A captured request as a shared store keeps it, so any process or host can replay it.

The variables (all ``str``, RFC 3875 §4.1 and ``HTTP_*``), ``wsgi.url_scheme`` and
``wsgi.multiprocess`` go into a small JSON document; the body goes to the store in chunks and
comes back through a reader, spooled to a temporary file past
:data:`~wsgi_deferred.buffers.SPOOL_THRESHOLD` on the way in (never whole in memory).
"""

from __future__ import annotations

import json
from typing import BinaryIO

from ..buffers import SPOOL_THRESHOLD, SpooledBody
from ..capture import RequestSnapshot

__all__ = ["SNAPSHOT_FORMAT", "restore_snapshot", "snapshot_meta", "stored_text"]

#: Version of the JSON document, so a newer worker can read what an older web tier kept.
SNAPSHOT_FORMAT = 1


def snapshot_meta(
    snapshot: RequestSnapshot, traceparent: str | None = None, client: str | None = None
) -> bytes:
    """The JSON document for :meth:`~wsgi_deferred.stores.base.Store.save_request`; with the
    accepting request's W3C *traceparent*, so a replay in another process continues its trace
    (tracing.py), and the *client* whose admission slot the task holds, so the process that
    runs it renews and gives back that slot (admission.py)."""
    document: dict[str, object] = {
        "format": SNAPSHOT_FORMAT,
        "variables": snapshot.variables,
        "url_scheme": snapshot.url_scheme,
        "multiprocess": snapshot.multiprocess,
    }
    if traceparent is not None:
        document["traceparent"] = traceparent
    if client is not None:
        document["client"] = client
    return json.dumps(document, separators=(",", ":")).encode()


def stored_text(meta: bytes, key: str) -> str | None:
    """The text :func:`snapshot_meta` kept under *key* (``traceparent``, ``client``) in
    *meta*, or None."""
    try:
        value = json.loads(meta).get(key)
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def restore_snapshot(
    meta: bytes, reader: BinaryIO, spool_threshold: int = SPOOL_THRESHOLD
) -> RequestSnapshot:
    """The :class:`RequestSnapshot` that :func:`snapshot_meta` described, its body copied
    from *reader* (which this closes). ValueError when *meta* is not one of ours."""
    body = SpooledBody(threshold=spool_threshold)
    try:
        with reader:
            body.fill_from(reader, None)
        document = json.loads(meta)
        if not isinstance(document, dict) or document.get("format") != SNAPSHOT_FORMAT:
            raise ValueError("not a captured request this version can read")
        variables = document.get("variables")
        if not isinstance(variables, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in variables.items()
        ):
            raise ValueError("captured request variables must be strings")
        return RequestSnapshot(
            variables=variables,
            url_scheme=str(document.get("url_scheme", "http")),
            multiprocess=bool(document.get("multiprocess", True)),
            body=body,
        )
    except BaseException:
        body.discard()
        raise
