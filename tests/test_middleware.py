"""middleware.py: which requests pass through, which are deferred, and how (routes, exclude,
Prefer, defer_after, body limits, pool limits, bind); also ``wrap()`` and option checks."""

from __future__ import annotations

import hashlib
import hmac
import threading
import traceback
from collections.abc import Iterator
from typing import Any

import apps
import pytest
from apps import (
    PATIENCE,
    AppError,
    EnvironRecorder,
    Harness,
    Result,
    Router,
    SlowApp,
    call,
    make_environ,
    pool_threads,
    request,
    result_of,
    wait_until,
)
from werkzeug.wsgi import FileWrapper

import wsgi_deferred
from wsgi_deferred import DeferredError, DeferredMiddleware, wrap
from wsgi_deferred.errors import ConfigurationError
from wsgi_deferred.stores import default_store_url
from wsgi_deferred.stores.memory import MemoryStore
from wsgi_deferred.task import TaskRecord

MIB = 1 << 20


class RecordingStore(MemoryStore):
    """A memory store that remembers every task created in it."""

    def __init__(self) -> None:
        super().__init__()
        self.created: list[str] = []

    def create(self, record: TaskRecord) -> None:
        self.created.append(record.id)
        super().create(record)


@pytest.fixture(scope="module", autouse=True)
def no_thread_leaks() -> Iterator[None]:
    before = pool_threads()
    yield
    assert pool_threads() - before == set(), "pool threads outlived their middleware"


@pytest.fixture
def make_mw() -> Iterator[Harness]:
    with Harness() as harness:
        yield harness


def assert_same(got: Result, expected: Result) -> None:
    """Byte-identical responses: status line, header list (order included) and body."""
    assert (got.status, got.headers, got.body) == (expected.status, expected.headers, expected.body)


# -- pass-through ------------------------------------------------------------------------------


def test_unmarked_requests_reach_the_app_untouched(make_mw: Harness) -> None:
    app = apps.ClosingApp()
    mw = make_mw(app, routes=["POST /render/<id>"])
    environ = make_environ("/other", "POST", data=b"x")
    result = call(mw, environ)
    assert result.iter_type is apps.ClosingBody  # the app's own iterable, not a copy
    assert result.body == b"one two three" and app.closed
    assert mw.pool.pending == 0 and not list(mw.pool.threads())


def test_routes_with_methods(make_mw: Harness) -> None:
    recorder = EnvironRecorder()
    mw = make_mw(recorder, routes=["POST /render/<id>", "GET,PUT /reports/<path:rest>"])
    assert request(mw, "POST", "/render/42").code == 202
    assert request(mw, "GET", "/render/42").body == b"recorded"  # wrong method: passes
    assert request(mw, "PUT", "/reports/2024/q1").code == 202
    assert request(mw, "GET", "/reports/x").code == 202
    assert request(mw, "DELETE", "/reports/x").body == b"recorded"
    assert request(mw, "POST", "/render/").body == b"recorded"


def test_exclude_rules_win_over_everything(make_mw: Harness) -> None:
    recorder = EnvironRecorder()
    mw = make_mw(
        recorder,
        routes=["/work/<path:rest>"],
        exclude=["/work/stream/<x>", "GET /health"],
        defer_after=0,
    )
    assert request(mw, "GET", "/work/stream/1").code == 200  # route, but excluded
    assert request(mw, "GET", "/work/stream/1", headers={"Prefer": "respond-async"}).code == 200
    assert request(mw, "GET", "/health").code == 200  # excluded from defer_after
    assert request(mw, "POST", "/health").code == 202  # the exclusion names GET only
    assert request(mw, "GET", "/work/other").code == 202


# -- Prefer ------------------------------------------------------------------------------------


def test_prefer_respond_async_defers_any_request(make_mw: Harness) -> None:
    mw = make_mw(apps.echo_app)
    accepted = request(mw, "GET", "/anything", headers={"Prefer": "respond-async"})
    assert accepted.code == 202
    assert accepted.header("Preference-Applied") == "respond-async"
    direct = request(apps.echo_app, "GET", "/anything", headers={"Prefer": "respond-async"})
    final = result_of(mw, accepted)
    assert_same(final, direct)


def test_prefer_is_ignored_when_honor_prefer_is_off(make_mw: Harness) -> None:
    mw = make_mw(apps.plain_app, honor_prefer=False)
    answer = request(mw, "GET", "/x", headers={"Prefer": "respond-async"})
    assert answer.code == 200 and answer.body == b"hello world"


