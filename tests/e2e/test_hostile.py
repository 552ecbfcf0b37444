"""Hostile and broken requests against a real ``gunicorn -w 2 --threads 4`` (issue 8's probe):
every finding it reproduced, and the cases that held, each answered cleanly, with no traceback
in the log, no file left in ``$TMPDIR`` and nothing readable by another local user.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import Gunicorn, Response, fetch_result, http_request

pytestmark = pytest.mark.e2e

ALICE = {"Cookie": "session=alice"}
BOB = {"Cookie": "session=bob"}
MAX_BODY = 2_000_000
#: Seconds a raw-socket exchange may take before the test fails.
RAW_TIMEOUT = 15.0


@pytest.fixture(scope="module")
def server_tmp() -> Iterator[Path]:
    # Like /tmp: anyone may enter (0o1777), so the store's own modes are what protect it.
    directory = Path(tempfile.mkdtemp(prefix="wsgi-deferred-hostile-", dir="/tmp"))
    directory.chmod(0o1777)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def server(server_tmp: Path) -> Iterator[Gunicorn]:
    env = {"TMPDIR": str(server_tmp), "HOSTILE_MAX_BODY": str(MAX_BODY)}
    gunicorn = Gunicorn("hostile_app:application", workers=2, threads=4, env=env)
    gunicorn.env = {**env, "PYTHONPATH": str(Path(__file__).parent)}
    with gunicorn:
        yield gunicorn
        # Even after a SIGTERM: no spooled or partial body outlives the server.
        gunicorn.stop()
        assert _spool_files(server_tmp) == []
        assert "Traceback" not in gunicorn.log(), gunicorn.log()


def _spool_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != f"wsgi-deferred-{os.getuid()}")


def _database(server_tmp: Path) -> Path:
    [db] = (server_tmp / f"wsgi-deferred-{os.getuid()}").glob("*.db")
    return db


def _task_count(server_tmp: Path) -> int:
    with sqlite3.connect(f"file:{_database(server_tmp)}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0])


def raw(port: int, data: bytes, *, half_close: bool = False) -> bytes:
    """Send *data* as is on a new connection; return everything the server answers."""
    chunks: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=RAW_TIMEOUT) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered (413) and closed before we finished: read it
        while True:
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


def post(server: Gunicorn, path: str, headers: dict[str, str], body: bytes = b"") -> Response:
    return server.request("POST", path, body=body, headers=headers)


# -- the findings ------------------------------------------------------------------------------


def test_too_large_chunked_body_is_413_and_leaves_no_file(
    server: Gunicorn, server_tmp: Path
) -> None:
    chunk = b"x" * 100_000
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(25)) + b"0\r\n\r\n"
    head = (
        b"POST /job HTTP/1.1\r\nHost: t\r\nCookie: session=alice\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    for _ in range(3):
        assert status_of(raw(server.port, head + body)) == 413
    assert _spool_files(server_tmp) == []


def test_truncated_upload_is_400_and_runs_nothing(server: Gunicorn, server_tmp: Path) -> None:
    post(server, "/job", ALICE, b"warm")  # the store exists from here on
    before = _task_count(server_tmp)
    head = b"POST /job HTTP/1.1\r\nHost: t\r\nCookie: session=alice\r\nContent-Length: 10\r\n\r\n"
    answer = raw(server.port, head + b"12345", half_close=True)
    assert status_of(answer) == 400
    assert b"ended after 5 of 10 bytes" in answer
    assert _task_count(server_tmp) == before


def test_a_complete_body_is_replayed_with_the_length_the_client_sent(server: Gunicorn) -> None:
    accepted = post(server, "/job", ALICE, b"0123456789")
    assert accepted.status == 202
    done = fetch_result(server.port, accepted.headers["location"], headers=ALICE)
    assert done.status == 200
    assert (done.headers["x-declared"], done.headers["x-length"]) == ("10", "10")


def test_default_store_is_private_to_its_user(server: Gunicorn, server_tmp: Path) -> None:
    post(server, "/job", ALICE, b"make sure it exists")
    directory = server_tmp / f"wsgi-deferred-{os.getuid()}"
    info = os.lstat(directory)
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
    db = _database(server_tmp)
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600, path
    if os.geteuid() != 0:
        pytest.skip("reading as another user needs root")
    control = Path(tempfile.mkstemp(dir="/tmp")[1])
    try:
        control.chmod(0o644)
        assert _as_nobody(["cat", str(control)]).returncode == 0, "the probe itself works"
    finally:
        control.unlink()
    for command in (["cat", str(db)], ["cat", f"{db}-wal"], ["ls", str(directory)]):
        result = _as_nobody(command)
        assert result.returncode != 0 and b"Permission denied" in result.stderr, command


def _as_nobody(command: list[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["runuser", "-u", "nobody", "--", *command], capture_output=True, timeout=30
    )


@pytest.mark.parametrize("cookie", [None, "", "session=", "other=1", 'session="broken'])
def test_anonymous_requests_are_answered_inline(server: Gunicorn, cookie: str | None) -> None:
    headers = {} if cookie is None else {"Cookie": cookie}
    answer = post(server, "/job", headers, b"anon")
    assert answer.status == 200 and answer.body == b"job done"
    assert "location" not in answer.headers


def test_binding_holds_across_cookies(server: Gunicorn) -> None:
    accepted = post(server, "/sleep?seconds=0.2", ALICE)
    assert accepted.status == 202
    location = accepted.headers["location"]
    for headers in (BOB, {}, {"Cookie": ""}, {"Cookie": "session="}):
        assert http_request(server.port, "GET", location, headers=headers).status == 404
        assert http_request(server.port, "DELETE", location, headers=headers).status == 404
    assert fetch_result(server.port, location, headers=ALICE).status == 200


def test_per_client_limit_holds_across_workers(server: Gunicorn) -> None:
    # max_pending=30 per process, so the default fair share is 3 per client, counted in the
    # shared store: -w 2 must not let 2 x 3 in (issue 8, finding 5).
    carol = {"Cookie": "session=carol"}
    answers = [post(server, "/sleep?seconds=20", carol) for _ in range(8)]
    accepted = [a for a in answers if a.status == 202]
    assert len(accepted) == 3, [a.status for a in answers]
    assert {a.status for a in answers} == {202, 429}
    assert all(a.headers.get("retry-after") for a in answers if a.status == 429)
    dave = {"Cookie": "session=dave"}
    other = post(server, "/sleep?seconds=0.1", dave)
    assert other.status == 202  # someone else is not locked out
    for answer in accepted:  # a cancel gives the slot back
        location = answer.headers["location"]
        assert http_request(server.port, "DELETE", location, headers=carol).status == 204
    deadline = time.monotonic() + 10
    while (again := post(server, "/sleep?seconds=0.1", carol)).status == 429:
        assert time.monotonic() < deadline, "slots never came back after the cancels"
        time.sleep(0.1)
    assert again.status == 202
    assert fetch_result(server.port, again.headers["location"], headers=carol).status == 200
    assert fetch_result(server.port, other.headers["location"], headers=dave).status == 200


def test_request_text_cannot_forge_a_log_line(server: Gunicorn) -> None:
    path = "/x%0d%0a2026-01-01%2000:00:00,000%20wsgi_deferred%20INFO%20task%20FORGED:%20done%00/job"
    headers = {**ALICE, "Prefer": "respond-async"}
    accepted = post(server, path, headers, b"")
    assert accepted.status == 202
    assert fetch_result(server.port, accepted.headers["location"], headers=ALICE).status == 200
    log = Path(str(server.log_path)).read_bytes()
    assert b"FORGED" in log  # logged, but escaped within our own line
    assert b"\x00" not in log
    for line in log.splitlines():
        assert not line.startswith(b"2026-01-01 00:00:00,000 wsgi_deferred"), line


def test_script_name_header_cannot_redirect_off_site(server: Gunicorn) -> None:
    # gunicorn takes SCRIPT_NAME from a header sent from forwarded_allow_ips (loopback).
    headers = {**ALICE, "SCRIPT_NAME": "//evil.example", "Accept": "text/html"}
    accepted = server.request("POST", "//evil.example/job", body=b"", headers=headers)
    assert accepted.status == 202
    location = accepted.headers["location"]
    assert location.startswith("/evil.example/status/"), location
    assert accepted.headers["refresh"].endswith(f"url={location}")
    page = accepted.body.decode()
    assert f"url={location}" in page and "url=//" not in page


# -- the cases that held -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/status/short", "/status/" + "a" * 21 + "!", "/status/" + "a" * 23, "/status/../etc"],
)
def test_paths_not_in_the_id_format_reach_the_app(server: Gunicorn, path: str) -> None:
    answer = server.request("GET", path, headers=ALICE)
    assert answer.status == 200 and answer.body == b"hello"


def test_unknown_ids_and_methods(server: Gunicorn) -> None:
    unknown = "/status/" + "A" * 22
    assert server.request("GET", unknown, headers=ALICE).status == 404
    assert server.request("DELETE", unknown, headers=ALICE).status == 404
    for method in ("PUT", "PATCH", "OPTIONS", "POST", "BREW"):
        answer = server.request(method, unknown, headers=ALICE)
        assert answer.status == 405, method
        assert answer.headers["allow"] == "GET, HEAD, DELETE"


@pytest.mark.parametrize(
    "prefer", ["wait=abc", "respond-async;;;", "wait=-5", "wait=1e309", "wait=" + "9" * 400, ","]
)
def test_prefer_garbage(server: Gunicorn, prefer: str) -> None:
    answer = post(server, "/job", {**ALICE, "Prefer": prefer}, b"p")
    assert answer.status in (200, 202), (prefer, answer.status, answer.body)


@pytest.mark.parametrize("length", ["abc", "-1", "1e3", "0x10", "10, 10"])
def test_content_length_garbage_is_400(server: Gunicorn, length: str) -> None:
    head = f"POST /job HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    assert status_of(raw(server.port, head.encode() + b"0123456789")) == 400


def test_oversized_header_and_request_line(server: Gunicorn) -> None:
    big_header = b"X-Big: " + b"h" * 10_000 + b"\r\n"
    answer = raw(server.port, b"GET /hello HTTP/1.1\r\nHost: t\r\n" + big_header + b"\r\n")
    assert status_of(answer) in (400, 431)
    long_line = b"GET /" + b"u" * 10_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n"
    # 414 from current gunicorn (27 here); 24.1, the floor, answers 400: both refuse it.
    assert status_of(raw(server.port, long_line)) in (400, 414)


def test_progress_message_is_escaped_on_the_waiting_page(server: Gunicorn) -> None:
    accepted = post(server, "/sleep?seconds=1", ALICE)
    location = accepted.headers["location"]
    deadline = time.monotonic() + 10
    while True:
        page = http_request(server.port, "GET", location, headers={**ALICE, "Accept": "text/html"})
        if b"alert(1)" in page.body or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert b"&lt;script&gt;alert(1)&lt;/script&gt;" in page.body
    assert b"<script>alert(1)" not in page.body
    assert fetch_result(server.port, location, headers=ALICE).status == 200
