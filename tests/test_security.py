"""Secure defaults, in process: nothing is left behind on an error path, a truncated body never
becomes a task, and request text never reaches a URL or a log line unescaped
(docs/security.md)."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apps
import pytest
import redis_server
from apps import Harness, Router, call, make_environ, result_of

from wsgi_deferred import DeferredMiddleware
from wsgi_deferred.admission import slot_client
from wsgi_deferred.binding import cookie_value
from wsgi_deferred.buffers import SPOOL_THRESHOLD
from wsgi_deferred.sanitize import log_safe

# The shared Redis fixtures (skipped without a server unless WSGI_DEFERRED_REQUIRE_REDIS=1).
redis_url = redis_server.redis_url
redis_prefix = redis_server.redis_prefix


@pytest.fixture
def make_mw() -> Iterator[Harness]:
    with Harness() as harness:
        yield harness


class Trickle(io.RawIOBase):
    """A ``wsgi.input`` that yields *data* in small pieces and then EOF, like a socket."""

    def __init__(self, data: bytes, piece: int = 65536) -> None:
        self._data, self._piece = data, piece

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._piece, len(self._data))
        buffer[:n], self._data = self._data[:n], self._data[n:]
        return n


def _spool_files(tmpdir: Path) -> list[str]:
    return sorted(p.name for p in tmpdir.iterdir() if not p.name.startswith("wsgi-deferred-0"))


# -- 1. every error path frees what it took ---------------------------------------------------


def test_too_large_chunked_body_on_a_marked_route_leaves_no_file(
    make_mw: Harness, private_tmpdir: Path
) -> None:
    # Issue 8 finding 1: a chunked (wsgi.input_terminated) body over max_body got 413 but its
    # spilled first max_body + 1 bytes stayed in $TMPDIR.
    max_body = SPOOL_THRESHOLD + 1000
    mw = make_mw(apps.echo_app, routes=["POST /upload"], max_body=max_body)
    environ = make_environ("/upload", "POST")
    environ.pop("CONTENT_LENGTH", None)
    environ["wsgi.input"] = Trickle(b"x" * (max_body + 500_000))
    environ["wsgi.input_terminated"] = True
    result = call(mw, environ)
    assert result.code == 413
    assert _spool_files(private_tmpdir) == []
    assert mw.stats()["pending"] == 0


def test_too_large_chunked_body_under_defer_after_still_reaches_the_app(
    make_mw: Harness, private_tmpdir: Path
) -> None:
    # The pass-through keeps the partial read for the app, and still leaves no file.
    max_body = SPOOL_THRESHOLD + 1000
    mw = make_mw(apps.echo_app, defer_after=5.0, max_body=max_body)
    data = b"y" * (max_body + 500_000)
    environ = make_environ("/upload", "POST")
    environ.pop("CONTENT_LENGTH", None)
    environ["wsgi.input"] = Trickle(data)
    environ["wsgi.input_terminated"] = True
    result = call(mw, environ)
    assert result.code == 201
    assert result.header("X-Body-Length") == str(len(data))
    assert _spool_files(private_tmpdir) == []


def test_rejected_requests_free_their_spooled_body(make_mw: Harness, private_tmpdir: Path) -> None:
    # 503 (pool full) after a body was spooled to disk: the spool file goes.
    slow = apps.SlowApp()
    mw = make_mw(slow, routes=["POST /slow"], max_pending=1, max_pending_per_client=1)
    first = call(mw, make_environ("/slow", "POST", data=b"a"))
    assert first.code == 202
    big = b"b" * (SPOOL_THRESHOLD + 10)
    second = call(mw, make_environ("/slow", "POST", data=big, REMOTE_ADDR="10.0.0.2"))
    assert second.code == 503
    assert _spool_files(private_tmpdir) == []
    slow.release.set()
    assert result_of(mw, first).code == 200


# -- 2. body integrity ------------------------------------------------------------------------


@pytest.mark.parametrize("terminated", [False, True])
def test_short_body_is_400_and_no_task_whatever_input_terminated_says(
    make_mw: Harness, terminated: bool
) -> None:
    # Issue 8 finding 2: Content-Length 10, 5 bytes, half-close; gunicorn sets
    # wsgi.input_terminated and the task ran with CONTENT_LENGTH rewritten to 5.
    recorder = apps.EnvironRecorder()
    mw = make_mw(Router({}, default=recorder), routes=["POST /hook"])
    environ = make_environ("/hook", "POST")
    environ["CONTENT_LENGTH"] = "10"
    environ["wsgi.input"] = Trickle(b"12345")
    environ["wsgi.input_terminated"] = terminated
    result = call(mw, environ)
    assert result.code == 400
    assert b"ended after 5 of 10 bytes" in result.body
    assert mw.stats()["pending"] == 0
    assert recorder.environs == []


def test_replay_keeps_the_content_length_the_client_sent(make_mw: Harness) -> None:
    recorder = apps.EnvironRecorder()
    mw = make_mw(Router({}, default=recorder), routes=["POST /hook"])
    environ = make_environ("/hook", "POST")
    environ["CONTENT_LENGTH"] = "10"
    environ["wsgi.input"] = Trickle(b"0123456789 and the next pipelined request")
    environ["wsgi.input_terminated"] = True
    accepted = call(mw, environ)
    assert accepted.code == 202
    assert result_of(mw, accepted).code == 200
    [seen] = recorder.environs
    assert seen["CONTENT_LENGTH"] == "10"
    assert recorder.bodies == [b"0123456789"]


# -- 4. anonymous requesters under bind -------------------------------------------------------


COOKIE_CASES = [
    ("sid=abc", "abc"),
    ("theme=dark; sid=abc", "abc"),
    (" sid = abc ", "abc"),
    ("sid=a; sid=b", "a"),  # RFC 6265 §5.4: the first (most specific) wins
    ('prefs={"theme": "dark"}; sid=victim', "victim"),  # one odd cookie hides nothing else
    ('sid="quoted"', "quoted"),
    ('sid="a\\"b\\054c"', 'a"b,c'),  # SimpleCookie's escapes
    ("sid=", None),
    ("sid=  ", None),
    ('sid=""', None),
    ("sid", None),
    ("other=1", None),
    ('sid="unterminated; \x00', None),
    ('sid="unterminated', None),
    ("sid=a\x00b", None),
    ("sidx=1; xsid=2", None),
    ('sid="bad; sid=good', "good"),
]


@pytest.mark.parametrize(("header", "expected"), COOKIE_CASES)
def test_cookie_parsing_is_our_own_and_total(header: str, expected: str | None) -> None:
    # Not werkzeug's parse_cookie: werkzeug 2.3 read 'sid="unterminated; \x00' as the
    # credential '"unterminated', werkzeug 3 as no sid at all.
    assert cookie_value(header, "sid") == expected


@pytest.mark.parametrize(
    "anonymous", [{}, {"Cookie": ""}, {"Cookie": "sid="}, {"Cookie": "other=1"}, {"Cookie": "sid"}]
)
def test_anonymous_requester_never_touches_another_task(
    make_mw: Harness, anonymous: dict[str, str]
) -> None:
    slow = apps.SlowApp()
    mw = make_mw(
        Router({"/slow": slow}), routes=["/slow", "/work"], bind="cookie:sid",
        max_pending_per_client=1,
    )  # fmt: skip
    alice = {"Cookie": "sid=alice"}
    mine = call(mw, make_environ("/slow", "POST", headers=alice))
    assert mine.code == 202
    # The anonymous client cannot see or cancel it...
    assert call(mw, make_environ(mine.location, "GET", headers=anonymous)).code == 404
    assert call(mw, make_environ(mine.location, "DELETE", headers=anonymous)).code == 404
    # ...does not share a quota with anyone: its own marked requests run inline, so a full
    # quota (alice has her 1) never answers it 429, and it creates no task to be found.
    for _ in range(3):
        inline = call(mw, make_environ("/work", "POST", headers=anonymous))
        assert inline.code == 200 and inline.body == b"hello world"
    assert mw.stats()["counters"]["passed_through_anonymous"] == 3
    assert call(mw, make_environ("/slow", "POST", headers=alice)).code == 429
    slow.release.set()
    assert result_of(mw, mine, headers=alice).code == 200


# -- 5. limits that hold for a deployment -----------------------------------------------------


def _client_slots(mw: DeferredMiddleware, address: str) -> int:
    return mw.get_store().client_slots(slot_client(address))


def test_one_client_gets_a_fair_share_of_max_pending_by_default(make_mw: Harness) -> None:
    slow = apps.SlowApp()
    mw = make_mw(slow, routes=["/slow"], max_pending=20)  # default share: 20 / 10 = 2
    answers = [call(mw, make_environ("/slow", "POST", REMOTE_ADDR="10.0.0.1")) for _ in range(3)]
    assert [a.code for a in answers] == [202, 202, 429]
    assert answers[2].header("Retry-After")
    # Everyone else still gets in: one client cannot fill the queue.
    others = [call(mw, make_environ("/slow", "POST", REMOTE_ADDR=f"10.0.1.{n}")) for n in range(5)]
    assert [a.code for a in others] == [202] * 5
    slow.release.set()
    for accepted in answers[:2] + others:
        assert result_of(mw, accepted).code == 200


def _shared_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A new handle on one shared storage per call: a SQLite file, or a Redis prefix."""
    if kind == "sqlite":
        return f"sqlite://{tmp_path}/shared.db"
    from wsgi_deferred.stores.redis import RedisStore

    url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    return RedisStore(url, prefix=prefix)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_per_client_count_lives_in_the_shared_store(
    make_mw: Harness, tmp_path: Path, request: pytest.FixtureRequest, kind: str
) -> None:
    # Two middlewares on one store stand for two gunicorn workers (or two hosts): the
    # client's limit is one number for both (issue 8, finding 5: -w 2 let 2 x 5 in).
    slow = apps.SlowApp()
    first = make_mw(slow, routes=["/slow"], store=_shared_store(kind, request, tmp_path),
                    max_pending_per_client=2)  # fmt: skip
    second = make_mw(slow, routes=["/slow"], store=_shared_store(kind, request, tmp_path),
                     max_pending_per_client=2)  # fmt: skip
    env = {"REMOTE_ADDR": "10.0.0.7"}
    a = call(first, make_environ("/slow", "POST", **env))
    b = call(second, make_environ("/slow", "POST", **env))
    assert (a.code, b.code) == (202, 202)
    assert call(first, make_environ("/slow", "POST", **env)).code == 429
    assert call(second, make_environ("/slow", "POST", **env)).code == 429
    slow.release.set()
    assert result_of(first, a).code == 200 and result_of(second, b).code == 200
    assert apps.wait_until(lambda: _client_slots(first, "10.0.0.7") == 0)
    assert call(second, make_environ("/slow", "POST", **env)).code == 202


