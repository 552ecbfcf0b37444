"""``wsgi-deferred tasks`` in a subprocess against the store of a real ``gunicorn -w 2``: it
lists the tasks of both workers, filters, cancels; a bad or unreachable store is one line and
exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_server import RedisServerProcess, free_port
from servers import ROOT, Gunicorn, fetch_result, http_request

pytestmark = pytest.mark.e2e

E2E = str(Path(__file__).parent)
#: Seconds one CLI run may take (a Redis that does not answer fails within its 2 s timeouts).
CLI_TIMEOUT = 30.0
#: Jobs submitted at most until both workers have run some.
MAX_SUBMITS = 40


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wsgi_deferred.cli", "tasks", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def listing(store: str, *args: str) -> list[dict[str, Any]]:
    result = cli("--store", store, "--json", *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path}/tasks.db"
        return
    server = RedisServerProcess(tmp_path)  # a private server: no other test's keys
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def test_tasks_lists_filters_and_cancels_across_workers(store_url: str) -> None:
    env = {"JOBS_STORE": store_url, "PYTHONPATH": E2E, "JOBS_DRAIN": "1"}
    with Gunicorn("jobs_app:application", workers=2, threads=4, env=env) as server:
        pids = {str(pid) for pid in server.worker_pids()}
        # Quick jobs until both workers ran some (each result names its worker's pid).
        done: dict[str, str] = {}  # id -> pid of the worker that ran it
        for _ in range(MAX_SUBMITS):
            accepted = http_request(server.port, "POST", "/job", b"abc")
            assert accepted.status == 202
            result = fetch_result(server.port, accepted.headers["location"])
            assert result.status == 200
            done[accepted.headers["location"].rsplit("/", 1)[1]] = result.headers["x-pid"]
            if set(done.values()) == pids and len(done) >= 2:
                break
        assert set(done.values()) == pids, "tasks of both gunicorn workers are listed"

        sleeping: dict[str, str] = {}  # id -> status URL
        for _ in range(3):
            accepted = http_request(server.port, "POST", "/sleep?seconds=60")
            assert accepted.status == 202
            location = accepted.headers["location"]
            sleeping[location.rsplit("/", 1)[1]] = location
        deadline = time.monotonic() + CLI_TIMEOUT
        while {r["id"] for r in listing(store_url, "--state", "running")} != set(sleeping):
            assert time.monotonic() < deadline, listing(store_url)
            time.sleep(0.1)

        everything = listing(store_url)
        assert {r["id"] for r in everything} == set(sleeping) | set(done)
        created = [r["created"] for r in everything]
        assert created == sorted(created, reverse=True)  # newest first
        assert {r["id"]: r["state"] for r in everything if r["id"] in done} == dict.fromkeys(
            done, "done"
        )
        assert all(r["label"] in ("POST /sleep", "POST /job") for r in everything)
        assert {r["id"] for r in listing(store_url, "--state", "running")} == set(sleeping)
        assert {r["id"] for r in listing(store_url, "--state", "done")} == set(done)
        assert len(listing(store_url, "--limit", "1")) == 1

        text = cli("--store", store_url, "--state", "done")
        assert text.returncode == 0, text.stderr
        lines = text.stdout.splitlines()
        assert len(lines) == len(done)
        for line in lines:
            task_id, state, age, progress, label = line.split(None, 4)
            assert task_id in done and state == "done" and progress == "-"
            assert age.endswith(("s", "m")) and label == "POST /job"

        # Cancel one running task: its worker sees it, its status URL is gone.
        victim = next(iter(sleeping))
        cancelled = cli("--store", store_url, "--cancel", victim)
        assert cancelled.returncode == 0, cancelled.stderr
        assert cancelled.stdout == f"task {victim}: cancelled (was running)\n"
        assert http_request(server.port, "GET", sleeping[victim]).status == 404
        assert {r["id"] for r in listing(store_url, "--state", "cancelled")} == {victim}
        again = cli("--store", store_url, "--cancel", victim)
        assert again.returncode == 1 and again.stderr.count("\n") == 1, again

        for task_id in sleeping:  # let gunicorn stop at once
            if task_id != victim:
                assert cli("--store", store_url, "--cancel", task_id).returncode == 0
        deadline = time.monotonic() + CLI_TIMEOUT
        while listing(store_url, "--state", "running"):  # each app saw cancelled() and ended
            assert time.monotonic() < deadline
            time.sleep(0.1)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:{port}/0",  # nothing listens there
        "sqlite:///nonexistent-dir/none.db",
        "bogus://x",
        "memory://",
        "redis://127.0.0.1:notaport/0",
    ],
)
def test_bad_or_unreachable_store_is_one_line_and_status_2(url: str) -> None:
    result = cli("--store", url.format(port=free_port()))
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("wsgi-deferred tasks: ")
    assert "Traceback" not in result.stderr
