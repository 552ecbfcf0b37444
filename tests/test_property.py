"""Property: for any request, the response finally served from the status URL equals the
response the unwrapped app gives directly: status line, headers (in order) and body."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlencode

import apps
import pytest
from apps import Harness, make_environ, pool_threads, request, result_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsgi_deferred import DeferredMiddleware
from wsgi_deferred.rules import wsgi_path

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
HEADER_NAMES = [
    "X-Alpha",
    "X-Beta-Gamma",
    "X-Request-Id",
    "Accept-Language",
    "User-Agent",
    "Accept",
]

# Path segments: any printable text, non-ASCII included, without the URL delimiters
# ("/" separates segments, "?" and "#" end the path, "%" would start an escape).
segment = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="/?#%\\"
    ),
    min_size=1,
    max_size=12,
)
header_value = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40
)
query_pairs = st.lists(st.tuples(st.text(max_size=8), st.text(max_size=12)), max_size=4)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, object]:
    return {
        "method": draw(st.sampled_from(METHODS)),
        "path": "/echo/" + "/".join(draw(st.lists(segment, min_size=1, max_size=3))),
        "query_string": urlencode(draw(query_pairs)),
        "headers": draw(st.dictionaries(st.sampled_from(HEADER_NAMES), header_value, max_size=4)),
        "data": draw(st.binary(max_size=3000)),
        "content_type": draw(
            st.sampled_from([None, "application/octet-stream", "text/plain; charset=utf-8"])
        ),
    }


@pytest.fixture  # function scope: its pool threads end within the test that made them
def wrapped() -> Iterator[DeferredMiddleware]:
    before = pool_threads()
    with Harness() as harness:
        yield harness(apps.echo_app, routes=["/echo/<path:rest>"], workers=4)
    assert pool_threads() - before == set()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(req=requests())
def test_status_url_serves_exactly_the_direct_response(
    wrapped: DeferredMiddleware, req: dict[str, object]
) -> None:
    method, path = str(req["method"]), str(req["path"])
    kwargs = {k: req[k] for k in ("query_string", "headers", "data", "content_type")}
    direct = request(apps.echo_app, method, path, **kwargs)  # type: ignore[arg-type]
    accepted = request(wrapped, method, path, **kwargs)  # type: ignore[arg-type]
    assert accepted.code == 202, (path, accepted.status)
    final = result_of(wrapped, accepted)
    assert final.status == direct.status
    assert final.headers == direct.headers
    assert final.body == direct.body
    # And the echo really saw the request (the property is not vacuous).
    echoed = final.json()
    assert echoed["method"] == method
    assert echoed["raw_path"] == make_environ(path)["PATH_INFO"] == wsgi_path(path)
    assert bytes.fromhex(echoed["body"]) == req["data"]


@settings(max_examples=30, deadline=None)
@given(req=requests())
def test_inline_answer_under_defer_after_equals_the_direct_response(req: dict[str, object]) -> None:
    method, path = str(req["method"]), str(req["path"])
    kwargs = {k: req[k] for k in ("query_string", "headers", "data", "content_type")}
    with Harness() as harness:
        mw = harness(apps.echo_app, defer_after=apps.PATIENCE, workers=1)
        inline = request(mw, method, path, **kwargs)  # type: ignore[arg-type]
        direct = request(apps.echo_app, method, path, **kwargs)  # type: ignore[arg-type]
        assert (inline.status, inline.headers, inline.body) == (
            direct.status,
            direct.headers,
            direct.body,
        )