def test_slots_are_given_back_however_the_task_ends(make_mw: Harness) -> None:
    slow, failing = apps.SlowApp(), apps.SlowApp(error=RuntimeError("boom"))
    mw = make_mw(
        Router({"/slow": slow, "/fail": failing}),
        routes=["/slow", "/fail", "/work"], max_pending_per_client=1, workers=1,
    )  # fmt: skip
    ip = "10.0.0.3"

    def submit(path: str) -> apps.Result:
        return call(mw, make_environ(path, "POST", REMOTE_ADDR=ip))

    def free() -> bool:
        return apps.wait_until(lambda: _client_slots(mw, ip) == 0 and mw.pool.pending == 0)

    # done
    assert result_of(mw, submit("/work")).code == 200
    assert free()
    # failed
    failing.release.set()
    assert result_of(mw, submit("/fail")).code == 500
    assert free()
    # cancelled while running
    running = submit("/slow")
    assert slow.started.wait(apps.PATIENCE)
    assert call(mw, make_environ(running.location, "DELETE")).code == 204
    assert submit("/slow").code == 429  # still running: the slot is still taken
    slow.release.set()
    assert free()
    assert submit("/work").code == 202


def test_a_dead_process_slots_expire_with_its_lease(make_mw: Harness, tmp_path: Path) -> None:
    # A process killed with -9 never gives its slot back: the slot lapses like its lease.
    url = f"sqlite://{tmp_path}/shared.db"
    mw = make_mw(apps.plain_app, routes=["/work"], store=url, max_pending_per_client=1,
                 lease_timeout=0.5)  # fmt: skip
    store = mw.get_store()
    client = slot_client("10.0.0.4")
    assert store.acquire_slot(client, "x" * 22, 1, time.time() + 0.5)  # the "dead" one
    assert call(mw, make_environ("/work", "POST", REMOTE_ADDR="10.0.0.4")).code == 429
    assert apps.wait_until(lambda: store.client_slots(client) == 0, timeout=3)
    assert call(mw, make_environ("/work", "POST", REMOTE_ADDR="10.0.0.4")).code == 202


