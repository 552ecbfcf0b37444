"""gunicorn on Redis Cluster and on Sentinel: two hosts, any host serves any host's task, every
result hash-checked (issue 10). The cluster and sentinel are session fixtures
(tests/conftest.py), started once."""

from __future__ import annotations

from pathlib import Path

import pytest
from load import run_load
from redis_cluster import LocalCluster, LocalSentinel
from servers import Gunicorn

pytestmark = pytest.mark.e2e

JOBS_APP = "jobs_app:application"
E2E = str(Path(__file__).parent)


def _two_hosts(url: str, jobs: int) -> None:
    env = {"JOBS_STORE": url, "PYTHONPATH": E2E}
    with (
        Gunicorn(JOBS_APP, workers=2, threads=4, env=env) as host_a,
        Gunicorn(JOBS_APP, workers=2, threads=4, env=env) as host_b,
    ):
        forward = run_load(host_a.port, host_b.port, jobs=jobs)
        backward = run_load(host_b.port, host_a.port, jobs=jobs)
        logs = host_a.log()[-3000:] + host_b.log()[-3000:]
    for report in (forward, backward):
        assert report.statuses == {"submit 202": jobs, "result 200": jobs}, (
            report.mismatches[:5],
            logs,
        )
        assert report.mismatches == []


def test_two_gunicorn_hosts_on_redis_cluster_200_jobs(redis_cluster: LocalCluster) -> None:
    # Any node will do: name the last one (the fixture's URL names the first).
    _two_hosts(f"redis+cluster://127.0.0.1:{redis_cluster.ports[-1]}/0", 200)


def test_two_gunicorn_hosts_through_sentinel_100_jobs(redis_sentinel: LocalSentinel) -> None:
    _two_hosts(redis_sentinel.url, 100)
