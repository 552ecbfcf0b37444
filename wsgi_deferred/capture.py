"""A snapshot of a request, taken before the ``202`` goes out, and the environ rebuilt from
it for the replay in a worker thread.

``wsgi.input`` is only valid while the original request is being served, so the whole body is
read first (PEP 3333 §"Input and Error Streams": by ``CONTENT_LENGTH``, or to EOF when the
server sets ``wsgi.input_terminated``). The replay environ is built fresh: the CGI
meta-variables (RFC 3875 §4.1), every ``HTTP_*`` variable and ``wsgi.url_scheme`` are copied;
objects tied to the original connection (sockets, the server's file wrapper) are not.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from .buffers import SPOOL_THRESHOLD, SpooledBody
from .errors import DeferredError
from .tasklog import task_extra

__all__ = ["BodyError", "ChainedInput", "RequestSnapshot", "capture_request"]

logger = logging.getLogger("wsgi_deferred")
app_logger = logging.getLogger("wsgi_deferred.app")

WSGIEnviron = dict[str, Any]

#: Request headers that describe the original connection, not the request (RFC 9110 §7.6.1).
#: The replay reads a de-chunked body of exact CONTENT_LENGTH, so e.g. a copied
#: ``Transfer-Encoding: chunked`` would make werkzeug ignore that length and read nothing.
HOP_BY_HOP_VARIABLES = frozenset(
    {
        "HTTP_CONNECTION",
        "HTTP_KEEP_ALIVE",
        "HTTP_PROXY_CONNECTION",
        "HTTP_TE",
        "HTTP_TRAILER",
        "HTTP_TRANSFER_ENCODING",
        "HTTP_UPGRADE",
    }
)


class BodyError(DeferredError):
    """The request body cannot be captured; *status* is the HTTP answer to give."""

    def __init__(self, status: str, message: str, partial: SpooledBody | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        #: What was read before giving up (only for a too-large EOF-terminated body).
        self.partial = partial


@dataclass
class RequestSnapshot:
    """The parts of a request needed to run it again, anywhere, later."""

    #: CGI and HTTP_* variables, all ``str`` (RFC 3875 §4.1, PEP 3333 §"environ Variables").
    variables: dict[str, str]
    url_scheme: str
    multiprocess: bool
    body: SpooledBody

    @property
    def method(self) -> str:
        return self.variables.get("REQUEST_METHOD", "GET")

    @functools.cached_property
    def label(self) -> str:
        """A short human name for the work, e.g. ``POST /render/42``."""
        path = self.variables.get("SCRIPT_NAME", "") + self.variables.get("PATH_INFO", "")
        with contextlib.suppress(UnicodeError):
            path = path.encode("latin-1").decode("utf-8")
        return f"{self.method} {path}"[:200]

    def replay_environ(self, task_id: str, extra: dict[str, Any] | None = None) -> WSGIEnviron:
        """A new environ for one replay; its ``wsgi.input`` reads the captured body."""
        environ: WSGIEnviron = dict(self.variables)
        # The exact length, and no ``wsgi.input_terminated``: with it, werkzeug (Flask) calls
        # ``read()`` without a size, which PEP 3333's input interface (``read(size)``) does not
        # offer and wsgiref.validate rejects; CONTENT_LENGTH alone is enough for every app.
        environ["CONTENT_LENGTH"] = str(self.body.size)
        environ.update(
            {
                "wsgi.version": (1, 0),
                "wsgi.url_scheme": self.url_scheme,
                "wsgi.input": self.body.open(),
                "wsgi.errors": LogStream(task_id),
                "wsgi.multithread": True,
                "wsgi.multiprocess": self.multiprocess,
                "wsgi.run_once": False,
            }
        )
        if extra:
            environ.update(extra)
        return environ

    def discard(self) -> None:
        self.body.discard()


def capture_request(
    environ: WSGIEnviron, max_body: int, spool_threshold: int = SPOOL_THRESHOLD
) -> RequestSnapshot:
    """Read the body and copy the variables; raise :class:`BodyError` on bad input."""
    body = read_body(environ, max_body, spool_threshold)
    variables = {
        key: value
        for key, value in environ.items()
        # Keys without a dot are CGI/server variables; dotted keys (wsgi.*, gunicorn.socket,
        # werkzeug.request, ...) are per-connection objects that must not outlive it.
        if "." not in key and isinstance(value, str) and key not in HOP_BY_HOP_VARIABLES
    }
    return RequestSnapshot(
        variables=variables,
        url_scheme=str(environ.get("wsgi.url_scheme", "http")),
        multiprocess=bool(environ.get("wsgi.multiprocess", False)),
        body=body,
    )


def declared_length(environ: WSGIEnviron) -> int | None:
    """``CONTENT_LENGTH`` as an int, None when absent; BodyError(400) when malformed."""
    raw = environ.get("CONTENT_LENGTH", "")
    if raw is None or str(raw).strip() == "":
        return None
    text = str(raw).strip()
    # ASCII digits only: str.isdigit() also accepts e.g. "²" (a latin-1 byte a client can
    # send), which int() then rejects with a ValueError that would escape as a 500.
    if not (text.isascii() and text.isdigit()):
        raise BodyError("400 Bad Request", f"invalid Content-Length {text[:40]!r}")
    return int(text)


def read_body(environ: WSGIEnviron, max_body: int, spool_threshold: int) -> SpooledBody:
    length = declared_length(environ)
    terminated = bool(environ.get("wsgi.input_terminated"))
    if length is not None and length > max_body:
        raise BodyError(
            "413 Content Too Large", f"request body of {length} bytes exceeds {max_body}"
        )
    body = SpooledBody(threshold=spool_threshold)
    stream = environ.get("wsgi.input")
    if stream is None or (length is None and not terminated):
        return body  # PEP 3333: no CONTENT_LENGTH and no terminated input means no body
    try:
        if length is not None and not terminated:
            copied = body.fill_from(stream, length)
            if copied < length:
                raise BodyError(
                    "400 Bad Request", f"request body ended after {copied} of {length} bytes"
                )
        else:
            body.fill_from(stream, max_body + 1)
            if body.size > max_body:
                raise BodyError(
                    "413 Content Too Large", f"request body exceeds {max_body} bytes", body
                )
    except BodyError as exc:
        if exc.partial is None:
            body.discard()
        raise
    except (OSError, ValueError) as exc:  # client went away, or a server-side read error
        body.discard()
        raise BodyError("400 Bad Request", f"could not read the request body: {exc}") from None
    return body


class ChainedInput(io.RawIOBase):
    """``wsgi.input`` for a request we began to read and then passed through: the bytes
    already read, then the rest of the original stream."""

    def __init__(self, head: BinaryIO, tail: BinaryIO) -> None:
        self._head = head
        self._streams = [head, tail]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self._streams:
            data = self._streams[0].read(len(buffer))
            if data:
                buffer[: len(data)] = data
                return len(data)
            self._streams.pop(0)
        return 0

    def close(self) -> None:
        # Only the head is ours; the server owns (and closes) its own input stream.
        self._head.close()
        super().close()


class LogStream:
    """``wsgi.errors`` for a replay: lines go to the ``wsgi_deferred.app`` logger, tagged
    with the task id (PEP 3333 requires write, writelines and flush)."""

    def __init__(self, task_id: str, log: Callable[..., None] | None = None) -> None:
        self.task_id = task_id
        self._log = log or app_logger.error
        self._pending = ""

    def write(self, text: str) -> None:
        self._pending += text
        while "\n" in self._pending:
            line, self._pending = self._pending.split("\n", 1)
            self._log("task %s: %s", self.task_id, line, extra=task_extra(self.task_id))

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._pending:
            self._log("task %s: %s", self.task_id, self._pending, extra=task_extra(self.task_id))
            self._pending = ""
