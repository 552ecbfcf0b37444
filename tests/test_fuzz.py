"""Fuzz: hostile methods, paths, headers and bodies against the middleware, in process, behind
``wsgiref.validate`` (PEP 3333 checked on both sides). No exception escapes, every answer is a
valid HTTP response (status line, headers without control characters), and no file or thread
is left behind (the ``private_tmpdir`` and ``no_thread_leak`` fixtures of conftest.py)."""

from __future__ import annotations

import io
import re
import sys
import warnings
from collections.abc import Iterator
from typing import Any
from wsgiref.validate import validator

import pytest
from apps import Harness
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from wsgi_deferred import DeferredMiddleware
from wsgi_deferred.task import is_task_id

pytestmark = pytest.mark.usefixtures("no_thread_leak")

STATUS_LINE = re.compile(r"[1-5][0-9][0-9] [^\x00-\x1f\x7f]*\Z")
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # RFC 9110 §5.6.2
FUZZ_MAX_BODY = 2000  # bytes: small, so the 413 paths are fuzzed too

# Latin-1 text, the only kind PEP 3333 puts in an environ, control characters included.
latin1 = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=60)
methods = st.one_of(
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "post"]),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1),
)
id_chars = st.characters(whitelist_categories=(), whitelist_characters="AZaz09_-!.")
paths = st.one_of(
    st.builds(lambda rest: "/" + rest, latin1),
    st.builds(lambda rest: "/slow/" + rest, latin1),
    st.builds(lambda rest: "/slow/" + rest, st.text("abc/-_.~", min_size=1)),
    st.builds(lambda rest: "/slow/" + rest, st.text("abc/-_.~", min_size=1)),  # weight x2
    st.builds(lambda rest: "/work" + rest, latin1),
    st.builds(lambda tid: "/status/" + tid, st.text(alphabet=id_chars, min_size=20, max_size=24)),
    st.sampled_from(["/status/", "/status//", "/_metrics", "/work", "//evil/work"]),
)
prefer = st.one_of(
    latin1,
    st.sampled_from(
        ["respond-async", "wait=0", "wait=1e309", "respond-async, wait=0.01", "wait=-1"]
    ),
)
cookie = st.one_of(
    st.sampled_from(["sid=alice", "sid=bob", "a=1; sid=carol", 'sid="q"']),  # deferrable
    latin1,
    st.builds(lambda v: "sid=" + v, latin1),
)
content_length = st.one_of(
    st.integers(min_value=0, max_value=4000).map(str),
    st.sampled_from(["", "abc", "-1", " 5", "1e3", "²", "99999999999999999999"]),
)
HEADER_KEYS = ["HTTP_ACCEPT", "HTTP_USER_AGENT", "HTTP_X_ANY", "HTTP_IF_NONE_MATCH",
               "HTTP_TRANSFER_ENCODING", "HTTP_CONNECTION", "HTTP_AUTHORIZATION"]  # fmt: skip


@st.composite
def environs(draw: st.DrawFn) -> dict[str, Any]:
    body = draw(st.binary(max_size=3000))
    environ: dict[str, Any] = {
        "REQUEST_METHOD": draw(methods),
        "SCRIPT_NAME": draw(st.sampled_from(["", "/app", "//evil.example", "/\\x"])),
        "PATH_INFO": draw(paths),
        "QUERY_STRING": draw(latin1),
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": draw(st.sampled_from(["10.0.0.1", "10.0.0.2", "::1"])),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if draw(st.booleans()):
        environ["CONTENT_LENGTH"] = draw(content_length)
    if draw(st.booleans()):
        environ["wsgi.input_terminated"] = True
    if draw(st.booleans()):
        environ["HTTP_PREFER"] = draw(prefer)
    if draw(st.integers(0, 3)):
        environ["HTTP_COOKIE"] = draw(cookie)
    for key in draw(st.lists(st.sampled_from(HEADER_KEYS), max_size=4, unique=True)):
        environ[key] = draw(latin1)
    if draw(st.booleans()):
        environ["CONTENT_TYPE"] = draw(latin1)
    return environ


def sturdy_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """An app that copes with anything a lax server hands it (the fuzz is about us)."""
    length = str(environ.get("CONTENT_LENGTH") or "")
    size = int(length) if length.isascii() and length.isdigit() else 0
    body = environ["wsgi.input"].read(min(size, 1 << 16)) if size else b""
    data = b"%d bytes for %s" % (len(body), environ["REQUEST_METHOD"].encode("latin-1"))
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]


@pytest.fixture  # one per test function: its threads end before no_thread_leak looks
def middlewares() -> Iterator[list[DeferredMiddleware]]:
    with Harness() as harness:
        router = sturdy_app
        yield [
            harness(router, routes=["/slow/<path:rest>", "POST /work"], max_body=FUZZ_MAX_BODY,
                    max_pending=4, bind="cookie:sid", metrics_path="/_metrics"),
            harness(router, defer_after=0.5, max_body=FUZZ_MAX_BODY, exclude=["/work"]),
        ]  # fmt: skip


def serve(app: Any, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    """Run *app* behind wsgiref.validate as a strict server would; return what it sent."""
    sent: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        sent["status"], sent["headers"] = status, headers
        return lambda data: None

    length = environ.get("CONTENT_LENGTH", "")
    # wsgiref.validate refuses an environ with a non-numeric CONTENT_LENGTH (a strict server
    # never sends one); a lax server may, so those go to the middleware directly.
    strict = not length or (length.isascii() and length.isdigit())
    checked = validator(app) if strict else app
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # validator warns on unknown methods: allowed here
        result = checked(environ, start_response)
        try:
            body = b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()
    return sent["status"], sent["headers"], body


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(environ=environs(), which=st.sampled_from([0, 0, 0, 1]))
def test_every_request_gets_a_valid_answer(
    middlewares: list[DeferredMiddleware], environ: dict[str, Any], which: int
) -> None:
    status, headers, body = serve(middlewares[which], environ)
    assert STATUS_LINE.match(status), status
    for name, value in headers:
        assert TOKEN.match(name), name
        assert not re.search(r"[\x00-\x08\x0a-\x1f\x7f]", value), (name, value)
    code = int(status[:3])
    event(f"status {code}")  # --hypothesis-show-statistics: what the fuzz reached
    assert code < 500 or code == 503, (status, body[:300])
    if code == 202:
        location = dict((k.lower(), v) for k, v in headers)["location"]
        assert location.startswith("/") and not location.startswith("//"), location
    ours = is_task_id(environ["PATH_INFO"].removeprefix("/status/"))
    if ours and environ["REQUEST_METHOD"] == "HEAD":  # the status URL's own HEAD: no body
        assert body == b""
