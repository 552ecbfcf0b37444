"""capture.py: reading the whole body before the 202, and the environ rebuilt for replay."""

from __future__ import annotations

import io
import logging
import os
from typing import Any

import pytest
from apps import make_environ

from wsgi_deferred.buffers import SPOOL_THRESHOLD
from wsgi_deferred.capture import (
    BodyError,
    ChainedInput,
    LogStream,
    capture_request,
    declared_length,
)

MIB = 1 << 20


class BrokenInput(io.RawIOBase):
    """A ``wsgi.input`` whose client went away after *good* bytes."""

    def __init__(self, good: bytes) -> None:
        self.good = io.BytesIO(good)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        data = self.good.read(size)
        if not data:
            raise OSError("connection reset by peer")
        return data


def environ_with_input(data: bytes, **overrides: Any) -> dict[str, Any]:
    environ = make_environ("/upload", "POST")
    environ["wsgi.input"] = io.BytesIO(data)
    environ.pop("CONTENT_LENGTH", None)
    environ.update(overrides)
    return environ


# -- reading the body --------------------------------------------------------------------------


def test_body_is_read_by_content_length_only() -> None:
    environ = environ_with_input(b"0123456789-and-the-next-request", CONTENT_LENGTH="10")
    snapshot = capture_request(environ, max_body=100)
    try:
        assert snapshot.body.getvalue() == b"0123456789"
        assert environ["wsgi.input"].read() == b"-and-the-next-request"  # not over-read
    finally:
        snapshot.discard()


def test_body_is_read_to_eof_when_input_terminated() -> None:
    environ = environ_with_input(b"x" * 5000, **{"wsgi.input_terminated": True})
    snapshot = capture_request(environ, max_body=10_000)
    try:
        assert snapshot.body.getvalue() == b"x" * 5000
        assert snapshot.replay_environ("t")["CONTENT_LENGTH"] == "5000"
    finally:
        snapshot.discard()


def test_no_content_length_and_not_terminated_means_empty_body() -> None:
    environ = environ_with_input(b"ignored")
    snapshot = capture_request(environ, max_body=100)
    assert snapshot.body.size == 0
    assert environ["wsgi.input"].tell() == 0  # PEP 3333: must not read past the request


def test_empty_content_length_is_no_body() -> None:
    snapshot = capture_request(environ_with_input(b"abc", CONTENT_LENGTH=""), max_body=100)
    assert snapshot.body.size == 0


def test_large_body_spools_to_a_temporary_file() -> None:
    data = os.urandom(SPOOL_THRESHOLD + 12345)
    environ = environ_with_input(data, CONTENT_LENGTH=str(len(data)))
    snapshot = capture_request(environ, max_body=10 * MIB)
    path = snapshot.body.path
    assert not snapshot.body.in_memory
    assert path is not None and os.path.isfile(path)
    assert os.path.getsize(path) == len(data)
    assert snapshot.body.getvalue() == data
    snapshot.discard()
    assert not os.path.exists(path)


def test_small_body_stays_in_memory() -> None:
    environ = environ_with_input(b"small", CONTENT_LENGTH="5")
    snapshot = capture_request(environ, max_body=100)
    assert snapshot.body.in_memory and snapshot.body.path is None


def test_content_length_over_max_body_is_413_before_reading() -> None:
    environ = environ_with_input(b"x" * 200, CONTENT_LENGTH="200")
    with pytest.raises(BodyError) as info:
        capture_request(environ, max_body=100)
    assert info.value.status.startswith("413")
    assert info.value.partial is None
    assert environ["wsgi.input"].tell() == 0  # nothing was read


def test_terminated_body_over_max_body_is_413_with_the_partial_read() -> None:
    data = b"y" * 300
    environ = environ_with_input(data, **{"wsgi.input_terminated": True})
    with pytest.raises(BodyError) as info:
        capture_request(environ, max_body=100)
    assert info.value.status.startswith("413")
    partial = info.value.partial
    assert partial is not None
    try:
        assert partial.getvalue() == data[:101]
    finally:
        partial.discard()


def test_body_of_exactly_max_body_is_accepted() -> None:
    for terminated in (False, True):
        environ = environ_with_input(
            b"z" * 100, CONTENT_LENGTH="100", **{"wsgi.input_terminated": terminated}
        )
        snapshot = capture_request(environ, max_body=100)
        assert snapshot.body.size == 100
        snapshot.discard()


def test_short_body_is_400() -> None:
    environ = environ_with_input(b"only ten b", CONTENT_LENGTH="50")
    with pytest.raises(BodyError) as info:
        capture_request(environ, max_body=100)
    assert info.value.status.startswith("400")
    assert "10 of 50" in info.value.message


# "\u00b2" (superscript two) can arrive from the wire (latin-1) and is str.isdigit().
@pytest.mark.parametrize(
    "value", ["abc", "-1", "1.5", "12x", "0x10", "1e3", "+5", "\u00b2", "\u0663"]
)
def test_invalid_content_length_is_400(value: str) -> None:
    with pytest.raises(BodyError) as info:
        capture_request(environ_with_input(b"abc", CONTENT_LENGTH=value), max_body=100)
    assert info.value.status.startswith("400")


def test_declared_length() -> None:
    assert declared_length({}) is None
    assert declared_length({"CONTENT_LENGTH": ""}) is None
    assert declared_length({"CONTENT_LENGTH": " 42 "}) == 42
    assert declared_length({"CONTENT_LENGTH": "0"}) == 0


