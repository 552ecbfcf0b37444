"""Benchmark 5: waiting (docs/protocol.md, "Retry-After" and "Holds"). Three parts:

* **5a polite clients**: the round trip of ``load.py``'s ``polite`` client (first poll at once,
  then exactly the ``Retry-After`` of each ``202``), 16 clients, instant jobs, per store,
  against the Celery pattern in the same run, which gets both the polite client (its app
  says ``Retry-After: 1``) and the 10 ms fixed-interval client (its best case);
* **5b azure-core**: ``LROPoller`` (generated-client style: relative ``Location`` resolved
  through ``path_format_arguments``) end to end against 50 ms and 1.5 s jobs;
* **5c held requests vs fast pages**: 0, 8, 64, 256 long-polling clients (``benchmarks/crowd.py``,
  another process) on ``gunicorn --threads 8``, while one client times ``GET /hello``.

Every server runs the default options (the README's deployment): the hold budget is automatic.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .apps import REDIS_PREFIX_DEFAULT
from .common import (
    CELERY_REDIS_DB,
    STORE_REDIS_DB,
    Section,
    Target,
    delete_prefix,
    median,
    percentile,
    python_env,
    redis_available,
    redis_client,
    spread,
    start_gunicorn,
)
from .load import LoadResult
from .roundtrip import Config, run_rounds, servers

CROWDS = (0, 8, 64, 256)
LONG_JOB_MS = 60_000  # the crowd's jobs outlive a round; cancelled after it
AZURE_JOBS_MS = (50, 1500)
AZURE_TARGETS_MS = {50: 150.0, 1500: 1700.0}


# -- 5a ------------------------------------------------------------------------------------------


def polite_configs(tmp: Path, celery_pool: str) -> list[Config]:
    found = [
        Config("memory", 1, 16, "memory://", modes=("polite",)),
        Config("sqlite", 4, 4, f"sqlite://{tmp}/polite-w4.db", modes=("polite",)),
    ]
    if redis_available():
        found.append(
            Config("redis", 4, 4, f"redis://127.0.0.1:6379/{STORE_REDIS_DB}", modes=("polite",))
        )
        found.append(Config(f"Celery ({celery_pool})", 4, 4, celery=True, modes=("polite", "poll")))
    return found


def _jobs(results: list[LoadResult]) -> float:
    return median([r.jobs_per_second for r in results])


def polite(section: Section, quick: bool, log_dir: Path, tmp: Path, celery_pool: str) -> None:
    rounds, max_jobs, seconds = (2, 200, 2.0) if quick else (5, 400, 3.0)
    found = polite_configs(tmp, celery_pool)
    if redis_available():
        # Our keys in db 9 all carry our prefix (and only they are deleted afterwards); db 10
        # is flushed afterwards, so it must hold nothing else.
        if next(redis_client(STORE_REDIS_DB).scan_iter(REDIS_PREFIX_DEFAULT + "*"), None):
            raise RuntimeError(f"Redis db {STORE_REDIS_DB} holds {REDIS_PREFIX_DEFAULT} keys")
        if redis_client(CELERY_REDIS_DB).dbsize():
            raise RuntimeError(f"Redis db {CELERY_REDIS_DB} is not empty; Celery needs it")
    try:
        with servers(found, log_dir, celery_pool):
            run_rounds(found, rounds, max_jobs, seconds, fresh=False)
    finally:
        if redis_available():
            delete_prefix(STORE_REDIS_DB, REDIS_PREFIX_DEFAULT)
            redis_client(CELERY_REDIS_DB).flushdb()  # checked empty above: all ours
    section.add(
        "### 5a. Polite clients, instant jobs",
        "",
        "16 client threads, one keep-alive connection each, looping `POST /job` (answers at "
        "once) → `202`, then the **polite** client: `GET` the status URL at once, then sleep "
        "exactly each `202`'s `Retry-After` (whole seconds, as azure-core's `LROPoller`) "
        "before the next `GET`. Celery's app says `Retry-After: 1`; it is also run with the "
        "**poll** client (sleep 10 ms before every `GET`, `Retry-After` ignored), its best "
        f"case. {rounds} rounds, order rotated; a run stops after {max_jobs} jobs or "
        f"{seconds:g} s. Default options: the hold budget is automatic (2 per process). "
        "Celery's prefork workers suffer most from a busy machine: see the load averages in "
        "the machine line, and compare Celery's poll figure with section 3's.",
        "",
    )
    rows = []
    for config in found:
        for mode in config.modes:
            results = config.results.get(mode, [])
            if not results:
                continue
            slept = sum(r.slept for r in results) / max(1, sum(r.jobs for r in results))
            rows.append([
                config.name, mode, f"**{_jobs(results):,.0f}**",
                spread([r.jobs_per_second for r in results]),
                f"{median([r.p50_ms for r in results]):.1f}",
                f"{median([r.p99_ms for r in results]):.1f}",
                f"{median([r.requests / max(1, r.jobs) for r in results]):.2f}",
                f"{slept * 1000:.0f}", sum(r.errors for r in results),
            ])  # fmt: skip
    section.table(
        ["server", "client", "jobs/s", "per run min-max", "p50 ms", "p99 ms", "requests/job",
         "Retry-After slept per job, ms", "errors"],
        rows,
    )  # fmt: skip
    celery = next((c for c in found if c.celery), None)
    if celery is None:
        section.add("No Redis: the Celery baseline was not run.", "")
        return
    base_poll, base_polite = _jobs(celery.results["poll"]), _jobs(celery.results["polite"])
    for config in found:
        if config.celery:
            continue
        results = config.results["polite"]
        ratio = _jobs(results) / base_poll
        errors = sum(r.errors for r in results)
        section.targets.append(
            Target(
                f"5a {config.label} -w {config.workers} polite vs Celery poll jobs/s",
                f"{ratio:.1f} x ({_jobs(results) / base_polite:.1f} x Celery polite), "
                f"{errors} errors",
                "≥ 3 x, 0 errors",
                ratio >= 3 and errors == 0,
            )
        )


# -- 5b ------------------------------------------------------------------------------------------


def azure_lro(port: int, ms: int) -> float:
    """Seconds from the submit to the result through azure-core's LROPoller."""
    from azure.core import PipelineClient
    from azure.core.polling import LROPoller
    from azure.core.polling.base_polling import LROBasePolling
    from azure.core.rest import HttpRequest

    endpoint = f"http://127.0.0.1:{port}"
    client = PipelineClient(base_url="{endpoint}")
    began = time.perf_counter()
    request = HttpRequest("POST", client.format_url(f"/job?ms={ms}", endpoint=endpoint))
    initial = client.send_request(request, _return_pipeline_response=True)
    if initial.http_response.status_code != 202:
        raise RuntimeError(f"submit answered {initial.http_response.status_code}")
    method = LROBasePolling(timeout=30, path_format_arguments={"endpoint": endpoint})
    poller = LROPoller(client, initial, lambda r: r.http_response.read(), method)
    if poller.result(timeout=60) != b'{"ok": true}':
        raise RuntimeError("wrong result")
    elapsed = time.perf_counter() - began
    client.close()
    return elapsed


