"""One test per defect found in code review, so none of them comes back."""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from apps import (
    Harness,
    SlowApp,
    call,
    make_environ,
    plain_app,
    request,
    result_of,
    status_request,
)
from werkzeug.wrappers import Request

from wsgi_deferred import DeferredMiddleware
from wsgi_deferred.rules import RuleSet


@pytest.fixture
def make_mw() -> Iterator[Harness]:
    with Harness() as harness:
        yield harness


def form_app(environ, start_response):  # type: ignore[no-untyped-def]
    request = Request(environ)
    body = f"{len(request.get_data())} {dict(request.form)}".encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


def test_chunked_upload_reaches_the_replayed_app(make_mw: Harness) -> None:
    """gunicorn and werkzeug mark a chunked body with wsgi.input_terminated; the replay has
    an exact CONTENT_LENGTH, so a copied Transfer-Encoding: chunked made werkzeug read 0."""
    mw = make_mw(form_app, routes=["POST /form"])
    environ = make_environ(
        "/form", "POST", headers={"Transfer-Encoding": "chunked", "Connection": "keep-alive"}
    )
    environ.pop("CONTENT_LENGTH", None)
    environ["CONTENT_TYPE"] = "application/x-www-form-urlencoded"
    environ["wsgi.input"] = io.BytesIO(b"name=alice&city=paris")
    environ["wsgi.input_terminated"] = True
    final = result_of(mw, call(mw, environ))
    assert final.body == b"21 {'name': 'alice', 'city': 'paris'}"


def exiting_app(environ, start_response):  # type: ignore[no-untyped-def]
    raise SystemExit(3)


def test_app_raising_systemexit_fails_its_task_and_the_worker_lives_on(make_mw: Harness) -> None:
    router_routes = {"/exit": exiting_app, "/ok": plain_app}

    def router(environ, start_response):  # type: ignore[no-untyped-def]
        return router_routes[environ["PATH_INFO"]](environ, start_response)

    mw = make_mw(router, routes=["/exit", "/ok"], workers=1)
    failed = result_of(mw, request(mw, "POST", "/exit"))
    assert failed.code == 500 and failed.json()["state"] == "failed"
    ok = result_of(mw, request(mw, "POST", "/ok"))  # the only worker thread still serves
    assert ok.code == 200


def test_cookie_binding_survives_an_unrelated_unparsable_cookie(make_mw: Harness) -> None:
    mw = make_mw(plain_app, routes=["/r"], bind="cookie:sid")
    cookies = 'prefs={"theme": "dark"}; sid=victim-session'
    accepted = request(mw, "POST", "/r", headers={"Cookie": cookies})
    assert result_of(mw, accepted, headers={"Cookie": cookies}).code == 200
    assert status_request(mw, accepted.location).code == 404  # no cookie: not the owner
    other = {"Cookie": "sid=someone-else"}
    assert status_request(mw, accepted.location, headers=other).code == 404


def test_head_on_a_marked_route_is_answered_inline(make_mw: Harness) -> None:
    calls: list[str] = []

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        calls.append(environ["REQUEST_METHOD"])
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "1000")])
        return []

    mw = make_mw(app, routes=["GET /report"], defer_after=None)
    answer = request(mw, "HEAD", "/report")
    assert answer.code == 200 and answer.header("Content-Length") == "1000"
    assert calls == ["HEAD"]


def test_shutdown_removes_the_spilled_bodies_of_queued_tasks(
    make_mw: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    slow = SlowApp()
    mw = make_mw(slow, routes=["POST /up"], workers=1)
    for _ in range(3):
        assert request(mw, "POST", "/up", data=b"x" * (2 << 20)).code == 202
    assert slow.started.wait(5)
    mw.close(timeout=0.2)  # one task running, two queued: those are abandoned
    slow.release.set()
    deadline = time.monotonic() + 5
    while list(tmp_path.glob("wsgi-deferred-*")) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list(tmp_path.glob("wsgi-deferred-*")) == []
    # The released task's thread ends right after its cleanup; let it, before the harness
    # checks that no thread outlived close() (under load it was still returning).
    for thread in mw.pool.threads():
        thread.join(5)


def test_method_mismatch_never_reaches_werkzeugs_matcher(monkeypatch: pytest.MonkeyPatch) -> None:
    rules = RuleSet(["POST /render/<id>"])

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("werkzeug's matcher ran for a request no rule can match")

    monkeypatch.setattr(rules._adapter, "match", boom)
    assert rules.matches("GET", "/render/1") is False


def test_non_latin1_header_value_fails_the_task_instead_of_every_fetch(make_mw: Harness) -> None:
    def app(environ, start_response):  # type: ignore[no-untyped-def]
        start_response("200 OK", [("X-Price", "10 €")])
        return [b"x"]

    mw: DeferredMiddleware = make_mw(app, routes=["/p"])
    final = result_of(mw, request(mw, "POST", "/p"))
    assert final.code == 500 and final.json()["state"] == "failed"


@pytest.mark.parametrize("url", ["redis://127.0.0.1:notaport/0", "redis+cluster://h:x/0"])
def test_a_malformed_redis_url_is_a_configuration_error(url: str) -> None:
    # redis-py says ValueError for a port that is not a number; the middleware, wrap() and
    # the CLI all expect the project's own ConfigurationError (one line, exit 2).
    from wsgi_deferred.errors import ConfigurationError
    from wsgi_deferred.stores import open_store

    with pytest.raises(ConfigurationError, match=r"store URL"):
        open_store(url)
