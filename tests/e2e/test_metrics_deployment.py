"""Metrics describe the deployment, not one worker (issue 11): under ``gunicorn -w 4`` every
scrape, on a new connection and so on any worker, reports the same totals; a worker killed
with SIGKILL and respawned makes no counter go back, and its live gauges leave the sum."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from servers import Gunicorn, fetch_result, http_request

pytestmark = pytest.mark.e2e

E2E = str(Path(__file__).parent)
JOBS = 40
SCRAPES = 24
#: Seconds to wait for a respawn, a gauge or a task to reach the expected state.
PATIENCE = 30.0
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$", re.M)

DEFERRED = 'wsgi_deferred_requests_total{event="deferred"}'
DONE = 'wsgi_deferred_tasks_finished_total{state="done"}'
RUNS = 'wsgi_deferred_run_seconds_count{rule="POST /job"}'
RUNNING = 'wsgi_deferred_tasks{state="running"}'


class ServeCommand(Gunicorn):
    """``wsgi-deferred serve`` (which sets up prometheus_client's multiprocess mode itself)."""

    def start(self) -> ServeCommand:
        command = [
            sys.executable, "-m", "wsgi_deferred.cli", "serve", self.target,
            "--bind", f"127.0.0.1:{self.port}",
            "--workers", str(self.workers),
            "--threads", str(self.threads),
            *self.extra_args,
        ]  # fmt: skip
        env = {**os.environ, **self.env}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        log_dir = Path(os.environ.get("WSGI_DEFERRED_TEST_LOGS", "/tmp"))
        self.log_path = log_dir / f"wsgi-deferred-serve-{self.port}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, cwd=E2E, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.wait_ready()
        return self


def scrape(port: int) -> dict[str, float]:
    response = http_request(port, "GET", "/_metrics", headers={"Connection": "close"})
    assert response.status == 200, response.body[:500]
    return {name: float(value) for name, value in _SAMPLE.findall(response.body.decode())}


def run_jobs(port: int, count: int) -> set[str]:
    pids = set()
    for n in range(count):
        body = f"job {n}".encode()
        accepted = http_request(port, "POST", "/job", body, {"Connection": "close"})
        assert accepted.status == 202, accepted.body
        result = fetch_result(port, accepted.headers["location"])
        assert result.status == 200 and result.body == body[::-1]
        pids.add(result.headers["x-pid"])
    return pids


def all_scrapes(port: int, key: str) -> list[float]:
    return [scrape(port).get(key, -1.0) for _ in range(SCRAPES)]


def wait_respawn(server: Gunicorn, dead: int, workers: int) -> None:
    deadline = time.monotonic() + PATIENCE
    while True:
        pids = server.worker_pids()
        if dead not in pids and len(pids) == workers:
            return
        assert time.monotonic() < deadline, f"no respawn of {dead}: {pids}\n{server.log()}"
        time.sleep(0.1)


def wait_for(server: Gunicorn, key: str, value: float) -> None:
    deadline = time.monotonic() + PATIENCE
    while (seen := all_scrapes(server.port, key)) != [value] * SCRAPES:
        assert time.monotonic() < deadline, f"{key}: {seen}"
        time.sleep(0.2)


def runner_of(server: Gunicorn, location: str) -> int:
    """The pid of the worker running a /sleep task (it reports "pid=<pid>" as progress)."""
    deadline = time.monotonic() + PATIENCE
    while True:
        status = http_request(server.port, "GET", location, headers={"Accept": "application/json"})
        message = str(status.json().get("message") or "")  # type: ignore[union-attr]
        if message.startswith("pid="):
            return int(message.removeprefix("pid="))
        assert time.monotonic() < deadline, status.body
        time.sleep(0.05)


def check_deployment(server: Gunicorn) -> None:
    workers = server.workers
    pids = run_jobs(server.port, JOBS)
    assert len(pids) > 1, "jobs should have run in several workers"
    for key in (DEFERRED, DONE, RUNS):
        assert all_scrapes(server.port, key) == [JOBS] * SCRAPES, key

    # Four long tasks run; the running gauge is their sum over the live workers.
    sleepers = []
    for _ in range(4):
        accepted = http_request(server.port, "POST", "/sleep?seconds=120")
        assert accepted.status == 202
        sleepers.append(accepted.headers["location"])
    wait_for(server, RUNNING, 4)
    runs_in = [runner_of(server, location) for location in sleepers]  # worker pids
    # Prefer a worker that also ran some of the jobs: its counts must outlive it.
    victim = next((pid for pid in runs_in if str(pid) in pids), runs_in[0])
    assert victim in server.worker_pids()
    survivors = [loc for loc, pid in zip(sleepers, runs_in, strict=True) if pid != victim]

    os.kill(victim, signal.SIGKILL)  # no goodbye: counters must survive, gauges must not
    wait_respawn(server, victim, workers)
    before = scrape(server.port)
    assert before[DEFERRED] == JOBS + 4 and before[DONE] == JOBS
    # gunicorn calls child_exit when it reaps the dead worker, before it spawns the new one:
    # the dead worker's live gauge is gone from every scrape by now.
    assert all_scrapes(server.port, RUNNING) == [float(len(survivors))] * SCRAPES

    more = run_jobs(server.port, 10)
    assert more
    for key in (DEFERRED, DONE, RUNS):
        expected = JOBS + 10 + (4 if key == DEFERRED else 0)
        seen = all_scrapes(server.port, key)
        assert seen == [expected] * SCRAPES, (key, seen)
    for location in survivors:
        assert http_request(server.port, "DELETE", location).status in (202, 204)
    wait_for(server, RUNNING, 0)


@pytest.mark.parametrize("preload", [False, True], ids=["import-in-workers", "preload"])
def test_serve_w4_scrapes_agree_and_survive_a_killed_worker(tmp_path: Path, preload: bool) -> None:
    env = {"TMPDIR": str(tmp_path), "PYTHONPATH": E2E}
    args = ["--route", "POST /job", "--route", "POST /sleep", "--metrics-path", "/_metrics",
            "--drain-timeout", "1", "--lease-timeout", "60"]  # fmt: skip
    if preload:  # the master imports the app (and prometheus_client) before forking
        args.append("--preload")
    with ServeCommand("jobs_app:app", workers=4, threads=4, env=env, extra_args=args) as server:
        check_deployment(server)
    leftovers = list(tmp_path.glob("wsgi-deferred-prometheus-*"))
    assert leftovers == [], "serve removes the multiprocess directory it made"


PLAIN_APP = """
import os
from jobs_app import app
from wsgi_deferred import DeferredMiddleware
application = DeferredMiddleware(
    app, routes=["POST /job", "POST /sleep"], store=os.environ["JOBS_STORE"],
    metrics_path="/_metrics", drain_timeout=1, lease_timeout=60,
)
"""
# The two lines docs/deploying.md gives for plain gunicorn (besides the variable).
GUNICORN_CONF = """
from prometheus_client import multiprocess
def child_exit(server, worker): multiprocess.mark_process_dead(worker.pid)
"""


def test_plain_gunicorn_w4_with_the_documented_setup(tmp_path: Path) -> None:
    (tmp_path / "plain_app.py").write_text(PLAIN_APP)
    (tmp_path / "gunicorn_conf.py").write_text(GUNICORN_CONF)
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    env = {
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{E2E}",
        "JOBS_STORE": f"sqlite://{tmp_path}/tasks.db",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    conf = ["--config", str(tmp_path / "gunicorn_conf.py")]
    with Gunicorn(
        "plain_app:application", workers=4, threads=4, env=env, extra_args=conf
    ) as server:
        check_deployment(server)
