"""Section ``tier``: the execution tier (issue 10), against baselines measured in the same run.

* **CPU-heavy tasks.** ``GET /hello`` p50/p99 (200 sequential requests on one keep-alive
  connection, after 50 of warm-up) while 0, 1, 2 and 4 pure-Python tasks run, with the thread
  executor (the tasks share the web process's GIL) and with the Celery tier (the tasks run in
  a ``wsgi-deferred worker -c 2``), interleaved round by round. Target: with the tier, p99
  within 2 x idle.
* **Round trip.** ``benchmarks/load.py``'s poll client (8 clients, 10 ms poll interval,
  ``Retry-After`` not honoured) against the Celery tier and against the hand-written Celery
  pattern of ``benchmarks/celery_app.py`` (``.delay()`` / ``AsyncResult.ready()``), both with
  a prefork ``-c 2`` worker and Redis as broker: jobs/s and p50.
* **Recovery after kill -9.** A task on a ``retry`` rule runs; its runner is SIGKILLed (a
  gunicorn worker of ``-w 2`` with the thread executor; a Celery pool child with the tier; an
  RQ work horse);
  the time until the status URL reports it running in another process. The lease
  (``TIER_LEASE``, 3 s here) bounds it from below: a dead runner is only noticed once its
  lease lapsed.

Redis (127.0.0.1:6379) databases 12 (the baseline's broker and results), 13 (the tier's
broker), 14 (the stores) and 15 (RQ's queue) must be empty; they are flushed afterwards.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .common import (
    Gunicorn,
    Section,
    Target,
    median,
    percentile,
    process_group,
    python_env,
    redis_available,
    redis_client,
    start_gunicorn,
)
from .load import run_load

BASELINE_DB, BROKER_DB, STORE_DB, RQ_DB = 12, 13, 14, 15
LEASE = 3.0  # seconds
TASK_COUNTS = (0, 1, 2, 4)
HELLO_REQUESTS, HELLO_WARMUP = 200, 50
RECOVERY_TIMEOUT = 30.0  # seconds one recovery may take before it counts as failed


def _url(db: int) -> str:
    return f"redis://127.0.0.1:6379/{db}"


def _env() -> dict[str, str]:
    return {
        "TIER_STORE": _url(STORE_DB),
        "TIER_BROKER": _url(BROKER_DB),
        "TIER_RQ": _url(RQ_DB),
        "TIER_LEASE": str(LEASE),
    }


@contextlib.contextmanager
def tier_worker(log_dir: Path, name: str, prefix: str, engine: str = "tier") -> Iterator[int]:
    env = {**python_env(), **_env(), "TIER_PREFIX": prefix}
    ready, count = ("ready.", 1) if engine == "tier" else ("Listening on", 2)
    command = [
        sys.executable, "-m", "wsgi_deferred.cli", "worker", f"benchmarks.tier_app:{engine}",
        "--concurrency", "2", "--log-level", "info",
    ]  # fmt: skip
    log = log_dir / f"{name}.log"
    with process_group(command, env, log) as pid:
        deadline = time.monotonic() + 60
        while log.read_text(errors="replace").count(ready) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the tier worker did not start; see {log}")
            time.sleep(0.2)
        yield pid


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _request(conn: http.client.HTTPConnection, method: str, path: str) -> tuple[int, bytes, str]:
    conn.request(method, path)
    response = conn.getresponse()
    return response.status, response.read(), response.getheader("Location") or ""


def _once(port: int, method: str, path: str) -> tuple[int, bytes, str]:
    """One request on its own connection (gunicorn closes idle keep-alives after 2 s)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        return _request(conn, method, path)
    finally:
        conn.close()