def test_over_quota_under_defer_after_is_answered_inline_not_429(make_mw: Harness) -> None:
    slow = apps.SlowApp()
    mw = make_mw(Router({"/slow": slow}), defer_after=0.05, max_pending_per_client=1)
    env = {"REMOTE_ADDR": "10.0.0.5"}
    first = call(mw, make_environ("/slow", "GET", **env))
    assert first.code == 202  # handed over: takes the client's one slot
    # A fast request of the same client still runs inline (no slot needed to finish fast).
    assert call(mw, make_environ("/fast", "GET", **env)).body == b"hello world"
    # A slow one past defer_after cannot be handed over: it is answered inline.
    threading.Timer(0.3, slow.release.set).start()
    second = call(mw, make_environ("/slow", "GET", **env))
    assert second.code == 200 and second.body == b"slow done"
    assert mw.stats()["counters"]["inline_client_limit"] == 1
    assert result_of(mw, first).code == 200


def test_over_quota_under_defer_after_with_no_hold_to_spare_is_inline_not_429(
    make_mw: Harness,
) -> None:
    # max_holds=0: defer_after cannot wait, so every request is handed over at once; a
    # client over its quota still gets its answer, inline, as without the middleware.
    slow = apps.SlowApp()
    mw = make_mw(Router({"/slow": slow}), defer_after=0.05, max_pending_per_client=1, max_holds=0)
    env = {"REMOTE_ADDR": "10.0.0.6"}
    first = call(mw, make_environ("/slow", "GET", **env))
    assert first.code == 202
    second = call(mw, make_environ("/fast", "GET", **env))
    assert second.code == 200 and second.body == b"hello world"
    assert mw.stats()["counters"]["inline_client_limit"] == 1
    # No hold to spare either for the status poll: poll until it is done.
    slow.release.set()
    assert apps.wait_until(lambda: apps.status_request(mw, first.location).code == 200)
    # A marked route has no inline answer to give: there the quota is a 429.
    marked = make_mw(
        Router({"/slow": apps.SlowApp()}), routes=["GET /slow"], max_pending_per_client=1
    )
    assert call(marked, make_environ("/slow", "GET", **env)).code == 202
    assert call(marked, make_environ("/slow", "GET", **env)).code == 429


