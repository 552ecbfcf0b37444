"""The middleware in front of real frameworks: Flask, Django, WebOb and plain WSGI.

Every stack is ``validator(DeferredMiddleware(validator(app)))``: wsgiref's validator checks
both what the server hands the middleware and what the middleware (as a server) hands the
app, including the rebuilt replay environ and the buffering ``start_response``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qsl
from wsgiref.validate import validator

import apps
import django
import flask
import pytest
from apps import (
    PATIENCE,
    Harness,
    Result,
    call,
    make_environ,
    pool_threads,
    request,
    result_of,
)
from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test.utils import override_settings
from django.urls import path as django_path
from webob import Request as WebObRequest
from webob import Response as WebObResponse
from webob.dec import wsgify

WSGIApp = Callable[..., Iterable[bytes]]


def document(framework: str, method: str, n: str, query: str, body: bytes) -> dict[str, Any]:
    return {"framework": framework, "method": method, "n": n, "q": query, "body": body.hex()}


# -- Flask -------------------------------------------------------------------------------------


def make_flask_app() -> WSGIApp:
    app = flask.Flask("wsgi_deferred_flask_test")

    @app.get("/hello")
    def hello() -> str:
        return "hello from flask"

    @app.route("/work/<n>", methods=["GET", "POST", "PUT"])
    def work(n: str) -> flask.Response:
        data = document(
            "flask",
            flask.request.method,
            n,
            flask.request.args.get("q", ""),
            flask.request.get_data(),
        )
        response = flask.jsonify(data)
        response.headers["X-Framework"] = "flask"
        response.set_cookie("seen", "1")
        return response

    @app.get("/whoami")
    def whoami() -> str:
        return str(flask.request.environ.get("wsgi_deferred.id"))

    @app.get("/fail")
    def fail() -> str:
        raise apps.AppError("flask view failed")

    app.config["PROPAGATE_EXCEPTIONS"] = False
    return app


# -- Django ------------------------------------------------------------------------------------


def django_hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse("hello from django", content_type="text/plain")


def django_work(request: HttpRequest, n: str) -> HttpResponse:
    response = JsonResponse(
        document("django", request.method or "", n, request.GET.get("q", ""), request.body)
    )
    response["X-Framework"] = "django"
    response.set_cookie("seen", "1")
    return response


def django_whoami(request: HttpRequest) -> HttpResponse:
    return HttpResponse(str(request.META.get("wsgi_deferred.id")), content_type="text/plain")


def django_fail(request: HttpRequest) -> HttpResponse:
    raise apps.AppError("django view failed")


urlpatterns = [
    django_path("hello", django_hello),
    django_path("work/<str:n>", django_work),
    django_path("whoami", django_whoami),
    django_path("fail", django_fail),
]


@pytest.fixture(scope="module")
def django_app() -> Iterator[WSGIApp]:
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="wsgi-deferred-tests-only",
            ALLOWED_HOSTS=["localhost"],
            ROOT_URLCONF=__name__,
            MIDDLEWARE=[],
            INSTALLED_APPS=[],
            DATABASES={},
            USE_TZ=True,
            LOGGING_CONFIG=None,
        )
        django.setup()
    with override_settings(ROOT_URLCONF=__name__, ALLOWED_HOSTS=["localhost"], DEBUG=False):
        yield WSGIHandler()


# -- WebOb and plain WSGI ----------------------------------------------------------------------


def make_webob_app() -> WSGIApp:
    @wsgify
    def app(req: WebObRequest) -> WebObResponse:
        if req.path_info == "/hello":
            return WebObResponse("hello from webob", content_type="text/plain")
        if req.path_info.startswith("/work/"):
            n = req.path_info[len("/work/") :]
            data = document("webob", req.method, n, req.GET.get("q", ""), req.body)
            response = WebObResponse(
                body=json.dumps(data).encode(), content_type="application/json"
            )
            response.headers["X-Framework"] = "webob"
            response.set_cookie("seen", "1")
            return response
        if req.path_info == "/whoami":
            return WebObResponse(
                str(req.environ.get("wsgi_deferred.id")), content_type="text/plain"
            )
        if req.path_info == "/fail":
            raise apps.AppError("webob view failed")
        return WebObResponse("not found", status=404, content_type="text/plain")

    return app


def plain_wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/hello":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "16")])
        return [b"hello from plain"]
    if path.startswith("/work/"):
        query = dict(parse_qsl(environ.get("QUERY_STRING", "").encode("latin-1").decode()))
        data = document(
            "plain",
            environ["REQUEST_METHOD"],
            path[6:],
            query.get("q", ""),
            apps.read_request_body(environ),
        )
        body = json.dumps(data).encode()
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("X-Framework", "plain"),
                ("Set-Cookie", "seen=1; Path=/"),
            ],
        )
        return [body]
    if path == "/whoami":
        body = str(environ.get("wsgi_deferred.id")).encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]
    if path == "/fail":
        raise apps.AppError("plain app failed")
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found"]


FRAMEWORKS = ["flask", "django", "webob", "plain"]


@pytest.fixture(scope="module", autouse=True)
def no_thread_leaks() -> Iterator[None]:
    before = pool_threads()
    yield
    assert pool_threads() - before == set()


@pytest.fixture
def make_mw() -> Iterator[Harness]:
    with Harness() as harness:
        yield harness


@pytest.fixture(params=FRAMEWORKS)
def inner(request: pytest.FixtureRequest) -> WSGIApp:
    name = request.param
    if name == "flask":
        return make_flask_app()
    if name == "django":
        return request.getfixturevalue("django_app")
    if name == "webob":
        return make_webob_app()
    return plain_wsgi_app


@pytest.fixture(autouse=True)
def validator_warnings_are_errors() -> Iterator[None]:
    # wsgiref.validate reports some violations as WSGIWarning: make every one fail the test.
    with warnings.catch_warnings():
        warnings.simplefilter("error", category=Warning)
        yield


def stack(make_mw: Harness, app: WSGIApp, **options: Any) -> WSGIApp:
    """``validator(DeferredMiddleware(validator(app)))``."""
    return validator(make_mw(validator(app), **options))


def without_validator_quirks(result: Result) -> tuple[str, list[tuple[str, str]], bytes]:
    return result.status, result.headers, result.body


KWARGS: dict[str, Any] = {
    "data": b'{"payload": [1, 2, 3]}',
    "query_string": "q=%C3%A9t%C3%A9",
    "content_type": "application/json",
}


def test_unmarked_requests_pass_through(make_mw: Harness, inner: WSGIApp) -> None:
    wrapped = stack(make_mw, inner, routes=["POST /work/<n>"])
    direct = request(validator(inner), "GET", "/hello")
    through = request(wrapped, "GET", "/hello")
    assert through.code == 200 and b"hello from" in through.body
    assert without_validator_quirks(through) == without_validator_quirks(direct)


def test_marked_request_round_trip(make_mw: Harness, inner: WSGIApp) -> None:
    wrapped = stack(make_mw, inner, routes=["POST /work/<n>"])
    direct = request(validator(inner), "POST", "/work/7", **KWARGS)
    assert direct.code == 200
    accepted = request(wrapped, "POST", "/work/7", **KWARGS)
    assert accepted.code == 202
    final = result_of(wrapped, accepted)
    assert without_validator_quirks(final) == without_validator_quirks(direct)
    body = final.json()
    assert body["q"] == "été" and bytes.fromhex(body["body"]) == KWARGS["data"]
    assert final.header("X-Framework") is not None and final.header_list("Set-Cookie")
    head = request(wrapped, "HEAD", accepted.location)
    assert (head.status, head.headers, head.body) == (final.status, final.headers, b"")


def test_defer_after_inline_is_identical(make_mw: Harness, inner: WSGIApp) -> None:
    wrapped = stack(make_mw, inner, defer_after=PATIENCE)
    for method, path, kwargs in (("GET", "/hello", {}), ("PUT", "/work/9", KWARGS)):
        direct = request(validator(inner), method, path, **kwargs)
        inline = request(wrapped, method, path, **kwargs)
        assert without_validator_quirks(inline) == without_validator_quirks(direct), path


def test_prefer_respond_async(make_mw: Harness, inner: WSGIApp) -> None:
    wrapped = stack(make_mw, inner)
    accepted = request(wrapped, "GET", "/hello", headers={"Prefer": "respond-async"})
    assert accepted.header("Preference-Applied") == "respond-async"
    assert b"hello from" in result_of(wrapped, accepted).body


def test_the_app_sees_its_task_id(make_mw: Harness, inner: WSGIApp) -> None:
    wrapped = stack(make_mw, inner, routes=["/whoami"])
    accepted = request(wrapped, "GET", "/whoami")
    assert result_of(wrapped, accepted).body == accepted.task_id.encode()


def test_framework_error_pages_and_failures(make_mw: Harness, inner: WSGIApp) -> None:
    wrapped = stack(make_mw, inner, routes=["/fail"])
    final = result_of(wrapped, request(wrapped, "GET", "/fail"))
    # Flask, Django and WebOb turn a view's exception into their own 500 page (a done task,
    # served verbatim); a plain WSGI app lets it escape (a failed task, our 500).
    assert final.code == 500
    if final.header("Content-Type") == "application/json":
        assert final.json().get("state") in (None, "failed")
    assert b"Traceback" not in final.body


def test_status_answers_pass_the_validator(make_mw: Harness, inner: WSGIApp) -> None:
    wrapped = stack(make_mw, inner, routes=["POST /work/<n>"])
    accepted = request(wrapped, "POST", "/work/1", **KWARGS)
    result_of(wrapped, accepted)
    assert request(wrapped, "PUT", accepted.location).code == 405
    assert request(wrapped, "DELETE", accepted.location).code == 204
    assert request(wrapped, "GET", accepted.location).code == 404
    assert request(wrapped, "HEAD", accepted.location).code == 404
    assert (
        request(wrapped, "POST", "/work/2", data=b"x" * 50, **{"CONTENT_LENGTH": "60"}).code == 400
    )
    html = request(wrapped, "POST", "/work/3", headers={"Accept": "text/html"})
    assert html.code == 202 and html.header("Refresh")
    result_of(wrapped, html)


def test_validator_is_really_checking() -> None:
    """Sanity check of the harness: a broken app does fail under the validator."""
    with pytest.raises(AssertionError):
        request(validator(apps.str_body_app), "GET", "/")
    environ = make_environ("/")
    del environ["SERVER_NAME"]
    with pytest.raises(AssertionError):
        call(validator(apps.plain_app), environ)