def azure(section: Section, quick: bool, log_dir: Path) -> None:
    rounds = 3 if quick else 7
    server = start_gunicorn("benchmarks.apps:jobs", 1, 8, {"BENCH_STORE": "memory://"}, log_dir)
    times: dict[int, list[float]] = {ms: [] for ms in AZURE_JOBS_MS}
    try:
        for ms in AZURE_JOBS_MS:  # warm-up: the route's history exists, as in production
            azure_lro(server.port, ms)
        for _ in range(rounds):
            for ms in AZURE_JOBS_MS:
                times[ms].append(azure_lro(server.port, ms))
    finally:
        server.stop()
    section.add(
        "### 5b. azure-core's `LROPoller`",
        "",
        "azure-core's own poller (`LROBasePolling`, `Location` polling; the relative "
        "`Location` resolved with `path_format_arguments={'endpoint': ...}` as generated "
        "Azure clients do): polls at once, then sleeps exactly `Retry-After`. "
        f"`gunicorn -w 1 --threads 8`, memory store, default options; one warm-up job per "
        f"duration, then {rounds} rounds. Submit → result, wall time:",
        "",
    )
    section.table(
        ["job", "median ms", "min-max ms", "target"],
        [[f"{ms} ms", f"**{median(t) * 1000:.0f}**",
          f"{min(t) * 1000:.0f}-{max(t) * 1000:.0f}", f"≤ {AZURE_TARGETS_MS[ms]:.0f} ms"]
         for ms, t in times.items()],
    )  # fmt: skip
    for ms, t in times.items():
        section.targets.append(
            Target(
                f"5b azure-core LROPoller, {ms} ms job, median",
                f"{median(t) * 1000:.0f} ms",
                f"≤ {AZURE_TARGETS_MS[ms]:.0f} ms",
                median(t) * 1000 <= AZURE_TARGETS_MS[ms],
            )
        )


# -- 5c ------------------------------------------------------------------------------------------