def test_prefer_wait_lets_a_fast_marked_request_finish_inline(make_mw: Harness) -> None:
    mw = make_mw(apps.echo_app, routes=["/echo/<x>"])
    for prefer in ("wait=5", "respond-async, wait=5"):
        headers = {"Prefer": prefer}
        direct = request(apps.echo_app, "POST", "/echo/1", data=b"body", headers=headers)
        inline = request(mw, "POST", "/echo/1", data=b"body", headers=headers)
        assert_same(inline, direct)
    assert wait_until(lambda: mw.pool.pending == 0)


def test_prefer_wait_gives_a_slow_marked_request_the_202(make_mw: Harness) -> None:
    slow = SlowApp()
    mw = make_mw(slow, routes=["/slow"])
    accepted = request(mw, "GET", "/slow", headers={"Prefer": "wait=0.05"})
    assert accepted.code == 202
    assert accepted.header("Preference-Applied") is None
    assert accepted.json()["state"] == "running"
    both = request(mw, "GET", "/slow", headers={"Prefer": "respond-async, wait=0.05"})
    assert both.code == 202 and both.header("Preference-Applied") == "respond-async"
    slow.release.set()
    assert result_of(mw, accepted).body == b"slow done"
    assert result_of(mw, both).body == b"slow done"


def test_prefer_wait_is_capped_by_max_wait(make_mw: Harness) -> None:
    slow = SlowApp()
    mw = make_mw(slow, routes=["/slow"], max_wait=0.05)
    accepted = request(mw, "GET", "/slow", headers={"Prefer": "wait=600"})
    assert accepted.code == 202
    slow.release.set()


def test_prefer_wait_alone_does_not_defer_an_unmarked_request(make_mw: Harness) -> None:
    mw = make_mw(apps.plain_app, routes=["/marked"])
    answer = request(mw, "GET", "/x", headers={"Prefer": "wait=5"})
    assert answer.code == 200 and mw.pool.pending == 0


@pytest.mark.parametrize(
    "prefer", ["wait=abc", "wait=-3", "wait=inf", "wait=nan", "respond-asynchronously", ";;,=,"]
)
def test_garbage_prefer_values_are_ignored(make_mw: Harness, prefer: str) -> None:
    mw = make_mw(apps.plain_app, routes=["/marked"])
    unmarked = request(mw, "GET", "/x", headers={"Prefer": prefer})
    assert unmarked.code == 200 and unmarked.body == b"hello world"
    marked = request(mw, "GET", "/marked", headers={"Prefer": prefer})
    assert marked.code == 202 and marked.header("Preference-Applied") is None


# -- defer_after -------------------------------------------------------------------------------


INLINE_APPS = {
    "plain": apps.plain_app,
    "write": apps.write_app,
    "lazy": apps.lazy_app,
    "exc_info": apps.exc_info_app,
    "echo": apps.echo_app,
    "hop_by_hop": apps.hop_by_hop_app,
    "big": apps.big_app(MIB + 100),
}


@pytest.mark.parametrize("name", sorted(INLINE_APPS))
def test_defer_after_answers_fast_requests_inline_identically(make_mw: Harness, name: str) -> None:
    app = INLINE_APPS[name]
    mw = make_mw(app, defer_after=PATIENCE)
    kwargs: dict[str, Any] = {"data": b"payload", "query_string": "a=1", "headers": {"X-A": "b"}}
    direct = request(app, "POST", "/any/path", **kwargs)
    inline = request(mw, "POST", "/any/path", **kwargs)
    assert_same(inline, direct)
    assert wait_until(lambda: mw.pool.pending == 0)
    assert mw.get_store().purge() == 0  # nothing was stored for an inline answer


def test_defer_after_inline_uses_the_servers_file_wrapper(make_mw: Harness) -> None:
    app = apps.FileApp()
    mw = make_mw(app, defer_after=PATIENCE)
    environ = make_environ("/file")
    environ["wsgi.file_wrapper"] = FileWrapper
    inline = call(mw, environ)
    assert inline.iter_type is FileWrapper
    assert inline.body == apps.FILE_DATA
    assert app.used_wrapper == [False]  # the replay environ never carries the server's wrapper


