"""replay.py: running an app on a rebuilt environ and buffering its response, PEP 3333 to
the letter (one fixture app per quirk, see apps.py)."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable
from typing import Any

import apps
import pytest
from apps import AppError, make_environ
from werkzeug.wsgi import FileWrapper

from wsgi_deferred.errors import DeferredError, ProtocolError
from wsgi_deferred.replay import (
    BufferedResponse,
    _ClosingReader,
    run_and_buffer,
    serve_body,
    strip_hop_by_hop,
)


def buffer(app: Callable[..., Iterable[bytes]], **kwargs: Any) -> BufferedResponse:
    return run_and_buffer(app, make_environ("/x", "GET"), **kwargs)


def body_of(response: BufferedResponse) -> bytes:
    try:
        return response.body.getvalue()
    finally:
        response.body.discard()


def test_plain_list_app() -> None:
    response = buffer(apps.plain_app)
    assert response.status == "200 OK"
    assert response.headers == [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", "11"),
        ("X-Plain", "yes"),
    ]
    assert body_of(response) == b"hello world"


def test_write_callable_and_returned_body_are_joined_in_order() -> None:
    response = buffer(apps.write_app)
    assert response.status == "200 OK"
    assert ("X-Write", "1") in response.headers
    assert body_of(response) == b"written, then returned"


def test_lazy_start_response_inside_the_generator() -> None:
    response = buffer(apps.lazy_app)
    assert response.status == "201 Created"
    assert ("X-Lazy", "1") in response.headers
    assert body_of(response) == b"lazy body"


def test_exc_info_before_any_body_replaces_the_headers() -> None:
    response = buffer(apps.exc_info_app)
    assert response.status == "500 Internal Server Error"
    assert ("X-Second", "1") in response.headers
    assert ("X-First", "1") not in response.headers
    assert body_of(response) == b"error page"


def test_exc_info_after_the_body_started_re_raises_the_app_exception() -> None:
    with pytest.raises(AppError, match="after the body started"):
        buffer(apps.exc_info_after_body_app)


def test_second_start_response_without_exc_info_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="second time"):
        buffer(apps.second_start_response_app)


def test_close_is_called_on_success() -> None:
    app = apps.ClosingApp()
    response = buffer(app)
    assert body_of(response) == b"one two three"
    assert app.closed


def test_close_is_called_when_iteration_fails() -> None:
    app = apps.ClosingApp(fail_after=1)
    with pytest.raises(AppError, match="mid-iteration"):
        buffer(app)
    assert app.closed


def test_close_is_called_on_protocol_errors() -> None:
    class StrBody(apps.ClosingBody):
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield "text"

    body = StrBody([])

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", apps.TEXT)
        return body

    with pytest.raises(ProtocolError, match="str"):
        buffer(app)
    assert body.closed.is_set()


@pytest.mark.parametrize(
    ("app", "error", "match"),
    [
        (apps.raise_before_start_app, AppError, "before start_response"),
        (apps.raise_after_start_app, AppError, "after start_response"),
        (apps.raise_mid_iteration_app, AppError, "mid-iteration"),
        (apps.no_start_response_app, ProtocolError, "without calling start_response"),
        (apps.str_body_app, ProtocolError, "not bytes"),
    ],
)
def test_failing_apps_propagate(
    app: Callable[..., Iterable[bytes]], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        buffer(app)


def test_body_before_start_response_is_a_protocol_error() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        yield b"too early"
        start_response("200 OK", apps.TEXT)

    with pytest.raises(ProtocolError, match="before start_response"):
        buffer(app)


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        ("200", []),
        ("OK", []),
        ("200 OK\r\nX-Injected: 1", []),
        (b"200 OK", []),
        ("099 Low", []),
        ("200 OK", ()),
        ("200 OK", [("Name", "value", "extra")]),
        ("200 OK", [["Content-Type", "text/plain"]]),
        ("200 OK", [("Bad Name", "v")]),
        ("200 OK", [("X-Header", "line\r\nX-Injected: 1")]),
        ("200 OK", [("X-Header", 5)]),
        ("200 OK", [(b"X-Header", "v")]),
    ],
)
def test_invalid_status_or_headers_are_protocol_errors(status: Any, headers: Any) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response(status, headers)
        return [b"x"]

    with pytest.raises(ProtocolError) as info:
        buffer(app)
    assert isinstance(info.value, DeferredError)


def test_write_needs_bytes() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        write = start_response("200 OK", apps.TEXT)
        write("text")
        return []

    with pytest.raises(ProtocolError, match="bytes"):
        buffer(app)


def test_response_body_spools_to_disk_past_the_threshold(tmp_path: Any) -> None:
    app = apps.big_app(3 * 65536 + 17)
    response = buffer(app, spool_threshold=65536, spool_dir=str(tmp_path))
    assert not response.body.in_memory
    assert response.body.path is not None and response.body.path.startswith(str(tmp_path))
    assert body_of(response) == app.data  # type: ignore[attr-defined]
    assert os.listdir(tmp_path) == []  # discarded: the spill file is gone


def test_default_threshold_is_about_one_mebibyte(tmp_path: Any) -> None:
    small = buffer(apps.big_app(1 << 20), spool_dir=str(tmp_path))
    assert small.body.in_memory
    small.body.discard()
    big = buffer(apps.big_app((1 << 20) + 1), spool_dir=str(tmp_path))
    assert not big.body.in_memory
    big.body.discard()


def test_partial_body_is_discarded_on_error(tmp_path: Any) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", apps.TEXT)
        yield b"x" * 5000
        raise AppError("late failure")

    with pytest.raises(AppError):
        run_and_buffer(app, make_environ("/x"), spool_threshold=1000, spool_dir=str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_request_input_is_closed_after_the_run() -> None:
    environ = make_environ("/x", "POST", data=b"body")
    stream = environ["wsgi.input"]
    body_of(run_and_buffer(apps.echo_app, environ))
    assert stream.closed


def test_file_wrapper_app_is_buffered_and_its_file_closed() -> None:
    app = apps.FileApp()
    environ = make_environ("/file")
    environ["wsgi.file_wrapper"] = FileWrapper
    response = run_and_buffer(app, environ)
    assert app.used_wrapper == [True]
    assert body_of(response) == apps.FILE_DATA
    assert app.files[0].closed


def test_file_app_without_wrapper_uses_the_fallback_iterator() -> None:
    app = apps.FileApp()
    response = buffer(app)
    assert app.used_wrapper == [False]
    assert body_of(response) == apps.FILE_DATA
    assert app.files[0].closed


# -- serving a stored body ---------------------------------------------------------------------


def test_serve_body_uses_the_servers_file_wrapper() -> None:
    reader = io.BytesIO(b"data")
    served = serve_body({"wsgi.file_wrapper": FileWrapper}, reader)
    assert isinstance(served, FileWrapper)
    assert b"".join(served) == b"data"
    served.close()
    assert reader.closed


def test_serve_body_without_wrapper_iterates_in_chunks_and_closes() -> None:
    reader = io.BytesIO(b"a" * 10)
    served = serve_body({}, reader)
    assert isinstance(served, _ClosingReader)
    served.chunk_size = 4
    assert list(served) == [b"aaaa", b"aaaa", b"aa"]
    assert not reader.closed
    served.close()  # type: ignore[attr-defined]
    assert reader.closed


def test_strip_hop_by_hop_keeps_end_to_end_headers_in_order() -> None:
    headers = [
        ("Content-Type", "text/plain"),
        ("Connection", "close"),
        ("Set-Cookie", "a=1"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "h2c"),
        ("Proxy-Authenticate", "Basic"),
        ("TE", "trailers"),
        ("Trailer", "X"),
        ("Set-Cookie", "b=2"),
    ]
    assert strip_hop_by_hop(headers) == [
        ("Content-Type", "text/plain"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]


def test_only_the_servers_own_input_is_closed() -> None:
    """An app (or inner middleware) may wrap environ["wsgi.input"]; PEP 3333 forbids closing
    its wrapper, and the stream we opened must still be closed."""

    class NoClose:
        def __init__(self, stream: Any) -> None:
            self.stream = stream

        def read(self, size: int) -> bytes:
            return self.stream.read(size)

        def close(self) -> None:
            raise AssertionError("input.close() must not be called")

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        environ["wsgi.input"] = NoClose(environ["wsgi.input"])
        start_response("200 OK", apps.TEXT)
        return [environ["wsgi.input"].read(4)]

    environ = make_environ("/x", "POST", data=b"data")
    original = environ["wsgi.input"]
    assert body_of(run_and_buffer(app, environ)) == b"data"
    assert original.closed