def hello_latencies(port: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for _ in range(HELLO_WARMUP):
            _request(conn, "GET", "/hello")
        latencies = []
        for _ in range(HELLO_REQUESTS):
            began = time.perf_counter()
            status, _, _ = _request(conn, "GET", "/hello")
            latencies.append(time.perf_counter() - began)
            if status != 200:
                raise RuntimeError(f"GET /hello answered {status}")
        return latencies
    finally:
        conn.close()


def with_cpu_tasks(server: Gunicorn, count: int) -> list[float]:
    """/hello latencies while *count* CPU-bound tasks run (cancelled afterwards)."""
    locations = []
    try:
        for _ in range(count):
            status, _, location = _once(server.port, "POST", "/cpu?seconds=30")
            if status != 202:
                raise RuntimeError(f"POST /cpu answered {status}")
            locations.append(location)
        # Until they all run (the tier's -c 2 runs 2 at most; the others wait at the broker).
        want = min(count, 2) if server.target.endswith(":tier") else count
        deadline = time.monotonic() + 20
        while locations and time.monotonic() < deadline:
            states = [_once(server.port, "GET", loc)[1] for loc in locations]
            if sum(b'"running"' in s for s in states) >= want:
                break
            time.sleep(0.05)
        time.sleep(0.3)
        return hello_latencies(server.port)
    finally:
        for location in locations:
            _once(server.port, "DELETE", location)
        time.sleep(1.5)  # cancelled() is read from the store at most once a second


def recovery_seconds(server: Gunicorn, kill_pool: list[int] | None) -> float:
    """Seconds from the SIGKILL of the task's runner to its run in another process."""
    status, _, location = _once(server.port, "POST", "/retry/sleep?seconds=60")
    if status != 202:
        raise RuntimeError(f"POST /retry/sleep answered {status}")
    first = _running_pid(server, location, None)
    if kill_pool is not None and first not in kill_pool:
        raise RuntimeError(f"pid {first} is not a pool child")
    os.kill(first, signal.SIGKILL)
    killed = time.monotonic()
    _running_pid(server, location, first)
    elapsed = time.monotonic() - killed
    _once(server.port, "DELETE", location)
    return elapsed


def _running_pid(server: Gunicorn, location: str, other_than: int | None) -> int:
    import json

    deadline = time.monotonic() + RECOVERY_TIMEOUT
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            status, body, _ = _request(conn, "GET", location)
        except OSError:
            time.sleep(0.02)
            continue
        finally:
            conn.close()
        if status == 202:
            message = json.loads(body).get("message") or ""
            if message.startswith("pid=") and int(message[4:]) != other_than:
                return int(message[4:])
        elif status != 202:
            raise RuntimeError(f"{location} answered {status}: {body[:200]!r}")
        time.sleep(0.02)
    raise RuntimeError(f"{location} did not run again within {RECOVERY_TIMEOUT}s")


def run(quick: bool, log_dir: Path, tmp: Path) -> Section:
    section = Section("tier", "6. The execution tier: CPU-heavy tasks, round trip, recovery")
    if not redis_available():
        section.add("Redis is not running on 127.0.0.1:6379: section skipped.", "")
        return section
    for db in (BASELINE_DB, BROKER_DB, STORE_DB, RQ_DB):
        if redis_client(db).dbsize():
            raise RuntimeError(f"Redis db {db} is not empty; the benchmark needs it to itself")
    rounds = 1 if quick else 3
    try:
        cpu = cpu_rounds(log_dir, rounds)
        trip = round_trip(log_dir, rounds, quick)
        recovery = recovery_rounds(log_dir, rounds)
    finally:
        for db in (BASELINE_DB, BROKER_DB, STORE_DB, RQ_DB):
            redis_client(db).flushdb()  # checked empty above: all ours
    report(section, cpu, trip, recovery, rounds)
    return section


def cpu_rounds(log_dir: Path, rounds: int) -> dict[tuple[str, int], list[list[float]]]:
    found: dict[tuple[str, int], list[list[float]]] = {}
    env = {**_env(), "TIER_PREFIX": "tier-cpu:"}
    with contextlib.ExitStack() as stack:
        stack.enter_context(tier_worker(log_dir, "tier-cpu-worker", env["TIER_PREFIX"]))
        servers = {}
        for name in ("threads", "tier"):
            server = start_gunicorn(f"benchmarks.tier_app:{name}", 1, 8, env, log_dir)
            stack.callback(server.stop)
            servers[name] = server
        for _ in range(rounds):
            for count in TASK_COUNTS:
                for name, server in servers.items():  # interleaved: drift spreads evenly
                    found.setdefault((name, count), []).append(with_cpu_tasks(server, count))
    return found


def round_trip(log_dir: Path, rounds: int, quick: bool) -> dict[str, list]:  # type: ignore[type-arg]
    from .roundtrip import celery_command

    max_jobs, seconds = (200, 1.0) if quick else (400, 3.0)
    found: dict[str, list] = {"tier": [], "celery": []}  # type: ignore[type-arg]
    base_env = {"BENCH_CELERY_DB": str(BASELINE_DB)}
    with contextlib.ExitStack() as stack:
        stack.enter_context(tier_worker(log_dir, "tier-rt-worker", "tier-rt:"))
        stack.enter_context(
            process_group(
                celery_command("prefork"), {**python_env(), **base_env}, log_dir / "base.log"
            )
        )
        env = {**_env(), "TIER_PREFIX": "tier-rt:"}
        tier = start_gunicorn("benchmarks.tier_app:tier", 1, 8, env, log_dir)
        stack.callback(tier.stop)
        base = start_gunicorn("benchmarks.celery_app:app", 1, 8, base_env, log_dir)
        stack.callback(base.stop)
        time.sleep(2.0)
        for server in (tier, base):  # warm-up
            run_load(server.port, "poll", clients=8, max_jobs=50, max_seconds=5)
        for _ in range(rounds):
            found["tier"].append(run_load(tier.port, "poll", clients=8, max_jobs=max_jobs,
                                          max_seconds=seconds))  # fmt: skip
            found["celery"].append(run_load(base.port, "poll", clients=8, max_jobs=max_jobs,
                                            max_seconds=seconds))  # fmt: skip
    return found


def recovery_rounds(log_dir: Path, rounds: int) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {
        "threads (gunicorn -w 2)": [],
        "Celery tier (-c 2, pool child killed)": [],
        "RQ (2 workers, work horse killed)": [],
    }
    env = {**_env(), "TIER_PREFIX": "tier-rec:"}
    with contextlib.ExitStack() as stack:
        worker = stack.enter_context(tier_worker(log_dir, "tier-rec-worker", env["TIER_PREFIX"]))
        threads = start_gunicorn("benchmarks.tier_app:threads", 2, 4, env, log_dir)
        stack.callback(threads.stop)
        tier = start_gunicorn("benchmarks.tier_app:tier", 1, 4, env, log_dir)
        stack.callback(tier.stop)
        stack.enter_context(tier_worker(log_dir, "rq-rec-worker", env["TIER_PREFIX"], "rq"))
        rq = start_gunicorn("benchmarks.tier_app:rq", 1, 4, env, log_dir)
        stack.callback(rq.stop)
        for _ in range(rounds):
            found["threads (gunicorn -w 2)"].append(recovery_seconds(threads, None))
            time.sleep(1.0)  # gunicorn boots the replacement worker
            pool = _children(worker)
            found["Celery tier (-c 2, pool child killed)"].append(recovery_seconds(tier, pool))
            time.sleep(1.0)  # the worker forks a new pool child
            found["RQ (2 workers, work horse killed)"].append(recovery_seconds(rq, None))
    return found


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def report(section: Section, cpu, trip, recovery, rounds: int) -> None:  # type: ignore[no-untyped-def]
    section.add(
        f"GET /hello latency, ms, while N CPU-bound tasks run: median over {rounds} rounds "
        f"of each round's p50 / p99 of {HELLO_REQUESTS} sequential keep-alive requests "
        "(`http.client`, one connection, after 50 of warm-up). Web tier `gunicorn -w 1 "
        "--threads 8` for both; the thread executor runs the tasks in that process (8 pool "
        "threads), the tier in a `wsgi-deferred worker --concurrency 2` (so of 4 tasks, 2 run "
        "and 2 wait). Store: Redis. Machine: 2 cores, shared.",
        "",
    )
    rows = []
    idle = {
        name: median([percentile(r, 99) for r in cpu[(name, 0)]]) for name in ("threads", "tier")
    }
    for count in TASK_COUNTS:
        row: list[object] = [count]
        for name in ("threads", "tier"):
            p50 = median([percentile(r, 50) for r in cpu[(name, count)]])
            p99 = median([percentile(r, 99) for r in cpu[(name, count)]])
            row += [_ms(p50), _ms(p99), f"{p99 / idle[name]:.1f} x"]
        rows.append(row)
    section.table(
        ["tasks", "threads p50", "threads p99", "threads p99/idle", "tier p50", "tier p99",
         "tier p99/idle"], rows,
    )  # fmt: skip
    for count in TASK_COUNTS[1:]:
        p99 = median([percentile(r, 99) for r in cpu[("tier", count)]])
        section.targets.append(
            Target(
                f"6 tier: GET /hello p99 with {count} CPU task(s) vs idle",
                f"{p99 / idle['tier']:.1f} x ({_ms(p99)} vs {_ms(idle['tier'])} ms)",
                "≤ 2 x",
                p99 <= 2 * idle["tier"],
            )
        )

    def jobs(results) -> float:  # type: ignore[no-untyped-def]
        return median([r.jobs / r.seconds for r in results])

    def p50(results) -> float:  # type: ignore[no-untyped-def]
        return median([percentile(r.latencies, 50) for r in results if r.latencies])

    errors = {name: sum(r.errors for r in results) for name, results in trip.items()}
    section.add(
        "Round trip of an instant job (`benchmarks/load.py` poll client: 8 clients, one "
        "keep-alive connection each, `POST /job` then `GET` the status URL every 10 ms, "
        "Retry-After not honoured), both with a prefork `-c 2` Celery worker and Redis as "
        f"broker, interleaved, median of {rounds} rounds:",
        "",
    )
    section.table(
        ["setup", "jobs/s", "p50 ms", "errors"],
        [
            ["wsgi_deferred Celery tier (Redis store, send_task of the id)",
             f"{jobs(trip['tier']):.0f}", _ms(p50(trip["tier"])), errors["tier"]],
            ["hand-written Celery pattern (benchmarks/celery_app.py)",
             f"{jobs(trip['celery']):.0f}", _ms(p50(trip["celery"])), errors["celery"]],
        ],
    )  # fmt: skip
    section.targets.append(
        Target(
            "6 tier round trip vs the Celery pattern, jobs/s",
            f"{jobs(trip['tier']) / jobs(trip['celery']):.2f} x "
            f"(p50 {_ms(p50(trip['tier']))} vs {_ms(p50(trip['celery']))} ms)",
            "report",
            None,
        )
    )
    section.add(
        f"Recovery after `kill -9` of the process running a task on a `retry` rule "
        f"(lease_timeout {LEASE:g} s; the sweeper looks every lease/3): seconds from the "
        "SIGKILL until the status URL reports the task running in another process, "
        f"median of {rounds} (all rounds shown):",
        "",
    )
    section.table(
        ["executor", "median s", "rounds"],
        [[name, f"{median(values):.2f}", ", ".join(f"{v:.2f}" for v in values)]
         for name, values in recovery.items()],
    )  # fmt: skip
    for name, values in recovery.items():
        section.targets.append(
            Target(f"6 recovery after kill -9, {name}", f"{median(values):.2f} s",
                   f"≤ lease + 2 s ({LEASE + 2:g} s)", median(values) <= LEASE + 2)
        )  # fmt: skip
