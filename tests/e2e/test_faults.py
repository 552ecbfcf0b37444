"""Faults under real gunicorn: a killed worker, a dead Redis, a SIGTERM mid-task (issue 3)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from load import run_load
from redis_server import RedisServerProcess
from servers import Gunicorn, running_pid, submit

pytestmark = pytest.mark.e2e

JOBS_APP = "jobs_app:application"
E2E = str(Path(__file__).parent)
LEASE = 2.0  # seconds; small so the tests see `lost` quickly


def start_sleep(server: Gunicorn, seconds: float) -> str:
    return submit(server, f"/sleep?seconds={seconds}")


def wait_for_status(server: Gunicorn, location: str, status: int, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        response = server.request("GET", location)
        if response.status == status or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def sqlite_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "JOBS_STORE": f"sqlite://{tmp_path}/tasks.db",
        "JOBS_LEASE": str(LEASE),
        "PYTHONPATH": E2E,
        **extra,
    }


def test_kill_9_of_the_running_worker_reads_lost_within_the_lease(tmp_path: Path) -> None:
    with Gunicorn(JOBS_APP, workers=2, threads=4, env=sqlite_env(tmp_path)) as server:
        location = start_sleep(server, 120)
        pid = running_pid(server, location)
        assert pid in server.worker_pids()
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        response = wait_for_status(server, location, 500, timeout=LEASE * 3 + 5)
        elapsed = time.monotonic() - killed
    assert response.status == 500, response.body
    assert response.json()["state"] == "lost"  # type: ignore[index]
    # The lease bound: at most one lease (plus polling slack) after the last heartbeat.
    assert elapsed <= LEASE + 3, f"lost after {elapsed:.1f}s"


def test_sigterm_drains_a_task_that_fits_the_drain_timeout(tmp_path: Path) -> None:
    env = sqlite_env(tmp_path, JOBS_DRAIN="20")
    with Gunicorn(JOBS_APP, workers=2, threads=4, env=env) as server:
        location = start_sleep(server, 2)
        pid = running_pid(server, location)
        os.kill(pid, signal.SIGTERM)  # graceful worker exit; the master starts a new one
        response = wait_for_status(server, location, 200, timeout=20)
    assert response.status == 200, response.body
    assert response.body == f"slept 2.0 in {pid}".encode()


def test_sigterm_marks_what_it_cannot_finish_lost_at_once(tmp_path: Path) -> None:
    env = sqlite_env(tmp_path, JOBS_DRAIN="0.5", JOBS_LEASE="60")  # lease far away on purpose
    with Gunicorn(JOBS_APP, workers=2, threads=4, env=env) as server:
        location = start_sleep(server, 120)
        pid = running_pid(server, location)
        os.kill(pid, signal.SIGTERM)
        stopped = time.monotonic()
        response = wait_for_status(server, location, 500, timeout=15)
        elapsed = time.monotonic() - stopped
    assert response.status == 500 and response.json()["state"] == "lost"  # type: ignore[index]
    assert elapsed < 15, "must not wait for the 60 s lease"


def test_redis_down_answers_503_then_recovers(tmp_path: Path) -> None:
    redis_server = RedisServerProcess(tmp_path)
    redis_server.start()
    env = {"JOBS_STORE": f"redis://127.0.0.1:{redis_server.port}/0", "PYTHONPATH": E2E}
    try:
        with Gunicorn(JOBS_APP, workers=2, threads=4, env=env) as server:
            before = run_load(server.port, server.port, jobs=40, clients=4)
            assert before.statuses == {"submit 202": 40, "result 200": 40}
            location = start_sleep(server, 0.1)

            redis_server.stop()
            started = time.monotonic()
            submit = server.request("POST", "/job", b"x", timeout=10)
            poll = server.request("GET", location, timeout=10)
            hello = server.request("GET", "/hello", timeout=10)
            assert time.monotonic() - started < 15, "an outage must not hang requests"
            assert submit.status == 503 and "retry-after" in submit.headers, submit.body
            assert poll.status == 503 and "retry-after" in poll.headers, poll.body
            assert (hello.status, hello.body) == (200, b"hello"), "pass-through is unaffected"

            redis_server.start()
            time.sleep(0.5)
            after = run_load(server.port, server.port, jobs=40, clients=4)
    finally:
        redis_server.stop()
    assert after.statuses == {"submit 202": 40, "result 200": 40}, after.mismatches[:3]
    assert after.mismatches == []
