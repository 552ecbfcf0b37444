"""Many processes and many hosts: nothing lost, nothing 404, every byte identical (issue 3)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from load import run_load
from servers import Gunicorn

pytestmark = pytest.mark.e2e

JOBS_APP = "jobs_app:application"
E2E = str(Path(__file__).parent)


def test_gunicorn_w4_default_store_1000_jobs(tmp_path: Path) -> None:
    """No store argument at all: the default must just work under ``gunicorn -w 4``."""
    env = {"TMPDIR": str(tmp_path), "PYTHONPATH": E2E}
    with Gunicorn(JOBS_APP, workers=4, threads=4, env=env) as server:
        assert len(server.worker_pids()) == 4
        report = run_load(server.port, server.port, jobs=1000)
        log = server.log()
    assert report.statuses == {"submit 202": 1000, "result 200": 1000}, report.mismatches[:5]
    assert report.mismatches == []
    assert len(report.served_by) > 1, "jobs should have run in several workers"
    # The default store is a SQLite file of this deployment, inside $TMPDIR.
    assert list(tmp_path.glob("wsgi-deferred-*/*.db")), log


def test_two_hosts_share_one_redis_500_jobs(redis_url: str) -> None:
    """Submit on one gunicorn, fetch from another: any host serves any host's task."""
    url = redis_url.rsplit("/", 1)[0] + "/7"
    client = redis.Redis.from_url(url)
    client.flushdb()
    env = {"JOBS_STORE": url, "PYTHONPATH": E2E}
    try:
        with (
            Gunicorn(JOBS_APP, workers=2, threads=4, env=env) as host_a,
            Gunicorn(JOBS_APP, workers=2, threads=4, env=env) as host_b,
        ):
            forward = run_load(host_a.port, host_b.port, jobs=250)
            backward = run_load(host_b.port, host_a.port, jobs=250)
    finally:
        client.flushdb()
        client.close()
    for report in (forward, backward):
        assert report.statuses == {"submit 202": 250, "result 200": 250}, report.mismatches[:5]
        assert report.mismatches == []