def test_defer_after_gives_slow_requests_the_202(make_mw: Harness) -> None:
    slow = SlowApp()
    mw = make_mw(slow, defer_after=0.05)
    accepted = request(mw, "GET", "/slow")
    assert accepted.code == 202
    assert accepted.header("Preference-Applied") is None
    assert accepted.json()["state"] == "running"
    slow.release.set()
    final = result_of(mw, accepted)
    assert final.body == b"slow done" and final.header("X-Slow") == "1"


def test_defer_after_zero_defers_everything(make_mw: Harness) -> None:
    mw = make_mw(apps.plain_app, defer_after=0)
    accepted = request(mw, "GET", "/x")
    assert accepted.code == 202
    assert result_of(mw, accepted).body == b"hello world"


@pytest.mark.parametrize(
    ("app", "function"),
    [
        (apps.raise_before_start_app, "raise_before_start_app"),
        (apps.raise_after_start_app, "raise_after_start_app"),
        (apps.raise_mid_iteration_app, "body"),
        (apps.exc_info_after_body_app, "body"),
    ],
)
def test_defer_after_re_raises_the_apps_own_exception(
    make_mw: Harness, app: Any, function: str
) -> None:
    mw = make_mw(app, defer_after=PATIENCE)
    with pytest.raises(AppError) as info:
        request(mw, "GET", "/boom")
    frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert function in frames  # the app's own traceback, not a wrapper's
    with pytest.raises(AppError):
        request(app, "GET", "/boom")  # exactly what happens without the middleware
    assert wait_until(lambda: mw.pool.pending == 0)


def test_inline_answers_run_in_the_pool_and_count_against_it(make_mw: Harness) -> None:
    recorder = EnvironRecorder()
    mw = make_mw(recorder, defer_after=PATIENCE)
    request(mw, "GET", "/x")
    assert recorder.environs[0]["wsgi.multithread"] is True  # a replay environ
    assert "wsgi_deferred.id" in recorder.environs[0]


# -- bodies ------------------------------------------------------------------------------------


def test_over_max_body_on_a_marked_route_is_413_and_no_task(make_mw: Harness) -> None:
    store = RecordingStore()
    recorder = EnvironRecorder()
    mw = make_mw(recorder, routes=["/upload"], store=store, max_body=100)
    answer = request(mw, "POST", "/upload", data=b"x" * 101)
    assert answer.status == "413 Content Too Large"
    assert "exceeds 100" in answer.json()["error"]
    assert answer.header("Cache-Control") == "no-store"
    asked = request(mw, "POST", "/elsewhere", data=b"x" * 101, headers={"Prefer": "respond-async"})
    assert asked.code == 413
    terminated = make_environ("/upload", "POST", data=b"y" * 500)
    terminated["wsgi.input_terminated"] = True
    del terminated["CONTENT_LENGTH"]
    assert call(mw, terminated).code == 413
    assert store.created == [] and recorder.environs == [] and mw.pool.pending == 0
    page = request(mw, "POST", "/upload", data=b"x" * 101, headers={"Accept": "text/html"})
    assert page.code == 413 and page.header("Content-Type") == "text/html; charset=utf-8"
    assert request(mw, "POST", "/upload", data=b"x" * 100).code == 202  # the limit itself is fine


def test_under_defer_after_an_oversize_body_passes_through_intact(make_mw: Harness) -> None:
    recorder = EnvironRecorder()
    mw = make_mw(recorder, defer_after=PATIENCE, max_body=1000)
    data = bytes(range(256)) * 20  # 5,120 bytes
    answer = request(mw, "POST", "/upload", data=data, **{"wsgi.multithread": False})
    assert answer.code == 200
    assert recorder.bodies == [data]
    # The app ran inline, in this thread, on the server's own environ (not a replay).
    assert recorder.environs[0]["wsgi.multithread"] is False
    assert "wsgi_deferred.id" not in recorder.environs[0]


