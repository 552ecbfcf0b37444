"""The replay sees the request the app would have seen inline (README, "What the replay sees"):
no variable added, dropped or changed beyond the documented list; one hop-by-hop rule, which
honours ``Connection`` tokens, for request variables and response headers alike."""

from __future__ import annotations

import hashlib
import hmac
import io
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from apps import TEXT, EnvironRecorder, Harness, call, make_environ, result_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from replay_diff import picture, undocumented_differences

from wsgi_deferred import DeferredMiddleware
from wsgi_deferred.capture import capture_request
from wsgi_deferred.hop_by_hop import (
    connection_options,
    hop_by_hop_fields,
    is_hop_by_hop,
    variable_field_name,
)
from wsgi_deferred.replay import strip_hop_by_hop

Environ = dict[str, Any]


@pytest.fixture
def harness() -> Iterator[Harness]:
    with Harness() as made:
        yield made


def replayed(harness: Harness, make: Callable[[], Environ]) -> tuple[Environ, bytes]:
    """The environ (and body) the app sees when the request *make* builds is deferred."""
    recorder = EnvironRecorder()
    mw = harness(recorder, routes=["/<path:rest>", "/"])
    accepted = call(mw, make())
    assert result_of(mw, accepted).body == b"recorded"
    return recorder.environs[0], recorder.bodies[0]


def inline(make: Callable[[], Environ]) -> tuple[Environ, bytes]:
    recorder = EnvironRecorder()
    assert call(recorder, make()).body == b"recorded"
    return recorder.environs[0], recorder.bodies[0]


def assert_faithful(harness: Harness, make: Callable[[], Environ]) -> Environ:
    before, body = inline(make)
    after, replay_body = replayed(harness, make)
    assert replay_body == body
    differences = undocumented_differences(picture(before), picture(after), body, frozenset())
    assert differences == {}
    return after


# -- the request's framing -------------------------------------------------------------------


def without_body(**overrides: Any) -> Callable[[], Environ]:
    def make() -> Environ:
        environ = make_environ("/hook", "GET", headers={"X-Signature": "s"})
        environ.pop("CONTENT_LENGTH", None)
        environ.update(overrides)
        return environ

    return make


def test_a_request_without_a_body_is_replayed_without_content_length(harness: Harness) -> None:
    """The issue's case: a replay used to invent ``CONTENT_LENGTH: "0"``."""
    after = assert_faithful(harness, without_body())
    assert "CONTENT_LENGTH" not in after
    # gunicorn marks every request, body or not, wsgi.input_terminated.
    after = assert_faithful(harness, without_body(**{"wsgi.input_terminated": True}))
    assert "CONTENT_LENGTH" not in after


@pytest.mark.parametrize("value", ["", "0"])
def test_an_empty_or_zero_content_length_is_kept_as_it_was(harness: Harness, value: str) -> None:
    # werkzeug's development server sets CONTENT_LENGTH "" on every request without one.
    after = assert_faithful(harness, without_body(CONTENT_LENGTH=value))
    assert after["CONTENT_LENGTH"] == value


