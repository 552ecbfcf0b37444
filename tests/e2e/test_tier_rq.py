"""The RQ executor under real servers (issue 10): a gunicorn web tier, a real
``wsgi-deferred worker`` running RQ workers, a private ``redis-server`` as the queue."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery_worker import TierWorker
from redis_server import RedisServerProcess
from servers import Gunicorn
from test_tier import (
    APP,
    check_jobs,
    kill_child_mid_task,
    record_of,
    runs_of,
    tier_env,
)

from wsgi_deferred.task import TaskState

pytestmark = pytest.mark.e2e


@pytest.fixture
def rq_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    queue = RedisServerProcess(tmp_path)
    queue.start()
    try:
        yield tier_env(tmp_path, f"rq+{queue.url}")
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


def test_kill_9_of_a_work_horse_reruns_a_retry_task(rq_env: dict[str, str], tmp_path: Path) -> None:
    location, first, result, _ = kill_child_mid_task(
        rq_env, tmp_path, "/retry/sleep?seconds=3", rq_worker
    )
    assert result.status == 200, result.body
    runs = runs_of(rq_env, location)
    assert len(runs) == 2 and runs[0] == first, runs
    assert result.body == f"slept 3.0 in {runs[1]}".encode()
    record = record_of(rq_env, location)
    assert (record.state, record.attempts) == (TaskState.DONE, 2)


def test_kill_9_of_a_work_horse_loses_a_task_off_the_retry_rules(
    rq_env: dict[str, str], tmp_path: Path
) -> None:
    location, first, result, _ = kill_child_mid_task(
        rq_env, tmp_path, "/sleep?seconds=3", rq_worker
    )
    assert result.status == 500 and result.json()["state"] == "lost", result.body  # type: ignore[index]
    assert runs_of(rq_env, location) == [first]
