"""A snapshot of a request, taken before the ``202`` goes out, and the environ rebuilt from
it for the replay in a worker thread.

``wsgi.input`` is only valid while the original request is being served, so the whole body is
read first (PEP 3333 §"Input and Error Streams": by ``CONTENT_LENGTH``, or to EOF when the
server sets ``wsgi.input_terminated``). The replay environ is built fresh: the CGI
meta-variables (RFC 3875 §4.1), every ``HTTP_*`` variable and ``wsgi.url_scheme`` are copied;
objects tied to the original connection (sockets, the server's file wrapper) are not.

The replay sees the request the app would have seen inline (README, "What the replay sees"):
nothing is added, dropped or changed except, and only, what :func:`replay_variables` documents.
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
from .hop_by_hop import hop_by_hop_fields, is_hop_by_hop, variable_field_name
from .sanitize import log_safe
from .tasklog import task_extra

__all__ = ["BodyError", "ChainedInput", "RequestSnapshot", "capture_request"]

logger = logging.getLogger("wsgi_deferred")
app_logger = logging.getLogger("wsgi_deferred.app")

WSGIEnviron = dict[str, Any]


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
        """A short human name for the work, e.g. ``POST /render/42``: logged, stored and
        shown, so escaped (CR, LF, NUL and other controls: :func:`~.sanitize.log_safe`)."""
        path = self.variables.get("SCRIPT_NAME", "") + self.variables.get("PATH_INFO", "")
        with contextlib.suppress(UnicodeError):
            path = path.encode("latin-1").decode("utf-8")
        return log_safe(f"{self.method[:20]} {path}")[:200]

    def replay_environ(self, task_id: str, extra: dict[str, Any] | None = None) -> WSGIEnviron:
        """A new environ for one replay; its ``wsgi.input`` reads the captured body."""
        # The variables are final (see replay_variables): CONTENT_LENGTH is already the exact
        # body size where the original framed its body otherwise, and absent where it was.
        environ: WSGIEnviron = dict(self.variables)
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
    variables = replay_variables(environ, body.size)
    return RequestSnapshot(
        variables=variables,
        url_scheme=str(environ.get("wsgi.url_scheme", "http")),
        multiprocess=bool(environ.get("wsgi.multiprocess", False)),
        body=body,
    )


def replay_variables(environ: WSGIEnviron, body_size: int) -> dict[str, str]:
    """The variables a replay gets: the original's CGI and ``HTTP_*`` variables, unchanged,
    less exactly these:

    * dotted keys (``wsgi.*``, ``gunicorn.socket``, ``werkzeug.request``, ...) and values that
      are not ``str``: per-connection objects that must not outlive it (the replay environ
      gets fresh ``wsgi.*`` values);
    * hop-by-hop fields (:mod:`wsgi_deferred.hop_by_hop`, RFC 9110 §7.6.1), including those
      the request's own ``Connection`` field names;
    * ``CONTENT_LENGTH`` is set to the exact body size when the body was framed without one
      (chunked, or read to EOF under ``wsgi.input_terminated``): the replay has no
      ``Transfer-Encoding`` and no ``wsgi.input_terminated``, so the length is how the app
      learns the size (PEP 3333 §"Input and Error Streams"; with ``wsgi.input_terminated``
      werkzeug would call ``read()`` without a size, which PEP 3333's input does not offer and
      wsgiref.validate rejects). A request without a body keeps its ``CONTENT_LENGTH`` as it
      was: absent, empty or ``"0"``.
    """
    fields = hop_by_hop_fields([str(environ.get("HTTP_CONNECTION", ""))])
    variables: dict[str, str] = {}
    for key, value in environ.items():
        if "." in key or not isinstance(value, str):
            continue
        name = variable_field_name(key)
        if name is not None and is_hop_by_hop(name, fields):
            continue
        variables[key] = value
    declared = declared_length(environ)
    # A body read to EOF (a non-empty one, or an empty chunked one); under gunicorn every
    # request is ``wsgi.input_terminated``, a GET without a body included.
    framed_otherwise = (
        declared is None
        and bool(environ.get("wsgi.input_terminated"))
        and (body_size > 0 or "HTTP_TRANSFER_ENCODING" in environ)
    )
    if framed_otherwise or (declared is not None and declared != body_size):
        variables["CONTENT_LENGTH"] = str(body_size)
    return variables


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
        if length is not None:
            # A declared length is the client's promise, whatever wsgi.input_terminated says:
            # gunicorn sets that flag on a Content-Length body too, and a client that dies or
            # half-closes mid-upload then reads as a clean EOF. Fewer bytes than promised is a
            # truncated request (RFC 9112 §8: "incomplete message"), never a task to run.
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
            self._log("task %s: %s", self.task_id, log_safe(line), extra=task_extra(self.task_id))

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._pending:
            self._log(
                "task %s: %s", self.task_id, log_safe(self._pending), extra=task_extra(self.task_id)
            )
            self._pending = ""
