"""The job suite under every common WSGI server: gunicorn sync, gthread and gevent workers,
uWSGI (two processes behind its HTTP router) and waitress.

For each: hash-checked jobs from concurrent clients, a keep-alive client, a ``kill -9`` of the
process running a task (``lost`` within the lease), and a graceful stop that drains it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from load import run_load
from servers import Response, running_pid, submit
from wsgi_servers import SERVERS, GunicornServer, server_for, wait_exited

pytestmark = pytest.mark.e2e

JOBS_APP = "jobs_app:application"
E2E = str(Path(__file__).parent)
#: Seconds; small so a killed task reads ``lost`` quickly.
LEASE = 2.0
#: Jobs per server in the load test (the issue's by-hand check used 150).
JOBS = 150


@pytest.fixture(params=sorted(SERVERS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def sqlite_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "JOBS_STORE": f"sqlite://{tmp_path}/tasks.db",
        "JOBS_LEASE": str(LEASE),
        "PYTHONPATH": E2E,
        "TMPDIR": str(tmp_path),
        **extra,
    }


def running(kind: str, env: dict[str, str]) -> Iterator[GunicornServer]:
    server = server_for(kind, JOBS_APP, env)
    server.start()
    try:
        yield server
    finally:
        server.stop()
    assert not server.escalated, f"{kind} did not stop on SIGTERM:\n{server.log()}"


def start_sleep(server: GunicornServer, seconds: float) -> str:
    return submit(server, f"/sleep?seconds={seconds}")


def wait_for_status(server: GunicornServer, location: str, status: int, timeout: float) -> Response:
    deadline = time.monotonic() + timeout
    while True:
        response = server.request("GET", location)
        if response.status == status or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def test_hash_checked_jobs_with_the_default_store(kind: str, tmp_path: Path) -> None:
    """No store argument: memory under waitress (one process), the deployment's SQLite file
    under the multi-process servers."""
    env = {"PYTHONPATH": E2E, "TMPDIR": str(tmp_path)}
    for server in running(kind, env):
        report = run_load(server.port, server.port, jobs=JOBS, clients=8)
        log = server.log()
    assert report.statuses == {"submit 202": JOBS, "result 200": JOBS}, (
        report.mismatches[:3],
        log,
    )
    assert report.mismatches == []


def test_a_keep_alive_client_keeps_its_connection(kind: str, tmp_path: Path) -> None:
    """Submit, long-poll, fetch and delete on one HTTP/1.1 connection (RFC 9112 §9.3)."""
    body = os.urandom(5000)
    for server in running(kind, sqlite_env(tmp_path)):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            conn.request("POST", "/job", body, {"Content-Type": "x/bytes"})
            accepted = conn.getresponse()
            accepted.read()
            # A server that closes is reconnected to by http.client (auto_open): then only
            # the sequence itself is checked.
            sock = conn.sock if server.keeps_alive else None
            assert accepted.status == 202
            assert sock is not None or not server.keeps_alive, "the server closed after a 202"
            location = accepted.getheader("Location")
            assert location is not None
            result = None
            for _ in range(20):  # bounded: each poll is held up to 10 s
                conn.request("GET", location, headers={"Prefer": "wait=10"})
                result = conn.getresponse()
                data = result.read()
                if server.keeps_alive:
                    assert conn.sock is sock, f"{kind} closed a keep-alive connection"
                if result.status != 202:
                    break
                time.sleep(0.05)
            assert result is not None and result.status == 200
            assert data == body[::-1]
            assert result.getheader("X-Digest") == hashlib.sha256(body).hexdigest()
            conn.request("DELETE", location)
            deleted = conn.getresponse()
            deleted.read()
            assert deleted.status == 204
            # (No connection check here: waitress closes after any response without a
            # Content-Length, a 204 included, whatever the app; waitress/task.py.)
        finally:
            conn.close()


def test_kill_9_of_the_running_process_reads_lost_within_the_lease(
    kind: str, tmp_path: Path
) -> None:
    for server in running(kind, sqlite_env(tmp_path)):
        location = start_sleep(server, 120)
        pid = running_pid(server, location)
        assert pid in server.worker_pids()
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        if not server.respawns:
            server.restart()  # one process: a new one on the same store
        response = wait_for_status(server, location, 500, timeout=LEASE * 3 + 10)
        elapsed = time.monotonic() - killed
        log = server.log()
    assert response.status == 500, (response.body, log)
    assert response.json()["state"] == "lost"  # type: ignore[index]
    # The lease bound: at most one lease (plus polling and restart slack) after the kill.
    assert elapsed <= LEASE + 5, f"lost after {elapsed:.1f}s"


def test_a_graceful_stop_drains_the_running_task(kind: str, tmp_path: Path) -> None:
    for server in running(kind, sqlite_env(tmp_path, JOBS_DRAIN="20")):
        location = start_sleep(server, 2)
        pid = running_pid(server, location)
        server.graceful_stop(pid)
        wait_exited(pid)
        if not server.respawns:
            server.restart()
        response = wait_for_status(server, location, 200, timeout=20)
        log = server.log()
    assert response.status == 200, (response.body, log)
    assert response.body == f"slept 2.0 in {pid}".encode()