def _request(port: int, method: str, path: str) -> tuple[int, str | None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=b"" if method == "POST" else None)
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("Location")
    finally:
        conn.close()


@contextlib.contextmanager
def crowd(port: int, clients: int, seconds: float) -> Iterator[subprocess.Popen[str] | None]:
    """*clients* long pollers (another process) of up to 8 long jobs, cancelled afterwards."""
    if not clients:
        yield None
        return
    locations = []
    for _ in range(min(clients, 8)):
        status, location = _request(port, "POST", f"/job?ms={LONG_JOB_MS}")
        if status != 202 or not location:
            raise RuntimeError(f"submit answered {status}")
        locations.append(location)
    command = [sys.executable, "-m", "benchmarks.crowd", str(port), str(clients), str(seconds)]
    proc = subprocess.Popen(
        [*command, *locations], env=python_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        yield proc
    finally:
        try:
            proc.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        for location in locations:  # wakes the held polls
            _request(port, "DELETE", location)


def hello_latencies(port: int, seconds: float, limit: int = 3000) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out: list[float] = []
    stop_at = time.monotonic() + seconds
    try:
        while time.monotonic() < stop_at and len(out) < limit:
            began = time.perf_counter()
            conn.request("GET", "/hello")
            response = conn.getresponse()
            if response.read() != b"hello":
                raise RuntimeError(f"GET /hello answered {response.status}")
            out.append(time.perf_counter() - began)
            if response.will_close:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    finally:
        conn.close()
    return out


def held(section: Section, quick: bool, log_dir: Path) -> None:
    rounds, window = (1, 2.0) if quick else (5, 3.0)
    ramp = 1.5  # seconds the crowd gets to connect before the measurement starts
    server = start_gunicorn("benchmarks.apps:jobs", 1, 8, {"BENCH_STORE": "memory://"}, log_dir)
    p50: dict[int, list[float]] = {n: [] for n in CROWDS}
    p99: dict[int, list[float]] = {n: [] for n in CROWDS}
    counts: dict[int, dict[str, int]] = {n: {} for n in CROWDS}
    try:
        for r in range(rounds):
            order = CROWDS[r % len(CROWDS) :] + CROWDS[: r % len(CROWDS)]
            for clients in order:
                with crowd(server.port, clients, ramp + window + 0.5) as proc:
                    time.sleep(ramp if clients else 0)
                    latencies = hello_latencies(server.port, window)
                    if proc is not None:
                        out, _ = proc.communicate(timeout=window + 60)
                        for key, value in json.loads(out.strip().splitlines()[-1]).items():
                            counts[clients][key] = counts[clients].get(key, 0) + value
                p50[clients].append(percentile(latencies, 50) * 1000)
                p99[clients].append(percentile(latencies, 99) * 1000)
    finally:
        server.stop()
    section.add(
        "### 5c. Held requests vs fast pages",
        "",
        "`gunicorn -w 1 --threads 8`, memory store, default options (hold budget 2). A crowd "
        "of N clients in another process long-polls up to 8 long jobs with `Prefer: wait=20` "
        "(the waiting page's script), a new connection per poll, sleeping `Retry-After` when "
        "a poll was not held; after a 1.5 s ramp one keep-alive client times sequential "
        f"`GET /hello` for {window:g} s. {rounds} rounds, order rotated; medians of the "
        "per-round p50/p99.",
        "",
    )
    idle99 = median(p99[0])
    rows = []
    for n in CROWDS:
        c = counts[n]
        rows.append([
            n, f"{median(p50[n]):.2f}", f"**{median(p99[n]):.2f}**",
            f"{median(p99[n]) / idle99:.2f}",
            c.get("held", 0), c.get("refused", 0), c.get("errors", 0),
        ])  # fmt: skip
    section.table(
        ["long-polling clients", "GET /hello p50 ms", "p99 ms", "p99 / idle p99",
         "polls held", "polls answered at once", "crowd errors"],
        rows,
    )  # fmt: skip
    for n in CROWDS[1:]:
        ratio = median(p99[n]) / idle99
        section.targets.append(
            Target(
                f"5c GET /hello p99 with {n} long-polling clients vs idle",
                f"{median(p99[n]):.2f} vs {idle99:.2f} ms ({ratio:.2f} x)",
                "≤ 2 x",
                ratio <= 2,
            )
        )


def run(quick: bool, log_dir: Path, tmp: Path, celery_pool: str = "prefork") -> Section:
    section = Section("waiting", "5. Waiting: polite clients, azure-core, holds vs fast pages")
    polite(section, quick, log_dir, tmp, celery_pool)
    azure(section, quick, log_dir)
    held(section, quick, log_dir)
    return section
