"""Bad input gets a clear answer, never an escaped exception or a leaked thread: malformed and
unknown ids, garbage Prefer values, oversize and short bodies, non-ASCII paths, a full queue,
DELETE races and a store that is down."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import apps
import pytest
from apps import (
    PATIENCE,
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
    status_request,
    wait_until,
)

from wsgi_deferred import DeferredMiddleware
from wsgi_deferred.errors import StoreUnavailable
from wsgi_deferred.rules import wsgi_path
from wsgi_deferred.stores.memory import MemoryStore
from wsgi_deferred.task import TaskRecord, new_task_id

HTML = {"Accept": "text/html"}


@pytest.fixture(scope="module", autouse=True)
def no_thread_leaks() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    leaked = {t for t in set(threading.enumerate()) - before if t.is_alive()}
    assert leaked == set(), f"threads leaked by this module: {leaked}"
    assert pool_threads() <= before


@pytest.fixture
def make_mw() -> Iterator[Harness]:
    with Harness() as harness:
        yield harness


@pytest.fixture
def mw(make_mw: Harness) -> DeferredMiddleware:
    return make_mw(
        Router({"/status/": apps.status_app, "/echo": apps.echo_app}),
        routes=["/r/<path:rest>", "/echo"],
        max_body=1000,
    )


def is_clear(result: Result) -> bool:
    """A response the client can act on: a real status line and a typed, sized body."""
    return result.code in (200, 201, 202, 204, 400, 404, 405, 413, 429, 500, 503) and (
        result.code == 204 or result.header("Content-Type") is not None
    )


# -- ids ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tail",
    [
        "",
        "x",
        "short",
        "a" * 21,
        "a" * 23,
        "a" * 200,
        "a" * 21 + "!",
        "a" * 21 + " ",
        "a" * 21 + "\x00",
        "a" * 21 + "+",
        "a" * 22 + "/",
        "../" + "a" * 19,
        "%41" * 7 + "a",
        "ü" * 11,
    ],
)
@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE", "POST", "PUT"])
def test_malformed_ids_pass_through_to_the_app(
    mw: DeferredMiddleware, tail: str, method: str
) -> None:
    environ = make_environ("/", method)
    environ["PATH_INFO"] = "/status/" + wsgi_path(tail)
    answer = call(mw, environ)
    assert answer.code == 200
    if method != "HEAD":
        assert answer.body == f"app:/status/{wsgi_path(tail)}".encode("latin-1")


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE"])
def test_unknown_ids_are_404(mw: DeferredMiddleware, method: str) -> None:
    for task_id in (new_task_id(), "A" * 22, "-" * 22, "_" * 22):
        answer = request(mw, method, f"/status/{task_id}")
        assert answer.status == "404 Not Found" and is_clear(answer)
    form = request(
        mw,
        "POST",
        f"/status/{new_task_id()}",
        data=b"action=cancel",
        content_type="application/x-www-form-urlencoded",
    )
    assert form.code == 404


# -- Prefer ------------------------------------------------------------------------------------


GARBAGE_PREFER = [
    "wait=abc",
    "wait=-1",
    "wait=1e999",
    "wait=nan",
    "wait=",
    "wait==5",
    "respond-asyncx;;;",
    ",,,,",
    "\t",
    "x" * 10_000,
    "wait=" + "9" * 400,
    "wait=5x, " * 200,
    "\xff\xfe\x00",
]


@pytest.mark.parametrize("prefer", GARBAGE_PREFER)
def test_garbage_prefer_values_get_clear_answers(mw: DeferredMiddleware, prefer: str) -> None:
    headers = {"Prefer": prefer}
    passed = request(mw, "GET", "/plain", headers=headers)
    assert passed.code == 200 and passed.body == b"hello world"
    deferred = request(mw, "POST", "/r/x", headers=headers)
    assert deferred.code == 202 and is_clear(deferred)
    status = request(mw, "GET", deferred.location, headers=headers)
    assert status.code in (200, 202) and is_clear(status)
    assert result_of(mw, deferred).body == b"hello world"


def test_huge_wait_on_the_status_url_is_capped(make_mw: Harness) -> None:
    slow = SlowApp()
    mw = make_mw(slow, routes=["/slow"], max_wait=0.05)
    accepted = request(mw, "GET", "/slow")
    answer = request(mw, "GET", accepted.location, headers={"Prefer": "wait=" + "9" * 300})
    assert answer.code == 202
    slow.release.set()


# -- bodies ------------------------------------------------------------------------------------


@pytest.mark.parametrize("accept", [{}, HTML])
def test_body_over_max_body_is_a_clear_413(mw: DeferredMiddleware, accept: dict[str, str]) -> None:
    answer = request(mw, "POST", "/r/upload", data=b"x" * 5000, headers=accept)
    assert answer.status == "413 Content Too Large" and is_clear(answer)
    assert b"1000" in answer.body


@pytest.mark.parametrize(
    ("declared", "sent"), [("100", b"x" * 10), ("1", b""), ("999", b"x" * 998)]
)
def test_short_bodies_are_a_clear_400(mw: DeferredMiddleware, declared: str, sent: bytes) -> None:
    environ = make_environ("/r/upload", "POST", data=sent)
    environ["CONTENT_LENGTH"] = declared
    answer = call(mw, environ)
    assert answer.status == "400 Bad Request" and is_clear(answer)


@pytest.mark.parametrize("value", ["ten", "-5", "5.0", "0x5", "\xb2", "\xb9\xb2", "1 2"])
def test_invalid_content_length_is_a_clear_400(mw: DeferredMiddleware, value: str) -> None:
    environ = make_environ("/r/upload", "POST", data=b"12345")
    environ["CONTENT_LENGTH"] = value
    answer = call(mw, environ)
    assert answer.status == "400 Bad Request" and is_clear(answer)


def test_input_that_fails_while_reading_is_a_clear_400(mw: DeferredMiddleware) -> None:
    class Reset:
        def read(self, size: int = -1) -> bytes:
            raise ConnectionResetError("client went away")

    environ = make_environ("/r/upload", "POST", data=b"abc")
    environ["wsgi.input"] = Reset()
    answer = call(mw, environ)
    assert answer.status == "400 Bad Request" and is_clear(answer)


# -- paths -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["/r/ünïcödé", "/r/日本語/テスト", "/r/emoji-😀", "/r/a b", "/r/%2F%00", "/r/ä/../ö"]
)
def test_non_ascii_paths_round_trip(make_mw: Harness, text: str) -> None:
    recorder = EnvironRecorder()
    mw = make_mw(recorder, routes=["/r/<path:rest>"])
    environ = make_environ("/")
    environ["PATH_INFO"] = wsgi_path(text)
    accepted = call(mw, environ)
    assert accepted.code == 202
    assert result_of(mw, accepted).body == b"recorded"
    assert recorder.environs[0]["PATH_INFO"] == wsgi_path(text)


@pytest.mark.parametrize("path_info", ["/r/\xff\xfe", "/r/\xc3", "/\x80", "", "no-slash", "/r/"])
def test_undecodable_or_odd_path_info_gets_a_clear_answer(
    mw: DeferredMiddleware, path_info: str
) -> None:
    environ = make_environ("/")
    environ["PATH_INFO"] = path_info
    answer = call(mw, environ)
    assert is_clear(answer)
    if answer.code == 202:
        assert result_of(mw, answer).code == 200


def test_minimal_environ_without_optional_keys(mw: DeferredMiddleware) -> None:
    environ = make_environ("/r/x", "POST")
    for key in ("CONTENT_LENGTH", "CONTENT_TYPE", "QUERY_STRING", "SCRIPT_NAME", "HTTP_HOST"):
        environ.pop(key, None)
    accepted = call(mw, environ)
    assert accepted.code == 202
    assert result_of(mw, accepted).body == b"hello world"


# -- full queue --------------------------------------------------------------------------------


def test_a_burst_over_max_pending_is_answered_cleanly(make_mw: Harness) -> None:
    slow = SlowApp()
    mw = make_mw(slow, routes=["/slow/<n>"], max_pending=5, workers=2)
    answers: list[Result] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        answer = request(mw, "GET", f"/slow/{n}")
        with lock:
            answers.append(answer)

    clients = [threading.Thread(target=client, args=(n,)) for n in range(20)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(PATIENCE)
    codes = sorted(answer.code for answer in answers)
    assert codes == [202] * 5 + [503] * 15
    assert all(a.header("Retry-After") for a in answers if a.code == 503)
    slow.release.set()
    for answer in answers:
        if answer.code == 202:
            assert result_of(mw, answer).body == b"slow done"
    assert wait_until(lambda: mw.pool.pending == 0)
    assert len(slow.paths) == 5


# -- DELETE races ------------------------------------------------------------------------------


def test_concurrent_deletes_of_one_task_succeed_exactly_once(make_mw: Harness) -> None:
    slow = SlowApp()
    mw = make_mw(slow, routes=["/slow"])
    accepted = request(mw, "GET", "/slow")
    assert slow.started.wait(PATIENCE)
    codes: list[int] = []
    go = threading.Event()

    def delete() -> None:
        go.wait(PATIENCE)
        codes.append(request(mw, "DELETE", accepted.location).code)

    threads = [threading.Thread(target=delete) for _ in range(8)]
    for thread in threads:
        thread.start()
    go.set()
    for thread in threads:
        thread.join(PATIENCE)
    assert sorted(codes) == [204] + [404] * 7
    slow.release.set()
    assert wait_until(lambda: mw.pool.pending == 0)
    assert request(mw, "GET", accepted.location).code == 404


def delete_as_it_finishes(mw: DeferredMiddleware, slow: SlowApp) -> None:
    accepted = request(mw, "GET", "/slow")
    assert slow.started.wait(PATIENCE)
    result: list[Result] = []
    deleter = threading.Thread(
        target=lambda: result.append(request(mw, "DELETE", accepted.location))
    )
    deleter.start()
    slow.release.set()
    deleter.join(PATIENCE)
    assert result[0].code == 204
    assert wait_until(lambda: mw.pool.pending == 0)
    assert request(mw, "GET", accepted.location).code == 404
    assert mw.get_store().open_body(accepted.task_id) is None


def test_delete_racing_the_finish(make_mw: Harness) -> None:
    """DELETE lands just before, during or just after the task finishes: always a 204 (the
    task existed), then 404 forever, and nothing escapes or stays pending."""
    for _ in range(15):
        slow = SlowApp()
        mw = make_mw(slow, routes=["/slow"], workers=1)
        delete_as_it_finishes(mw, slow)
        mw.close()


# -- the store is down -------------------------------------------------------------------------


class FlakyStore(MemoryStore):
    """A memory store that can be switched off, raising StoreUnavailable like a dead Redis."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("store is down (test)")

    def create(self, record: TaskRecord) -> None:
        self._check()
        super().create(record)

    def get(self, task_id: str) -> TaskRecord | None:
        self._check()
        return super().get(task_id)

    def cancel(self, task_id: str) -> bool:
        self._check()
        return super().cancel(task_id)

    def secret(self) -> bytes:
        self._check()
        return super().secret()