# -- 6. escaping: logs and URLs ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("POST /a", "POST /a"),
        ("a\r\nb", "a\\r\\nb"),
        ("nul\x00", "nul\\x00"),
        ("esc\x1b[31m", "esc\\x1b[31m"),
        ("del\x7f c1\x85", "del\\x7f c1\\x85"),
        ("sep\u2028", "sep\\u2028"),
        ("back\\slash", "back\\\\slash"),
        ("café ☃", "café ☃"),
    ],
)
def test_log_safe(text: str, expected: str) -> None:
    assert log_safe(text) == expected
    assert "\n" not in log_safe(text) and "\r" not in log_safe(text)


def test_request_text_never_forges_a_log_line(
    make_mw: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 8 finding 6: PATH_INFO "/r/x\r\n... wsgi_deferred INFO task FORGED: done".
    def noisy(environ: dict[str, object], start_response: apps.StartResponse) -> list[bytes]:
        errors = environ["wsgi.errors"]
        errors.write("app says: " + str(environ["PATH_INFO"]) + "\n")  # type: ignore[attr-defined]
        return apps.plain_app(environ, start_response)  # type: ignore[arg-type]

    mw = make_mw(noisy, routes=["/r/<path:rest>"])
    forged = "/r/x\r\n2026-01-01 wsgi_deferred INFO task FORGED: done\x00\x1b[2J"
    caplog.set_level(logging.INFO, logger="wsgi_deferred")
    prefer = {"Prefer": "respond-async"}  # a rule's <path> does not match a CR LF
    accepted = call(mw, make_environ("/r/x", "POST", headers=prefer, PATH_INFO=forged))
    assert result_of(mw, accepted).code == 200
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("wsgi_deferred")]
    assert any("FORGED" in line for line in lines), lines  # it is logged...
    for line in lines:  # ...but always inside one line, with no raw control character
        assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in line), repr(line)
    record = mw.get_store().get(accepted.task_id)
    assert record is not None and record.label is not None and "\r" not in record.label


