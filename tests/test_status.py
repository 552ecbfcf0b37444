"""status.py: the status URL's whole contract (docs/protocol.md, "The status URL")."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import apps
import pytest
from apps import (
    PATIENCE,
    Harness,
    ProgressApp,
    Result,
    Router,
    SlowApp,
    call,
    make_environ,
    request,
    result_of,
    status_request,
    wait_until,
)
from werkzeug.wsgi import FileWrapper

from wsgi_deferred import DeferredMiddleware
from wsgi_deferred.rules import wsgi_path
from wsgi_deferred.task import TaskRecord, TaskState, new_task_id

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
HTML = {"Accept": BROWSER_ACCEPT}
FORM = "application/x-www-form-urlencoded"


@pytest.fixture
def make_mw() -> Iterator[Harness]:
    with Harness() as harness:
        yield harness


@pytest.fixture
def slow() -> SlowApp:
    return SlowApp()


@pytest.fixture
def mw(make_mw: Harness, slow: SlowApp) -> DeferredMiddleware:
    """``/slow/...`` blocks until released; ``/fail`` raises; everything under ``/r/`` is
    deferred."""
    router = Router(
        {
            "/r/slow": slow,
            "/r/fail": apps.raise_after_start_app,
            "/r/hop": apps.hop_by_hop_app,
            "/r/file": apps.FileApp(),
            "/r/echo": apps.echo_app,
        }
    )
    return make_mw(router, routes=["/r/<path:rest>"])


def done(mw: Callable[..., Iterable[bytes]], path: str, method: str = "GET", **kw: Any) -> Result:
    """Submit a deferred request and return its 202 once the task has finished."""
    accepted = request(mw, method, path, **kw)
    assert accepted.code == 202, accepted
    head = status_request(
        mw, accepted.location, method="HEAD", wait=PATIENCE, headers=kw.get("headers")
    )
    assert head.code in (200, 500), head
    return accepted


# -- queued / running --------------------------------------------------------------------------


def test_the_202_answer(mw: DeferredMiddleware, slow: SlowApp) -> None:
    accepted = request(mw, "POST", "/r/slow/1")
    assert accepted.status == "202 Accepted"
    task_id = accepted.task_id
    assert accepted.location == f"/status/{task_id}"
    assert len(task_id) == 22
    assert accepted.header("Retry-After") == "1"
    assert accepted.header("Cache-Control") == "no-store"
    assert accepted.header("Content-Type") == "application/json"
    assert accepted.header("Content-Length") == str(len(accepted.body))
    assert accepted.header("Preference-Applied") is None  # nobody asked for it
    document = accepted.json()
    assert document["id"] == task_id
    assert document["state"] in ("queued", "running")
    assert document["status_url"] == accepted.location
    assert document["progress"] is None and document["message"] is None
    assert document["label"] == "POST /r/slow/1"
    slow.release.set()


def test_running_task_answers_202_with_itself_as_location(
    mw: DeferredMiddleware, slow: SlowApp
) -> None:
    accepted = request(mw, "GET", "/r/slow")
    assert slow.started.wait(PATIENCE)
    running = request(mw, "GET", accepted.location)
    assert running.code == 202
    assert running.location == accepted.location
    assert running.header("Retry-After") == "1"
    assert running.header("Cache-Control") == "no-store"
    document = running.json()
    assert document["state"] == "running"
    assert document["started"] is not None and document["finished"] is None
    assert document["created"].endswith("+00:00")
    slow.release.set()
    assert result_of(mw, accepted).body == b"slow done"


def test_location_includes_script_name(mw: DeferredMiddleware, slow: SlowApp) -> None:
    accepted = request(mw, "POST", "/r/slow/1", SCRIPT_NAME="/mount/app")
    assert accepted.location == f"/mount/app/status/{accepted.task_id}"
    assert accepted.json()["status_url"] == accepted.location
    running = status_request(mw, accepted.location, script_name="/mount/app")
    assert running.code == 202 and running.location == accepted.location
    slow.release.set()
    final = status_request(mw, accepted.location, script_name="/mount/app", wait=PATIENCE)
    assert final.body == b"slow done"


def test_non_ascii_script_name_is_percent_encoded(mw: DeferredMiddleware, slow: SlowApp) -> None:
    accepted = request(mw, "GET", "/r/slow", SCRIPT_NAME=wsgi_path("/ä pp"))
    assert accepted.location == f"/%C3%A4%20pp/status/{accepted.task_id}"
    slow.release.set()


# -- done --------------------------------------------------------------------------------------


QUIRK_APPS = {
    "plain": apps.plain_app,
    "write": apps.write_app,
    "lazy": apps.lazy_app,
    "exc_info": apps.exc_info_app,
    "closing": apps.ClosingApp(),
    "echo": apps.echo_app,
}


@pytest.mark.parametrize("name", sorted(QUIRK_APPS))
def test_done_serves_the_apps_own_response_verbatim(make_mw: Harness, name: str) -> None:
    app = QUIRK_APPS[name]
    mw = make_mw(app, routes=["/deferred/<path:rest>"])
    kwargs: dict[str, Any] = {
        "data": b"some body",
        "query_string": "q=1&r=%C3%A9",
        "headers": {"X-Thing": "t"},
    }
    direct = request(app, "POST", "/deferred/x", **kwargs)
    accepted = request(mw, "POST", "/deferred/x", **kwargs)
    final = result_of(mw, accepted)
    assert (final.status, final.headers, final.body) == (direct.status, direct.headers, direct.body)
    # Fetchable again, identically, until it expires or is deleted.
    again = request(mw, "GET", accepted.location)
    assert (again.status, again.headers, again.body) == (final.status, final.headers, final.body)


def test_done_drops_hop_by_hop_headers_and_keeps_the_rest_in_order(mw: DeferredMiddleware) -> None:
    final = result_of(mw, request(mw, "GET", "/r/hop"))
    assert final.headers == [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Set-Cookie", "a=1; Path=/"),
        ("Set-Cookie", "b=2; Path=/"),
        ("X-Custom", "kept"),
    ]
    assert final.body == b"hop"


def test_done_is_served_through_the_servers_file_wrapper(mw: DeferredMiddleware) -> None:
    accepted = done(mw, "/r/file")
    environ = make_environ(accepted.location)
    environ["wsgi.file_wrapper"] = FileWrapper
    final = call(mw, environ)
    assert final.iter_type is FileWrapper
    assert final.body == apps.FILE_DATA
    plain = request(mw, "GET", accepted.location)  # no wrapper offered: a plain iterator
    assert plain.iter_type is not FileWrapper and plain.body == apps.FILE_DATA


def test_large_result_round_trips(make_mw: Harness) -> None:
    app = apps.big_app(2 * (1 << 20) + 3)
    mw = make_mw(app, routes=["/big"])
    final = result_of(mw, request(mw, "GET", "/big"))
    assert final.code == 200
    assert hashlib.sha256(final.body).digest() == hashlib.sha256(app.data).digest()  # type: ignore[attr-defined]


# -- failed / lost -----------------------------------------------------------------------------


FAILING_APPS = {
    "raise_before_start": apps.raise_before_start_app,
    "raise_after_start": apps.raise_after_start_app,
    "raise_mid_iteration": apps.raise_mid_iteration_app,
    "exc_info_after_body": apps.exc_info_after_body_app,
    "no_start_response": apps.no_start_response_app,
    "str_body": apps.str_body_app,
    "second_start_response": apps.second_start_response_app,
}


@pytest.mark.parametrize("name", sorted(FAILING_APPS))
def test_failed_is_500_naming_the_state_without_the_traceback(
    make_mw: Harness, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="wsgi_deferred")
    mw = make_mw(FAILING_APPS[name], routes=["/fail"])
    accepted = request(mw, "POST", "/fail")
    final = result_of(mw, accepted)
    assert final.status == "500 Internal Server Error"
    assert final.header("Content-Type") == "application/json"
    assert final.header("Cache-Control") == "no-store"
    document = final.json()
    assert document["state"] == "failed"
    assert document["id"] == accepted.task_id
    assert document["finished"] is not None
    for leak in (b"Traceback", b"raised before", b"raised after", b"mid-iteration", b'File "'):
        assert leak not in final.body
    # ...but the log has it, with the task id and the traceback.
    logged = [r for r in caplog.records if accepted.task_id in r.getMessage()]
    assert any(r.exc_info is not None and r.levelno == logging.ERROR for r in logged), logged


def test_debug_shows_the_traceback_to_the_client(make_mw: Harness) -> None:
    """docs/protocol.md, "Errors": the traceback reaches the client only when debug is on."""
    mw = make_mw(apps.raise_after_start_app, routes=["/fail"], debug=True)
    final = result_of(mw, request(mw, "POST", "/fail"))
    assert final.code == 500
    document = final.json()
    assert document["state"] == "failed"
    assert document["message"].startswith("Traceback (most recent call last)")
    assert "raise_after_start_app" in document["message"]


def test_cancel_form_answers_json_without_an_error_key(make_mw: Harness) -> None:
    slow = apps.SlowApp()
    mw = make_mw(slow, routes=["/slow"])
    accepted = request(mw, "POST", "/slow")
    answer = status_request(
        mw,
        accepted.location,
        "POST",
        data=b"action=cancel",
        content_type="application/x-www-form-urlencoded",
    )
    assert answer.code == 200
    assert answer.json() == {"id": accepted.task_id, "state": "cancelled"}
    assert status_request(mw, accepted.location).code == 404


def test_failed_page_for_browsers(mw: DeferredMiddleware) -> None:
    accepted = request(mw, "GET", "/r/fail")
    final = result_of(mw, accepted, headers=HTML)
    assert final.code == 500
    assert final.header("Content-Type") == "text/html; charset=utf-8"
    assert b"failed" in final.body and b"Traceback" not in final.body
    assert b'http-equiv="refresh"' not in final.body  # a final page does not refresh


def test_lost_when_the_lease_runs_out(make_mw: Harness, slow: SlowApp) -> None:
    mw = make_mw(slow, routes=["/slow"], lease_timeout=0.2)
    mw.pool.on_heartbeat = None  # this "process" stops renewing, as if it had died
    accepted = request(mw, "GET", "/slow")
    assert slow.started.wait(PATIENCE)
    started = time.monotonic()
    final = result_of(mw, accepted)
    assert time.monotonic() - started < PATIENCE - 1  # woken by the lease, not the timeout
    assert final.status == "500 Internal Server Error"
    assert final.json()["state"] == "lost"
    slow.release.set()
    assert slow.finished.wait(PATIENCE)
    assert wait_until(lambda: mw.pool.pending == 0)
    assert request(mw, "GET", accepted.location).json()["state"] == "lost"  # stays lost


def test_lost_for_a_record_whose_lease_lapsed(make_mw: Harness) -> None:
    mw = make_mw(apps.plain_app, routes=["/x"], lease_timeout=0.1)
    task_id = new_task_id()
    mw.get_store().create(
        TaskRecord(id=task_id, state=TaskState.RUNNING, lease_expires=time.time() + 0.1)
    )
    # A sync worker's poll is never held (a threaded one's may be held briefly past the lease).
    assert request(mw, "GET", f"/status/{task_id}", **{"wsgi.multithread": False}).code == 202
    final = status_request(mw, f"/status/{task_id}", wait=PATIENCE)
    assert final.code == 500
    assert final.json()["state"] == "lost"
    page = request(mw, "GET", f"/status/{task_id}", headers=HTML)
    assert page.code == 500 and b"lost" in page.body


def test_heartbeat_keeps_a_long_task_alive(make_mw: Harness, slow: SlowApp) -> None:
    mw = make_mw(slow, routes=["/slow"], lease_timeout=0.15)
    accepted = request(mw, "GET", "/slow")
    assert slow.started.wait(PATIENCE)
    threading.Event().wait(0.5)  # more than three lease lengths
    running = request(mw, "GET", accepted.location)
    assert running.code == 202 and running.json()["state"] == "running"
    slow.release.set()
    assert result_of(mw, accepted).body == b"slow done"


# -- uniform 404 -------------------------------------------------------------------------------


def four_oh_fours(make_mw: Harness, headers: dict[str, str]) -> dict[str, Result]:
    """The 404 for each reason an id can be unanswerable."""
    me = {**headers, "Authorization": "Bearer mine"}
    slow = SlowApp()
    router = Router({"/slow": slow})
    mw = make_mw(router, routes=["/work/<n>", "/slow"], bind="authorization")
    short = make_mw(router, routes=["/work/<n>"], bind="authorization", result_ttl=0.2)
    answers: dict[str, Result] = {}

    answers["unknown"] = request(mw, "GET", f"/status/{new_task_id()}", headers=me)

    deleted = done(mw, "/work/1", headers=me)
    assert request(mw, "DELETE", deleted.location, headers=me).code == 204
    answers["deleted"] = request(mw, "GET", deleted.location, headers=me)

    cancelled = request(mw, "GET", "/slow", headers=me)
    assert slow.started.wait(PATIENCE)
    assert request(mw, "DELETE", cancelled.location, headers=me).code == 204
    answers["cancelled"] = request(mw, "GET", cancelled.location, headers=me)
    slow.release.set()

    mine = done(mw, "/work/2", headers=me)
    assert request(mw, "GET", mine.location, headers=me).code == 200
    answers["not yours"] = request(
        mw, "GET", mine.location, headers={**headers, "Authorization": "Bearer other"}
    )
    answers["anonymous"] = request(mw, "GET", mine.location, headers=headers)

    expired = done(short, "/work/3", headers=me)
    record = short.get_store().get(expired.task_id)
    assert record is not None and record.expires is not None
    threading.Event().wait(max(0.0, record.expires - time.time()) + 0.02)
    answers["expired"] = request(short, "GET", expired.location, headers=me)
    return answers


@pytest.mark.parametrize("accept", ["json", "html"])
def test_one_uniform_404(make_mw: Harness, accept: str) -> None:
    answers = four_oh_fours(make_mw, HTML if accept == "html" else {})
    reference = answers["unknown"]
    assert reference.status == "404 Not Found"
    assert reference.header("Cache-Control") == "no-store"
    for reason, answer in answers.items():
        assert (answer.status, answer.headers, answer.body) == (
            reference.status,
            reference.headers,
            reference.body,
        ), reason


def test_head_of_a_404_is_the_404_without_body(mw: DeferredMiddleware) -> None:
    url = f"/status/{new_task_id()}"
    get = request(mw, "GET", url)
    head = request(mw, "HEAD", url)
    assert (head.status, head.headers, head.body) == (get.status, get.headers, b"")


@pytest.mark.parametrize(
    "path",
    [
        "/status/",
        "/status/abc",
        "/status/" + "a" * 21,
        "/status/" + "a" * 23,
        "/status/" + "a" * 21 + ".",
        "/status/" + "a" * 21 + "=",
        "/status/" + "a" * 22 + "/",
        "/status/" + "a" * 22 + "/extra",
        "/status/health",
        "/status/../etc/passwd",
        "/status/" + "ä" * 11,  # 22 characters in PATH_INFO, but not id-shaped
    ],
)
def test_paths_that_are_not_id_shaped_pass_through_to_the_app(make_mw: Harness, path: str) -> None:
    mw = make_mw(apps.status_app, routes=["/r/<x>"])
    for method in ("GET", "DELETE", "POST"):
        answer = request(mw, method, path)
        assert answer.code == 200, (method, path, answer)
        assert answer.body == f"app:{wsgi_path(path)}".encode("latin-1")


def test_id_shaped_paths_are_never_passed_to_the_app(make_mw: Harness) -> None:
    mw = make_mw(apps.status_app)
    answer = request(mw, "GET", "/status/" + "A" * 22)
    assert answer.code == 404 and not answer.body.startswith(b"app:")


# -- HEAD --------------------------------------------------------------------------------------


def test_head_equals_get_without_body(mw: DeferredMiddleware, slow: SlowApp) -> None:
    finished = done(mw, "/r/echo", data=b"abc")
    failed = done(mw, "/r/fail")
    for url in (finished.location, failed.location):
        get = request(mw, "GET", url)
        head = request(mw, "HEAD", url)
        assert get.body
        assert (head.status, head.headers, head.body) == (get.status, get.headers, b""), url
    # While running, the body (and so Content-Length) holds a clock; everything else matches.
    running = request(mw, "GET", "/r/slow")
    assert slow.started.wait(PATIENCE)
    get = request(mw, "GET", running.location)
    head = request(mw, "HEAD", running.location)
    assert head.status == get.status == "202 Accepted"
    assert head.body == b""

    def without_length(result: Result) -> list[tuple[str, str]]:
        return [(k, v) for k, v in result.headers if k != "Content-Length"]

    assert without_length(head) == without_length(get)
    slow.release.set()


# -- DELETE and the cancel form ----------------------------------------------------------------


def test_delete_a_result_then_404(mw: DeferredMiddleware) -> None:
    accepted = done(mw, "/r/echo")
    deleted = request(mw, "DELETE", accepted.location)
    assert deleted.status == "204 No Content"
    assert deleted.body == b""
    assert deleted.header("Cache-Control") == "no-store"
    assert deleted.header("Content-Type") is None
    assert request(mw, "GET", accepted.location).code == 404
    assert request(mw, "DELETE", accepted.location).code == 404
    assert mw.get_store().get(accepted.task_id) is None


def test_delete_a_queued_task_means_it_never_runs(make_mw: Harness, slow: SlowApp) -> None:
    mw = make_mw(slow, routes=["/slow/<n>"], workers=1)
    first = request(mw, "POST", "/slow/1")
    assert slow.started.wait(PATIENCE)
    queued = request(mw, "POST", "/slow/2")
    assert queued.json()["state"] == "queued"
    assert request(mw, "DELETE", queued.location).code == 204
    assert request(mw, "GET", queued.location).code == 404
    slow.release.set()
    assert result_of(mw, first).body == b"slow done"
    assert wait_until(lambda: mw.pool.pending == 0)
    assert slow.paths == ["/slow/1"]
    assert request(mw, "GET", queued.location).code == 404


def test_delete_a_running_task_discards_its_result(make_mw: Harness) -> None:
    app = ProgressApp()
    mw = make_mw(app, routes=["/work"])
    accepted = request(mw, "POST", "/work")
    assert app.reported.wait(PATIENCE)
    assert request(mw, "DELETE", accepted.location).code == 204
    assert app.saw_cancel.wait(PATIENCE)  # environ["wsgi_deferred.cancelled"]() said True
    assert app.finished.wait(PATIENCE)
    assert wait_until(lambda: mw.pool.pending == 0)
    assert request(mw, "GET", accepted.location).code == 404
    record = mw.get_store().get(accepted.task_id)
    assert record is None or record.state is TaskState.CANCELLED
    assert mw.get_store().open_body(accepted.task_id) is None


def test_cancel_form_cancels(mw: DeferredMiddleware, slow: SlowApp) -> None:
    accepted = request(mw, "GET", "/r/slow")
    answer = request(mw, "POST", accepted.location, data=b"action=cancel", content_type=FORM)
    assert answer.code == 200
    assert answer.header("Cache-Control") == "no-store"
    assert request(mw, "GET", accepted.location).code == 404
    page = request(
        mw,
        "POST",
        request(mw, "GET", "/r/slow").location,
        data=b"action=cancel",
        content_type=FORM,
        headers=HTML,
    )
    assert page.code == 200 and b"cancelled" in page.body
    slow.release.set()


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b"action=cancel", "text/plain"),
        (b"action=delete", FORM),
        (b"", FORM),
        (b"action=cancel&action=cancel", FORM),
        (b"\xff\xfe", FORM),
    ],
)
def test_post_that_is_not_the_cancel_form_is_405(
    mw: DeferredMiddleware, slow: SlowApp, data: bytes, content_type: str
) -> None:
    accepted = request(mw, "GET", "/r/slow")
    answer = request(mw, "POST", accepted.location, data=data, content_type=content_type)
    assert answer.code == 405 and answer.header("Allow") == "GET, HEAD, DELETE"
    assert request(mw, "GET", accepted.location).code == 202  # not cancelled
    slow.release.set()


def test_cancel_of_someone_elses_task_is_404(make_mw: Harness, slow: SlowApp) -> None:
    mw = make_mw(slow, routes=["/slow"], bind="authorization")
    mine = {"Authorization": "Bearer mine"}
    accepted = request(mw, "GET", "/slow", headers=mine)
    other = {"Authorization": "Bearer intruder"}
    assert request(mw, "DELETE", accepted.location, headers=other).code == 404
    form = request(
        mw, "POST", accepted.location, data=b"action=cancel", content_type=FORM, headers=other
    )
    assert form.code == 404
    slow.release.set()
    assert result_of(mw, accepted, headers=mine).body == b"slow done"


@pytest.mark.parametrize("method", ["PUT", "PATCH", "OPTIONS", "TRACE", "PROPFIND"])
def test_other_methods_are_405_with_allow(mw: DeferredMiddleware, method: str) -> None:
    for url in (done(mw, "/r/echo").location, f"/status/{new_task_id()}"):
        answer = request(mw, method, url)
        assert answer.status == "405 Method Not Allowed"
        assert answer.header("Allow") == "GET, HEAD, DELETE"
        assert answer.header("Cache-Control") == "no-store"


# -- long polling ------------------------------------------------------------------------------


def test_long_poll_returns_as_soon_as_the_task_is_done(
    mw: DeferredMiddleware, slow: SlowApp
) -> None:
    accepted = request(mw, "GET", "/r/slow")
    answer: list[Result] = []
    poller = threading.Thread(
        target=lambda: answer.append(status_request(mw, accepted.location, wait=30))
    )
    poller.start()
    threading.Event().wait(0.1)
    assert poller.is_alive()  # held, not answered at once
    released = time.monotonic()
    slow.release.set()
    poller.join(PATIENCE)
    assert not poller.is_alive()
    assert time.monotonic() - released < 2.0  # far below the 30 s asked for
    assert answer[0].code == 200 and answer[0].body == b"slow done"


def test_long_poll_is_capped_by_max_wait(make_mw: Harness, slow: SlowApp) -> None:
    mw = make_mw(slow, routes=["/slow"], max_wait=0.2)
    accepted = request(mw, "GET", "/slow")
    started = time.monotonic()
    answer = status_request(mw, accepted.location, wait=60)
    elapsed = time.monotonic() - started
    assert answer.code == 202 and answer.json()["state"] in ("queued", "running")
    assert 0.15 <= elapsed < 3.0
    slow.release.set()


def test_wait_zero_and_final_states_answer_at_once(mw: DeferredMiddleware, slow: SlowApp) -> None:
    accepted = request(mw, "GET", "/r/slow")
    started = time.monotonic()
    assert status_request(mw, accepted.location, wait=0).code == 202
    assert time.monotonic() - started < 1.0
    finished = done(mw, "/r/echo")
    started = time.monotonic()
    assert status_request(mw, finished.location, wait=30).code == 200
    assert time.monotonic() - started < 1.0
    slow.release.set()


# -- JSON and HTML -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "accept", [None, "*/*", "application/json", "text/html;q=0.5, application/json"]
)
def test_json_unless_html_is_preferred(mw: DeferredMiddleware, slow: SlowApp, accept: Any) -> None:
    headers = {"Accept": accept} if accept else {}
    accepted = request(mw, "GET", "/r/slow", headers=headers)
    assert accepted.header("Content-Type") == "application/json"
    assert accepted.header("Refresh") is None
    assert accepted.json()["id"] == accepted.task_id
    slow.release.set()


def test_browsers_get_a_self_refreshing_waiting_page(mw: DeferredMiddleware, slow: SlowApp) -> None:
    accepted = request(mw, "GET", "/r/slow", headers=HTML)
    for page in (accepted, request(mw, "GET", accepted.location, headers=HTML)):
        assert page.code == 202
        assert page.header("Content-Type") == "text/html; charset=utf-8"
        assert page.header("Refresh") == f"1; url={accepted.location}"
        assert page.header("Referrer-Policy") == "no-referrer"
        assert page.header("X-Content-Type-Options") == "nosniff"
        assert page.header("Cache-Control") == "no-store"
        text = page.body.decode()
        assert f'<meta http-equiv="refresh" content="1;url={accepted.location}">' in text
        assert 'name="action" value="cancel"' in text  # the no-JavaScript cancel button
    slow.release.set()
    assert result_of(mw, accepted, headers=HTML).body == b"slow done"


def test_progress_and_message_show_in_the_status(make_mw: Harness) -> None:
    app = ProgressApp()
    mw = make_mw(app, routes=["/work"])
    accepted = request(mw, "POST", "/work")
    assert app.reported.wait(PATIENCE)
    document = request(mw, "GET", accepted.location).json()
    assert document["state"] == "running"
    assert document["progress"] == 0.5
    assert document["message"] == "halfway there"
    page = request(mw, "GET", accepted.location, headers=HTML).body.decode()
    assert 'style="width:50%"' in page and "halfway there" in page
    app.proceed.set()
    assert result_of(mw, accepted).body == b"progress done"


def test_progress_is_clamped_and_messages_are_bounded(make_mw: Harness) -> None:
    reported = threading.Event()
    release = threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        environ["wsgi_deferred.progress"](7, "m" * 2000)
        reported.set()
        release.wait(PATIENCE)
        start_response("200 OK", apps.TEXT)
        return [b"ok"]

    mw = make_mw(app, routes=["/work"])
    accepted = request(mw, "POST", "/work")
    assert reported.wait(PATIENCE)
    document = request(mw, "GET", accepted.location).json()
    assert document["progress"] == 1.0
    assert len(document["message"]) == 500
    release.set()
    assert result_of(mw, accepted).body == b"ok"


def test_no_store_on_everything_the_middleware_writes(mw: DeferredMiddleware) -> None:
    finished = done(mw, "/r/echo")
    failed = done(mw, "/r/fail")
    for answer in (
        request(mw, "GET", failed.location),
        request(mw, "GET", f"/status/{new_task_id()}"),
        request(mw, "PUT", finished.location),
        request(mw, "GET", failed.location, headers=HTML),
    ):
        assert answer.header("Cache-Control") == "no-store", answer.status
        assert answer.header("X-Content-Type-Options") == "nosniff", answer.status