@pytest.mark.parametrize("max_body", [1000, MIB + 10])  # the partial read in memory / on disk
def test_under_defer_after_an_oversize_terminated_body_passes_through_intact(
    make_mw: Harness, max_body: int
) -> None:
    recorder = EnvironRecorder()
    mw = make_mw(recorder, defer_after=PATIENCE, max_body=max_body)
    data = (bytes(range(251)) * (max_body // 251 + 100))[: max_body + 5000]
    environ = make_environ("/upload", "POST", data=data)
    environ["wsgi.input_terminated"] = True
    del environ["CONTENT_LENGTH"]
    assert call(mw, environ).code == 200
    assert len(recorder.bodies[0]) == len(data)
    assert recorder.bodies[0] == data


def test_large_bodies_are_replayed_intact(make_mw: Harness) -> None:
    mw = make_mw(apps.echo_app, routes=["/echo"])
    data = bytes(range(256)) * (6 * 1024 + 7)  # about 1.5 MiB: spooled to a temporary file
    final = result_of(mw, request(mw, "PUT", "/echo", data=data))
    assert final.header("X-Body-Length") == str(len(data))
    assert bytes.fromhex(final.json()["body"]) == data


def test_short_body_is_400_and_invalid_content_length_is_400(make_mw: Harness) -> None:
    store = RecordingStore()
    mw = make_mw(apps.echo_app, routes=["/upload"], store=store)
    short = make_environ("/upload", "POST", data=b"only this")
    short["CONTENT_LENGTH"] = "1000"
    answer = call(mw, short)
    assert answer.status == "400 Bad Request"
    assert "ended after 9 of 1000" in answer.json()["error"]
    for value in ("abc", "-1", "1.0", "\xb2"):
        environ = make_environ("/upload", "POST", data=b"abc")
        environ["CONTENT_LENGTH"] = value
        assert call(mw, environ).status == "400 Bad Request", value
    assert store.created == []


def test_the_replay_environ_is_rebuilt(make_mw: Harness) -> None:
    recorder = EnvironRecorder()
    mw = make_mw(recorder, routes=["/r/<x>"])
    environ = make_environ(
        "/r/1",
        "POST",
        data=b"body bytes",
        query_string="a=b",
        content_type="application/octet-stream",
        headers={"X-Custom": "c", "Cookie": "k=v"},
        SCRIPT_NAME="/app",
        REMOTE_ADDR="192.0.2.1",
        REMOTE_PORT="5555",
        REMOTE_USER="alice",
    )
    environ["gunicorn.socket"] = object()
    environ["wsgi.file_wrapper"] = FileWrapper
    environ["werkzeug.server.shutdown"] = object()
    accepted = call(mw, environ)
    assert result_of(mw, accepted, script_name="/app").body == b"recorded"
    replay = recorder.environs[0]
    assert recorder.bodies == [b"body bytes"]
    for key in (
        "REQUEST_METHOD",
        "SCRIPT_NAME",
        "PATH_INFO",
        "QUERY_STRING",
        "CONTENT_TYPE",
        "SERVER_NAME",
        "SERVER_PORT",
        "SERVER_PROTOCOL",
        "REMOTE_ADDR",
        "REMOTE_PORT",
        "REMOTE_USER",
        "HTTP_HOST",
        "HTTP_X_CUSTOM",
        "HTTP_COOKIE",
    ):
        assert replay[key] == environ[key], key
    assert replay["CONTENT_LENGTH"] == "10"
    assert replay["wsgi.multithread"] is True
    assert replay["wsgi.run_once"] is False
    assert replay["wsgi.input"] is not environ["wsgi.input"]
    assert replay["wsgi_deferred.id"] == accepted.task_id
    assert callable(replay["wsgi_deferred.progress"])
    assert (
        callable(replay["wsgi_deferred.cancelled"]) and replay["wsgi_deferred.cancelled"]() is False
    )
    for key in ("gunicorn.socket", "wsgi.file_wrapper", "werkzeug.server.shutdown"):
        assert key not in replay
    assert {k.split(".")[0] for k in replay if "." in k} <= {"wsgi", "wsgi_deferred"}


# -- limits ------------------------------------------------------------------------------------


def test_full_pool_is_503_with_retry_after_and_no_task(make_mw: Harness) -> None:
    store = RecordingStore()
    slow = SlowApp()
    mw = make_mw(slow, routes=["/slow/<n>"], store=store, max_pending=2, workers=1)
    first = request(mw, "GET", "/slow/1")
    second = request(mw, "GET", "/slow/2")
    assert first.code == second.code == 202
    full = request(mw, "GET", "/slow/3")
    assert full.status == "503 Service Unavailable"
    assert full.header("Retry-After") == "5"
    assert full.header("Cache-Control") == "no-store"
    assert "error" in full.json()
    # Under defer_after and Prefer wait too.
    assert request(mw, "GET", "/slow/4", headers={"Prefer": "wait=1"}).code == 503
    assert store.created == [first.task_id, second.task_id]
    slow.release.set()
    assert result_of(mw, second).code == 200
    assert wait_until(lambda: mw.pool.pending == 0)
    assert request(mw, "GET", "/slow/5").code == 202  # room again
    assert wait_until(lambda: slow.paths == ["/slow/1", "/slow/2", "/slow/5"])


def test_per_client_limit_is_429(make_mw: Harness) -> None:
    store = RecordingStore()
    slow = SlowApp()
    mw = make_mw(slow, routes=["/slow"], store=store, max_pending_per_client=1)
    assert request(mw, "GET", "/slow", REMOTE_ADDR="10.0.0.1").code == 202
    limited = request(mw, "GET", "/slow", REMOTE_ADDR="10.0.0.1")
    assert limited.status == "429 Too Many Requests"
    assert limited.header("Retry-After") == "5"
    assert len(store.created) == 1
    assert request(mw, "GET", "/slow", REMOTE_ADDR="10.0.0.2").code == 202  # someone else
    slow.release.set()
    assert wait_until(lambda: mw.pool.pending == 0)
    assert request(mw, "GET", "/slow", REMOTE_ADDR="10.0.0.1").code == 202  # slot freed


def test_per_client_limit_uses_the_bind_owner_when_bound(make_mw: Harness) -> None:
    slow = SlowApp()
    mw = make_mw(slow, routes=["/slow"], bind="authorization", max_pending_per_client=1)
    alice = {"Authorization": "Bearer alice"}
    assert request(mw, "GET", "/slow", headers=alice, REMOTE_ADDR="10.0.0.1").code == 202
    # Same person from another address: still limited. Another person on her address: fine.
    assert request(mw, "GET", "/slow", headers=alice, REMOTE_ADDR="10.0.0.9").code == 429
    bob = {"Authorization": "Bearer bob"}
    assert request(mw, "GET", "/slow", headers=bob, REMOTE_ADDR="10.0.0.1").code == 202
    slow.release.set()


# -- bind ----------------------------------------------------------------------------------------


BIND_CASES: dict[str, tuple[Any, dict[str, Any], dict[str, Any], str]] = {
    # name: (bind option, creator's request extras, stranger's request extras, credential)
    "authorization": (
        "authorization",
        {"headers": {"Authorization": "Bearer s3cr3t-token"}},
        {"headers": {"Authorization": "Bearer other"}},
        "Bearer s3cr3t-token",
    ),
    "cookie": (
        "cookie:sessionid",
        {"headers": {"Cookie": "theme=dark; sessionid=abc123secret"}},
        {"headers": {"Cookie": "theme=dark; sessionid=zzz"}},
        "abc123secret",
    ),
    "remote_user": ("remote_user", {"REMOTE_USER": "alice"}, {"REMOTE_USER": "mallory"}, "alice"),
    "callable": (
        lambda environ: environ.get("HTTP_X_TENANT"),
        {"headers": {"X-Tenant": "tenant-42"}},
        {"headers": {"X-Tenant": "tenant-7"}},
        "tenant-42",
    ),
}


@pytest.mark.parametrize("name", sorted(BIND_CASES))
def test_bind_ties_the_status_url_to_its_requester(make_mw: Harness, name: str) -> None:
    option, mine, theirs, credential = BIND_CASES[name]
    mw = make_mw(apps.plain_app, routes=["/work"], bind=option)
    accepted = request(mw, "POST", "/work", **mine)
    assert accepted.code == 202
    assert result_of(mw, accepted, **mine).body == b"hello world"
    assert request(mw, "GET", accepted.location, **theirs).code == 404
    assert request(mw, "GET", accepted.location).code == 404  # no credential at all
    assert request(mw, "DELETE", accepted.location, **theirs).code == 404
    # The store keeps a keyed hash of the credential, never the credential.
    store = mw.get_store()
    record = store.get(accepted.task_id)
    assert record is not None and record.owner is not None
    assert credential not in record.owner
    expected = hmac.new(store.secret(), credential.encode(), hashlib.sha256).hexdigest()
    assert record.owner == expected
    assert record.owner != hashlib.sha256(credential.encode()).hexdigest()  # keyed, not bare
    assert request(mw, "GET", accepted.location, **mine).code == 200


def test_anonymous_requests_are_not_deferred_under_bind(make_mw: Harness) -> None:
    # docs/security.md, "Anonymous requesters": no credential, nobody to bind to: inline.
    mw = make_mw(apps.plain_app, routes=["/work"], bind="authorization")
    answer = request(mw, "POST", "/work")
    assert answer.code == 200 and answer.body == b"hello world"
    assert mw.stats()["counters"]["passed_through_anonymous"] == 1


def test_malformed_cookie_header_counts_as_no_credential(make_mw: Harness) -> None:
    mw = make_mw(apps.plain_app, routes=["/work"], bind="cookie:sid")
    answer = request(mw, "POST", "/work", headers={"Cookie": 'sid="unterminated; \x00'})
    assert answer.code == 200  # no usable cookie: anonymous, so answered inline
    assert mw.stats()["counters"]["passed_through_anonymous"] == 1


@pytest.mark.parametrize("option", ["cookie:", "cookie", "authorization:x", "ip", 42, ""])
def test_invalid_bind_options(option: Any) -> None:
    with pytest.raises(ConfigurationError):
        DeferredMiddleware(apps.plain_app, bind=option, store="memory://")


# -- wrap() and options --------------------------------------------------------------------------


def test_wrap_with_an_import_string(make_mw: Harness) -> None:
    mw = wrap("apps:plain_app", routes=["/work"], store="memory://", workers=1)
    make_mw.created.append(mw)
    assert isinstance(mw, DeferredMiddleware)
    assert mw.app is apps.plain_app
    assert result_of(mw, request(mw, "GET", "/work")).body == b"hello world"
    dotted = wrap("apps.echo_app", store="memory://")
    make_mw.created.append(dotted)
    assert dotted.app is apps.echo_app
    assert wsgi_deferred.wrap is wrap


@pytest.mark.parametrize(
    "target",
    [
        "no_such_module_for_wsgi_deferred:app",
        "apps:no_such_attribute",
        "apps:NOT_CALLABLE",
        "",
        "   ",
        "apps:",
    ],
)
def test_wrap_with_a_bad_import_string(target: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        wrap(target, store="memory://")
    assert isinstance(info.value, DeferredError)


def test_wrap_accepts_an_app_object(make_mw: Harness) -> None:
    mw = wrap(apps.plain_app, store="memory://")
    make_mw.created.append(mw)
    assert mw.app is apps.plain_app


@pytest.mark.parametrize(
    "options",
    [
        {"workers": 0},
        {"max_pending": 0},
        {"result_ttl": 0},
        {"lease_timeout": 0},
        {"max_body": -1},
        {"max_wait": -1},
        {"defer_after": -0.5},
        {"max_pending_per_client": 0},
        {"status_path": "status/"},
        {"status_path": "/status"},
        {"status_path": ""},
        {"store": "nowhere"},
        {"store": "ftp://host/x"},
        {"store": 42},
        {"routes": ["no-slash"]},
        {"exclude": ["GET"]},
        {"metrics_path": "/status/metrics"},
        {"metrics_path": "metrics"},
    ],
)
def test_invalid_options_are_configuration_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        DeferredMiddleware(apps.plain_app, **options)


def test_app_must_be_callable() -> None:
    with pytest.raises(ConfigurationError):
        DeferredMiddleware("not an app")  # type: ignore[arg-type]


def test_custom_status_path(make_mw: Harness) -> None:
    mw = make_mw(Router({"/status/": apps.status_app}), routes=["/work"], status_path="/jobs/")
    accepted = request(mw, "GET", "/work")
    assert accepted.location == f"/jobs/{accepted.task_id}"
    assert result_of(mw, accepted).body == b"hello world"
    mine = request(mw, "GET", "/status/" + accepted.task_id)  # the app's own /status/ route
    assert mine.body == f"app:/status/{accepted.task_id}".encode()


def test_default_store_is_memory_for_a_single_process(make_mw: Harness) -> None:
    mw = make_mw(apps.plain_app, routes=["/work"], store=None)
    assert result_of(mw, request(mw, "GET", "/work")).code == 200
    assert isinstance(mw.get_store(), MemoryStore)
    assert default_store_url(False) == "memory://"
    assert default_store_url(True).startswith("sqlite://")


def test_closing_removes_every_pool_thread(make_mw: Harness) -> None:
    before = set(threading.enumerate())
    slow = SlowApp()
    mw = make_mw(slow, routes=["/slow/<n>"], workers=3)
    accepted = [request(mw, "GET", f"/slow/{n}") for n in range(5)]
    assert len(set(threading.enumerate()) - before) == 4  # three workers and a heartbeat
    slow.release.set()
    for answer in accepted:
        assert result_of(mw, answer).code == 200
    mw.close()
    assert set(threading.enumerate()) - before == set()
