"""The RQ executor under real servers (issue 10): a gunicorn web tier, a real
``wsgi-deferred worker`` running RQ workers, a private ``redis-server`` as the queue."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery_worker import TierWorker
from redis_server import RedisServerProcess
from servers import Gunicorn, fetch_result
from test_tier import APP, E2E, LEASE, check_jobs, record_of, running_pid, runs_of, submit

from wsgi_deferred.task import TaskState

pytestmark = pytest.mark.e2e


@pytest.fixture
def rq_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    queue = RedisServerProcess(tmp_path)
    queue.start()
    runs = tmp_path / "runs"
    runs.mkdir()
    try:
        yield {
            "TIER_STORE": f"sqlite://{tmp_path}/tasks.db",
            "TIER_BROKER": f"rq+{queue.url}",
            "TIER_LEASE": str(LEASE),
            "TIER_RUNS": str(runs),
            "PYTHONPATH": E2E,
        }
    finally:
        queue.stop()


def rq_worker(env: dict[str, str], tmp_path: Path, concurrency: int = 2) -> TierWorker:
    log = tmp_path / f"rq-{uuid.uuid4().hex[:6]}.log"
    return TierWorker(APP, env, log, concurrency, ready="Listening on")


def test_rq_runs_every_task_in_a_work_horse(rq_env: dict[str, str], tmp_path: Path) -> None:
    with (
        rq_worker(rq_env, tmp_path) as tier,
        Gunicorn(APP, workers=2, threads=4, env=rq_env) as web,
    ):
        check_jobs(web, [tier], 8)


def kill_horse(env: dict[str, str], tmp_path: Path, path: str):  # type: ignore[no-untyped-def]
    with rq_worker(env, tmp_path) as tier, Gunicorn(APP, workers=1, threads=4, env=env) as web:
        location = submit(web, path)
        first = running_pid(web, location)
        assert first in tier.children()
        os.kill(first, signal.SIGKILL)
        killed = time.monotonic()
        result = fetch_result(web.port, location, timeout=40)
    return location, first, result, time.monotonic() - killed


def test_kill_9_of_a_work_horse_reruns_a_retry_task(rq_env: dict[str, str], tmp_path: Path) -> None:
    location, first, result, _ = kill_horse(rq_env, tmp_path, "/retry/sleep?seconds=3")
    assert result.status == 200, result.body
    runs = runs_of(rq_env, location)
    assert len(runs) == 2 and runs[0] == first, runs
    assert result.body == f"slept 3.0 in {runs[1]}".encode()
    record = record_of(rq_env, location)
    assert (record.state, record.attempts) == (TaskState.DONE, 2)


def test_kill_9_of_a_work_horse_loses_a_task_off_the_retry_rules(
    rq_env: dict[str, str], tmp_path: Path
) -> None:
    location, first, result, _ = kill_horse(rq_env, tmp_path, "/sleep?seconds=3")
    assert result.status == 500 and result.json()["state"] == "lost", result.body  # type: ignore[index]
    assert runs_of(rq_env, location) == [first]
