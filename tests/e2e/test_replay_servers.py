"""Property, over real servers: the environ an app sees replayed equals the one it sees inline,
key by key, beyond the documented differences (README, "What the replay sees"; written out in
tests/replay_diff.py), for generated requests sent with http.client to 127.0.0.1.

The same request goes twice to the same server: inline, then with ``Prefer: respond-async``
(RFC 7240), which defers it. ``REMOTE_PORT`` (two connections) and ``HTTP_PREFER`` (the marker)
are the only keys set aside as the test's own.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from replay_diff import undocumented_differences
from servers import fetch_result
from wsgi_servers import GunicornServer, server_for

pytestmark = pytest.mark.e2e

E2E = str(Path(__file__).parent)
IGNORED = frozenset({"REMOTE_PORT", "HTTP_PREFER"})
#: Generated requests per server.
EXAMPLES = 25

token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)
header_value = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=30
)
segment = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=8
)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(token, max_size=4, unique=True))
    headers = [("X-" + name, draw(header_value)) for name in names]
    named = draw(st.lists(st.sampled_from(names), unique=True)) if names else []
    if named or draw(st.booleans()):
        tokens = draw(st.sampled_from([[], ["keep-alive"], ["close"]])) + ["X-" + n for n in named]
        if tokens:
            headers.append(("Connection", ", ".join(tokens)))
    for name, value in (
        ("Proxy-Authorization", "Basic cHJveHk6c2VjcmV0"),
        ("Authorization", "Bearer app-token"),
        ("Keep-Alive", "timeout=5"),
        ("Cookie", "session=abc; theme=dark"),
        ("Content-Type", "application/octet-stream"),
    ):
        if draw(st.booleans()):
            headers.append((name, value))
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    return {
        "method": draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])),
        "path": "/e/" + "/".join(quote(s) for s in draw(st.lists(segment, min_size=1, max_size=3))),
        "query": urlencode(draw(st.lists(st.tuples(token, header_value), max_size=3))),
        "headers": headers,
        "framing": framing,
        "body": b"" if framing == "none" else draw(st.binary(max_size=3000)),
    }


def send(
    port: int, req: dict[str, Any], extra: list[tuple[str, str]]
) -> tuple[http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest(
        req["method"],
        req["path"] + ("?" + req["query"] if req["query"] else ""),
        skip_accept_encoding=True,
    )
    for name, value in [*req["headers"], *extra]:
        conn.putheader(name, value)
    body: bytes = req["body"]
    if req["framing"] == "length":
        conn.putheader("Content-Length", str(len(body)))
    elif req["framing"] == "chunked":
        conn.putheader("Transfer-Encoding", "chunked")
    payload = b""
    if req["framing"] == "length":
        payload = body
    elif req["framing"] == "chunked":
        for start in range(0, len(body), 1000):
            piece = body[start : start + 1000]
            payload += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        payload += b"0\r\n\r\n"
    # One write for head and body: a server that answers before reading a body it cannot
    # use (uWSGI does not de-chunk) must not turn the rest of the upload into a broken pipe.
    conn.endheaders(payload or None)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response, data


def inline_and_replayed(server: GunicornServer, req: dict[str, Any]) -> tuple[Any, Any]:
    direct, data = send(server.port, req, [])
    assert direct.status == 200, direct.status
    accepted, _ = send(server.port, req, [("Prefer", "respond-async")])
    assert accepted.status == 202, accepted.status
    location = accepted.getheader("Location")
    assert location is not None
    final = fetch_result(server.port, location)
    assert final.status == 200, final.body[:300]
    return json.loads(data), final.json()


@pytest.fixture(scope="module", params=["gunicorn-gthread", "uwsgi", "waitress"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GunicornServer]:
    store = tmp_path_factory.mktemp("replay") / "tasks.db"
    # Its own TMPDIR: the server outlives each test's private one.
    tmpdir = tmp_path_factory.mktemp("replay-tmp")
    env = {"JOBS_STORE": f"sqlite://{store}", "PYTHONPATH": E2E, "TMPDIR": str(tmpdir)}
    made = server_for(str(request.param), "environ_app:application", env)
    made.start()
    try:
        yield made
    finally:
        made.stop()
    assert not made.escalated, f"{made.name} did not stop on SIGTERM:\n{made.log()}"


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(req=requests())
def test_the_app_sees_the_same_environ_replayed_as_inline(
    server: GunicornServer, req: dict[str, Any]
) -> None:
    inline, replayed = inline_and_replayed(server, req)
    # The app read the same body both times (under uWSGI a chunked body is not readable by
    # the app inline either: no CONTENT_LENGTH, no wsgi.input_terminated).
    assert replayed["body_sha256"] == inline["body_sha256"]
    assert replayed["environ"]["HTTP_PREFER"] == "respond-async"
    assert "HTTP_PREFER" not in inline["environ"]
    body = req["body"] if inline["body_length"] else b""
    assert inline["body_length"] == len(body)
    differences = undocumented_differences(inline["environ"], replayed["environ"], body, IGNORED)
    assert differences == {}, (server.name, req)


def test_a_request_without_a_body_has_no_content_length_in_the_replay(
    server: GunicornServer,
) -> None:
    """The issue's case, on each server: a GET the client sent without Content-Length."""
    req = {
        "method": "GET",
        "path": "/e/hook",
        "query": "",
        "headers": [("X-Signature", "sig")],
        "framing": "none",
        "body": b"",
    }
    inline, replayed = inline_and_replayed(server, req)
    assert "CONTENT_LENGTH" not in inline["environ"]
    assert "CONTENT_LENGTH" not in replayed["environ"]