def test_store_down_at_submit_is_503_and_frees_the_slot(make_mw: Harness) -> None:
    store = FlakyStore()
    recorder = EnvironRecorder()
    mw = make_mw(recorder, routes=["/work"], store=store, max_pending=1)
    store.down = True
    answer = request(mw, "POST", "/work")
    assert answer.status == "503 Service Unavailable"
    assert answer.header("Retry-After") and is_clear(answer)
    assert mw.pool.pending == 0 and recorder.environs == []
    store.down = False
    accepted = request(mw, "POST", "/work")  # the slot was given back
    assert result_of(mw, accepted).body == b"recorded"


def test_store_down_on_the_status_url_is_503(make_mw: Harness) -> None:
    store = FlakyStore()
    mw = make_mw(apps.plain_app, routes=["/work"], store=store)
    accepted = request(mw, "POST", "/work")
    assert result_of(mw, accepted).code == 200
    store.down = True
    for method in ("GET", "HEAD", "DELETE"):
        answer = request(mw, method, accepted.location)
        assert answer.status == "503 Service Unavailable", method
        assert answer.header("Retry-After")
    store.down = False
    assert request(mw, "GET", accepted.location).code == 200


def test_store_down_with_bind_is_503_not_500(make_mw: Harness) -> None:
    store = FlakyStore()
    mw = make_mw(apps.plain_app, routes=["/work"], store=store, bind="authorization")
    store.down = True
    creds = {"Authorization": "Bearer someone"}  # anonymous requests are not deferred
    assert request(mw, "POST", "/work", headers=creds).code == 503
    assert request(mw, "GET", f"/status/{new_task_id()}", headers=creds).code == 503


def test_store_down_at_hand_over_answers_inline(make_mw: Harness) -> None:
    store = FlakyStore()
    slow = SlowApp()
    mw = make_mw(slow, defer_after=0.02, store=store)
    store.down = True
    answer: list[Result] = []
    client = threading.Thread(target=lambda: answer.append(request(mw, "GET", "/slow")))
    client.start()
    assert slow.started.wait(PATIENCE)
    threading.Event().wait(0.05)  # past defer_after: the hand-over has failed by now
    slow.release.set()
    client.join(PATIENCE)
    assert answer[0].code == 200 and answer[0].body == b"slow done"


def test_requests_after_close_are_refused_cleanly(make_mw: Harness) -> None:
    mw = make_mw(apps.plain_app, routes=["/work"])
    assert result_of(mw, request(mw, "GET", "/work")).code == 200
    mw.close()
    refused = request(mw, "GET", "/work")
    assert refused.code == 503 and refused.header("Retry-After")
    assert request(mw, "GET", "/plain").body == b"hello world"  # pass-through still works
    assert status_request(mw, f"/status/{new_task_id()}").code == 404