def test_an_hmac_over_the_headers_verifies_the_same_inline_and_replayed(
    harness: Harness,
) -> None:
    """A webhook check that signs what it was sent, Content-Length included (or absent)."""
    key = b"webhook-secret"

    def signature(environ: Environ) -> str:
        signed = "\n".join(
            f"{name}={environ.get(name, '<absent>')}"
            for name in ("REQUEST_METHOD", "PATH_INFO", "CONTENT_LENGTH", "CONTENT_TYPE")
        )
        return hmac.new(key, signed.encode("latin-1"), hashlib.sha256).hexdigest()

    expected = signature(without_body()())
    seen: list[str] = []

    def webhook(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        seen.append(signature(environ))
        start_response("200 OK", TEXT)
        return [b"ok" if seen[-1] == expected else b"bad signature"]

    mw = harness(webhook, routes=["/hook"])
    assert result_of(mw, call(mw, without_body()())).body == b"ok"
    assert seen == [expected]


def chunked(data: bytes, **overrides: Any) -> Callable[[], Environ]:
    """A chunked upload as gunicorn presents it: no CONTENT_LENGTH, read to EOF."""

    def make() -> Environ:
        environ = make_environ("/upload", "POST", headers={"Transfer-Encoding": "chunked"})
        environ.pop("CONTENT_LENGTH", None)
        environ["wsgi.input"] = io.BytesIO(data)
        environ["wsgi.input_terminated"] = True
        environ.update(overrides)
        return environ

    return make


@pytest.mark.parametrize("data", [b"", b"x", b"chunked body " * 500])
def test_a_chunked_body_gets_its_exact_content_length_and_no_transfer_encoding(
    harness: Harness, data: bytes
) -> None:
    after = assert_faithful(harness, chunked(data))
    assert after["CONTENT_LENGTH"] == str(len(data))
    assert "HTTP_TRANSFER_ENCODING" not in after
    assert "wsgi.input_terminated" not in after


def test_a_terminated_body_without_a_length_gets_its_size(harness: Harness) -> None:
    # A server that reads to EOF without saying chunked (wsgi.input_terminated alone).
    def make() -> Environ:
        environ = chunked(b"to the end")()
        del environ["HTTP_TRANSFER_ENCODING"]
        environ["CONTENT_LENGTH"] = ""
        return environ

    after = assert_faithful(harness, make)
    assert after["CONTENT_LENGTH"] == "10"


def test_a_declared_length_is_kept_verbatim(harness: Harness) -> None:
    def make() -> Environ:
        return make_environ("/upload", "PUT", data=b"0123456789")

    after = assert_faithful(harness, make)
    assert after["CONTENT_LENGTH"] == "10"


# -- hop-by-hop fields -----------------------------------------------------------------------


def test_fields_named_by_connection_and_proxy_credentials_are_not_replayed(
    harness: Harness,
) -> None:
    def make() -> Environ:
        return make_environ(
            "/r",
            "POST",
            data=b"b",
            headers=[
                ("Connection", "close, X-Hop-One"),
                ("Connection", "x-hop-two"),  # a repeated field: werkzeug joins them
                ("X-Hop-One", "1"),
                ("X-Hop-Two", "2"),
                ("X-End-To-End", "kept"),
                ("Proxy-Authorization", "Basic cHJveHk6c2VjcmV0"),
                ("Authorization", "Bearer app-token"),
                ("Keep-Alive", "timeout=5"),
                ("TE", "trailers"),
            ],
        )

    original = make()
    assert original["HTTP_CONNECTION"] == "close, X-Hop-One, x-hop-two"
    after = assert_faithful(harness, make)
    for gone in (
        "HTTP_CONNECTION",
        "HTTP_X_HOP_ONE",
        "HTTP_X_HOP_TWO",
        "HTTP_PROXY_AUTHORIZATION",
        "HTTP_KEEP_ALIVE",
        "HTTP_TE",
    ):
        assert gone not in after, gone
    assert after["HTTP_X_END_TO_END"] == "kept"
    assert after["HTTP_AUTHORIZATION"] == "Bearer app-token"


def test_connection_cannot_name_the_body_variables_away() -> None:
    """CONTENT_TYPE and CONTENT_LENGTH are not HTTP_* variables: they describe the body."""
    environ = make_environ(
        "/r",
        "POST",
        data=b"abc",
        content_type="text/plain",
        headers={"Connection": "content-length, content-type"},
    )
    snapshot = capture_request(environ, max_body=100)
    try:
        assert snapshot.variables["CONTENT_LENGTH"] == "3"
        assert snapshot.variables["CONTENT_TYPE"] == "text/plain"
    finally:
        snapshot.discard()


def test_the_one_predicate() -> None:
    assert connection_options(["close, X-Foo", " x_bar ,, "]) == {"close", "x-foo", "x-bar"}
    fields = hop_by_hop_fields(["X-Foo"])
    assert is_hop_by_hop("X-FOO", fields) and is_hop_by_hop("x_foo", fields)
    assert is_hop_by_hop("Proxy-Authorization") and is_hop_by_hop("Transfer-Encoding")
    assert not is_hop_by_hop("X-Foo") and not is_hop_by_hop("Authorization")
    assert variable_field_name("HTTP_X_TRACE_ID") == "x-trace-id"
    assert variable_field_name("CONTENT_LENGTH") is None


def test_response_headers_named_by_connection_are_not_stored(harness: Harness) -> None:
    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response(
            "200 OK",
            [
                *TEXT,
                ("Connection", "X-Internal-Route"),
                ("X-Internal-Route", "backend-7"),
                ("X-Public", "yes"),
                ("Proxy-Authenticate", "Basic"),
            ],
        )
        return [b"ok"]

    mw = harness(app, routes=["/r"])
    final = result_of(mw, call(mw, make_environ("/r", "POST")))
    names = [name.lower() for name, _ in final.headers]
    assert "x-public" in names
    for gone in ("connection", "x-internal-route", "proxy-authenticate"):
        assert gone not in names, gone
    repeated = [("connection", "A"), ("a", "1"), ("Connection", "b"), ("B", "2")]
    assert strip_hop_by_hop(repeated) == []


# -- the property ----------------------------------------------------------------------------

# How real servers present a request (checked against them in tests/e2e/test_replay_servers.py):
# - wsgiref: no CONTENT_LENGTH without a body, no wsgi.input_terminated;
# - werkzeug's development server: CONTENT_LENGTH "" without a body, terminated when chunked;
# - gunicorn: wsgi.input_terminated on every request, chunked bodies without CONTENT_LENGTH.
SERVER_STYLES = ["wsgiref", "werkzeug", "gunicorn"]
token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=10).filter(
    lambda text: text.strip("-") == text
)
header_value = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=30
)