@pytest.mark.parametrize(
    ("script_name", "prefix"),
    [
        ("//evil.example", "/evil.example"),
        ("///evil.example/", "/evil.example"),
        ("/\\evil.example", "/%5Cevil.example"),
        ("/app/", "/app"),
        ("/", ""),
        ("", ""),
        ("app", "/app"),
    ],
)
def test_script_name_never_makes_an_off_site_url(
    make_mw: Harness, script_name: str, prefix: str
) -> None:
    # Issue 8 finding 7: SCRIPT_NAME "//evil.example" made Location, Refresh and the meta
    # refresh point at //evil.example/status/...
    slow = apps.SlowApp()
    mw = make_mw(slow, routes=["/slow"])
    html = {"Accept": "text/html"}
    accepted = call(mw, make_environ("/slow", "POST", headers=html, SCRIPT_NAME=script_name))
    assert accepted.code == 202
    location = accepted.location
    assert location == f"{prefix}/status/{accepted.task_id}"
    assert not location.startswith("//")
    refresh = accepted.header("Refresh")
    assert refresh is not None and refresh.split("url=", 1)[1].strip() == location
    assert (
        f'url={location}"' in accepted.body.decode() or f"url={location}" in accepted.body.decode()
    )
    page = accepted.body.decode()
    assert "url=//" not in page and 'href="//' not in page and "url=/\\" not in page
    polled = call(mw, make_environ(location[len(prefix) :], "GET", SCRIPT_NAME=script_name))
    assert polled.code == 202 and polled.location == location
    assert polled.json()["status_url"] == location
    slow.release.set()


def test_a_slot_of_a_task_that_left_the_process_lapses(tmp_path: Path) -> None:
    # A task run elsewhere (another executor) never passes through this pool's release: its
    # slot is not renewed for ever, it lapses after one lease and is forgotten here.
    from wsgi_deferred.admission import Admission
    from wsgi_deferred.stores.sqlite import SQLiteStore

    store = SQLiteStore(str(tmp_path / "slots.db"))
    try:
        admission = Admission(1, 0.3, lambda: store, running_here=lambda task_id: False)
        assert admission.acquire("10.0.0.8", "t" * 22)
        assert not admission.acquire("10.0.0.8", "u" * 22)
        admission.renew()  # taken less than a lease ago: renewed
        assert admission.holds("t" * 22)
        time.sleep(0.4)
        admission.renew()  # gone from the pool for over a lease: forgotten, not renewed
        assert not admission.holds("t" * 22)
        assert apps.wait_until(lambda: store.client_slots(slot_client("10.0.0.8")) == 0)
        assert admission.acquire("10.0.0.8", "u" * 22)
    finally:
        store.close()


def test_a_store_without_slot_methods_counts_per_process() -> None:
    from wsgi_deferred.admission import Admission
    from wsgi_deferred.stores.base import Store
    from wsgi_deferred.stores.memory import MemoryStore

    class OldStore(MemoryStore):  # a third-party store written before the slot methods
        acquire_slot = Store.acquire_slot
        release_slot = Store.release_slot
        renew_slots = Store.renew_slots

    store = OldStore()
    admission = Admission(2, 30.0, lambda: store)
    assert admission.acquire("c", "a" * 22) and admission.acquire("c", "b" * 22)
    assert not admission.acquire("c", "c" * 22)
    assert admission.acquire("d", "e" * 22)
    admission.release("a" * 22)
    assert admission.acquire("c", "c" * 22)
    admission.renew()  # no error without the store's methods
