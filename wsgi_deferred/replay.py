"""Run a WSGI application on a rebuilt environ and buffer its whole response.

The buffering side plays the server's part of PEP 3333 to the letter, so an app behaves
exactly as it would inline:

* ``start_response`` may be called lazily, during the first iteration (§"The start_response()
  Callable": "the server ... must not send headers until the first non-empty bytestring");
* a second call without ``exc_info`` is an error; with ``exc_info`` it replaces the headers
  while no body byte has been produced, and re-raises the exception once one has;
* the ``write`` callable it returns appends to the same buffer;
* body chunks must be ``bytes``; the app_iter's ``close()`` is always called, in ``finally``;
* bodies spool to a temporary file past about 1 MiB (:class:`~wsgi_deferred.buffers.SpooledBody`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, BinaryIO

from .buffers import COPY_CHUNK, SPOOL_THRESHOLD, SpooledBody
from .errors import ProtocolError
from .hop_by_hop import hop_by_hop_fields, is_hop_by_hop

__all__ = ["BufferedResponse", "run_and_buffer", "serve_body", "strip_hop_by_hop"]

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

# Status reasons and header values are latin-1 text without control characters other than
# HTAB (PEP 3333 "native strings"; RFC 9110 §5.5 field-value). A value that breaks this would
# be stored as "done" and then make every fetch of the result fail in the server.
_STATUS_RE = re.compile(r"[1-9][0-9]{2} [\t\x20-\x7e\x80-\xff]*\Z")
_FIELD_VALUE_RE = re.compile(r"[\t\x20-\x7e\x80-\xff]*\Z")
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


@dataclass
class BufferedResponse:
    """An app's complete response: status line, headers and spooled body."""

    status: str
    headers: list[tuple[str, str]]
    body: SpooledBody


def strip_hop_by_hop(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers minus the hop-by-hop ones (RFC 9110 §7.6.1), which belong to one connection:
    the fixed ones and those a ``Connection`` header of the same response names."""
    headers = list(headers)
    fields = hop_by_hop_fields(value for name, value in headers if name.lower() == "connection")
    return [(name, value) for name, value in headers if not is_hop_by_hop(name, fields)]


def _check_status(status: object) -> str:
    if not isinstance(status, str) or not _STATUS_RE.match(status):
        raise ProtocolError(f"invalid status {status!r}: PEP 3333 wants e.g. '200 OK'")
    return status


def _check_headers(headers: object) -> list[tuple[str, str]]:
    if not isinstance(headers, list):
        raise ProtocolError(f"response_headers must be a list, not {type(headers).__name__}")
    checked = []
    for item in headers:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise ProtocolError(f"response header {item!r} is not a (name, value) tuple")
        name, value = item
        if not isinstance(name, str) or not _TOKEN_RE.match(name):
            raise ProtocolError(f"invalid response header name {name!r}")
        if not isinstance(value, str) or not _FIELD_VALUE_RE.match(value):
            raise ProtocolError(f"invalid value for response header {name!r}")
        checked.append((name, value))
    return checked


class _Buffering:
    """The server's side of one call: ``start_response``, ``write`` and the body."""

    def __init__(self, spool_threshold: int, spool_dir: str | None) -> None:
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.body = SpooledBody(threshold=spool_threshold, directory=spool_dir)

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.body.size:
                    # "Headers already sent": PEP 3333 says re-raise the app's exception.
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # break the frame <-> traceback cycle (PEP 3333)
        elif self.status is not None:
            raise ProtocolError("start_response called a second time without exc_info")
        self.status = _check_status(status)
        self.headers = _check_headers(headers)
        return self.write

    def write(self, data: bytes) -> None:
        if self.status is None:
            raise ProtocolError("write() called before start_response")
        if not isinstance(data, bytes):
            raise ProtocolError(f"write() needs bytes, not {type(data).__name__}")
        self.body.write(data)

    def consume(self, result: Iterable[bytes]) -> None:
        for chunk in result:
            if not isinstance(chunk, bytes):
                raise ProtocolError(f"the app yielded {type(chunk).__name__}, not bytes")
            if chunk:
                if self.status is None:
                    raise ProtocolError("the app produced body data before start_response")
                self.body.write(chunk)


def run_and_buffer(
    app: WSGIApp,
    environ: dict[str, Any],
    *,
    spool_threshold: int = SPOOL_THRESHOLD,
    spool_dir: str | None = None,
) -> BufferedResponse:
    """Call *app* and collect its response. Whatever the app raises propagates (the caller
    records the task as failed); so does :class:`ProtocolError` for PEP 3333 violations.
    On any error the partial body is discarded."""
    buffering = _Buffering(spool_threshold, spool_dir)
    # Taken now: the app may replace environ["wsgi.input"] with its own wrapper (middleware
    # such as wsgiref.validate does, and forbids closing it); we close only what we opened.
    stream = environ.get("wsgi.input")
    try:
        result = app(environ, buffering.start_response)
        try:
            buffering.consume(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if buffering.status is None:
            raise ProtocolError("the application returned without calling start_response")
    except BaseException:
        buffering.body.discard()
        raise
    finally:
        if stream is not None and hasattr(stream, "close"):
            stream.close()
    return BufferedResponse(buffering.status, buffering.headers, buffering.body)


class _ClosingReader:
    """Iterate a binary reader in chunks and close it when the server calls ``close()``."""

    def __init__(self, reader: BinaryIO, chunk_size: int = COPY_CHUNK) -> None:
        self.reader = reader
        self.chunk_size = chunk_size

    def __iter__(self) -> Iterator[bytes]:
        while True:
            data = self.reader.read(self.chunk_size)
            if not data:
                return
            yield data

    def close(self) -> None:
        self.reader.close()


def serve_body(environ: dict[str, Any], reader: BinaryIO) -> Iterable[bytes]:
    """An app_iter over *reader*: the server's ``wsgi.file_wrapper`` when it offers one
    (PEP 3333 §"Optional Platform-Specific File Handling": sendfile for real files), else a
    chunked iterator. Either way ``close()`` closes the reader."""
    wrapper = environ.get("wsgi.file_wrapper")
    if wrapper is not None:
        return wrapper(reader, COPY_CHUNK)
    return _ClosingReader(reader)