@st.composite
def request_makers(draw: st.DrawFn) -> Callable[[], Environ]:
    style = draw(st.sampled_from(SERVER_STYLES))
    method = draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]))
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    data = b"" if framing == "none" else draw(st.binary(max_size=2000))
    names = draw(st.lists(token, max_size=5, unique=True))
    headers = [("X-" + name, draw(header_value)) for name in names]
    named = draw(st.lists(st.sampled_from(names), unique=True)) if names else []
    if named or draw(st.booleans()):
        headers.append(("Connection", ", ".join(["keep-alive", *("X-" + n for n in named)])))
    if draw(st.booleans()):
        headers.append(("Proxy-Authorization", "Basic " + draw(header_value)))
    extra = {"gunicorn.socket": object(), "wsgi.file_wrapper": object(), "SERVER_ODD": 7}

    def make() -> Environ:
        environ = make_environ(
            "/p", method, headers=headers, data=data if framing == "length" else None
        )
        environ.pop("CONTENT_LENGTH", None)
        if framing == "length":
            environ["CONTENT_LENGTH"] = str(len(data))
        elif style == "werkzeug":
            environ["CONTENT_LENGTH"] = ""
        if framing == "chunked":
            environ["HTTP_TRANSFER_ENCODING"] = "chunked"
        environ["wsgi.input"] = io.BytesIO(data)
        if style == "gunicorn" or (style == "werkzeug" and framing == "chunked"):
            environ["wsgi.input_terminated"] = True
        if framing == "chunked" and style == "wsgiref":
            environ["wsgi.input"] = io.BytesIO(b"")  # wsgiref cannot de-chunk: no body
        environ.update(extra)
        return environ

    return make


@pytest.fixture
def recorder_mw() -> Iterator[tuple[DeferredMiddleware, EnvironRecorder]]:
    # Function-scoped: its pool's threads end within the test that started them.
    recorder = EnvironRecorder()
    with Harness() as made:
        yield made(recorder, routes=["/p"], workers=2), recorder


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(make=request_makers())
def test_the_replayed_environ_equals_the_inline_one_key_by_key(
    recorder_mw: tuple[DeferredMiddleware, EnvironRecorder], make: Callable[[], Environ]
) -> None:
    mw, recorder = recorder_mw
    before, body = inline(make)
    accepted = call(mw, make())
    assert result_of(mw, accepted).body == b"recorded"
    after, replay_body = recorder.environs[-1], recorder.bodies[-1]
    assert replay_body == body
    assert undocumented_differences(picture(before), picture(after), body, frozenset()) == {}