def test_read_error_is_400_and_nothing_is_kept() -> None:
    environ = environ_with_input(b"", CONTENT_LENGTH="100")
    environ["wsgi.input"] = BrokenInput(b"abc")
    with pytest.raises(BodyError) as info:
        capture_request(environ, max_body=1000)
    assert info.value.status.startswith("400")


# -- the replay environ ------------------------------------------------------------------------


def original_environ() -> dict[str, Any]:
    environ = make_environ(
        "/réport/7",
        "POST",
        data=b"payload",
        query_string="a=1&b=2",
        content_type="text/plain",
        headers={"X-Trace": "abc", "Authorization": "Bearer t", "Cookie": "sid=1"},
        SCRIPT_NAME="/app",
        REMOTE_ADDR="10.0.0.1",
        REMOTE_USER="alice",
        AUTH_TYPE="Basic",
        SERVER_SOFTWARE="test/1.0",
    )
    environ["wsgi.url_scheme"] = "https"
    environ["wsgi.multiprocess"] = True
    environ["wsgi.multithread"] = False
    environ["wsgi.run_once"] = True
    environ["gunicorn.socket"] = object()
    environ["wsgi.file_wrapper"] = object()
    environ["werkzeug.request"] = object()
    environ["NOT_A_STRING"] = 42
    return environ


def test_replay_environ_is_rebuilt_fresh() -> None:
    original = original_environ()
    snapshot = capture_request(original, max_body=1000)
    replay = snapshot.replay_environ("task-1", {"wsgi_deferred.id": "task-1"})
    assert replay is not original
    # CGI meta-variables and HTTP_* are copied.
    for key in (
        "REQUEST_METHOD",
        "SCRIPT_NAME",
        "PATH_INFO",
        "QUERY_STRING",
        "CONTENT_TYPE",
        "SERVER_NAME",
        "SERVER_PORT",
        "SERVER_PROTOCOL",
        "SERVER_SOFTWARE",
        "REMOTE_ADDR",
        "REMOTE_USER",
        "AUTH_TYPE",
        "HTTP_HOST",
        "HTTP_X_TRACE",
        "HTTP_AUTHORIZATION",
        "HTTP_COOKIE",
    ):
        assert replay[key] == original[key], key
    assert replay["CONTENT_LENGTH"] == "7"
    assert replay["wsgi.url_scheme"] == "https"
    assert replay["wsgi.multiprocess"] is True
    # Fresh per-request objects, fixed flags.
    assert replay["wsgi.version"] == (1, 0)
    assert replay["wsgi.multithread"] is True
    assert replay["wsgi.run_once"] is False
    # CONTENT_LENGTH is exact, so no wsgi.input_terminated (werkzeug would then read() with
    # no size, which wsgiref.validate rejects).
    assert "wsgi.input_terminated" not in replay
    assert replay["wsgi.input"] is not original["wsgi.input"]
    assert replay["wsgi.input"].read() == b"payload"
    assert isinstance(replay["wsgi.errors"], LogStream)
    assert replay["wsgi_deferred.id"] == "task-1"
    # Nothing tied to the original connection survives.
    for key in ("gunicorn.socket", "wsgi.file_wrapper", "werkzeug.request", "NOT_A_STRING"):
        assert key not in replay, key
    dotted = {k for k in replay if "." in k}
    assert dotted <= {
        "wsgi.version",
        "wsgi.url_scheme",
        "wsgi.input",
        "wsgi.errors",
        "wsgi.multithread",
        "wsgi.multiprocess",
        "wsgi.run_once",
        "wsgi_deferred.id",
    }
    snapshot.discard()


def test_each_replay_environ_has_its_own_input() -> None:
    snapshot = capture_request(original_environ(), max_body=1000)
    first = snapshot.replay_environ("t")
    second = snapshot.replay_environ("t")
    assert first["wsgi.input"].read(3) == b"pay"
    assert second["wsgi.input"].read() == b"payload"
    assert first["wsgi.input"].read() == b"load"
    snapshot.discard()


def test_snapshot_label_and_method() -> None:
    snapshot = capture_request(original_environ(), max_body=1000)
    assert snapshot.method == "POST"
    assert snapshot.label == "POST /app/réport/7"
    snapshot.discard()


# -- helpers -----------------------------------------------------------------------------------


def test_chained_input_reads_head_then_tail() -> None:
    chained = ChainedInput(io.BytesIO(b"head-"), io.BytesIO(b"tail"))
    assert chained.read(3) == b"hea"
    assert chained.read() == b"d-tail"
    assert chained.read(10) == b""
    buffered = io.BufferedReader(ChainedInput(io.BytesIO(b"a\nb"), io.BytesIO(b"c\n")))
    assert buffered.readlines() == [b"a\n", b"bc\n"]


def test_log_stream_writes_lines_to_the_app_logger(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="wsgi_deferred.app")
    stream = LogStream("T123")
    stream.write("first line\nsecond ")
    stream.writelines(["part\n", "tail"])
    assert [r.getMessage() for r in caplog.records] == [
        "task T123: first line",
        "task T123: second part",
    ]
    stream.flush()
    assert caplog.records[-1].getMessage() == "task T123: tail"
    assert all(r.name == "wsgi_deferred.app" for r in caplog.records)
    stream.flush()  # nothing pending: nothing logged
    assert len(caplog.records) == 3
