"""Benchmarks 2 and 3: the deferred round trip per store, and the Celery baseline.

Every server is started first and stays up; then each round runs every (server, mode) pair
once, in an order rotated from round to round, so slow drift on a noisy machine spreads
over all of them. Modes (see ``load.py``): ``poll`` (10 ms plain polling), ``wait``
(``Prefer: wait=10`` long polling), and ``http`` — two plain ``GET /hello`` per "job" on the
same server: what gunicorn alone can do with two requests, the ceiling for any scheme that
needs a submit and a fetch. Celery runs ``poll`` only (it has no long poll).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from wsgi_deferred.stores.memory import DEFAULT_MAX_RECORDS

from . import capacity
from .apps import REDIS_PREFIX_DEFAULT
from .common import (
    CELERY_REDIS_DB,
    STORE_REDIS_DB,
    Gunicorn,
    Section,
    Target,
    delete_prefix,
    median,
    process_group,
    python_env,
    redis_available,
    redis_client,
    spread,
    start_gunicorn,
)
from .load import POLL_INTERVAL, LoadResult, run_load


@dataclass
class Config:
    label: str
    workers: int
    threads: int
    store: str = ""  # BENCH_STORE; empty for Celery
    celery: bool = False
    modes: tuple[str, ...] = ("poll", "wait", "http")
    prefill: int = 0  # jobs run before the rounds, so that many results are retained
    server: Gunicorn | None = None
    results: dict[str, list[LoadResult]] = field(default_factory=dict)
    jobs_taken: int = 0  # every job this server accepted, warm-up and prefill included

    def load(self, mode: str, **options: object) -> LoadResult:
        assert self.server is not None
        result = run_load(self.server.port, mode, **options)  # type: ignore[arg-type]
        if mode != "http":
            self.jobs_taken += result.jobs
        return result

    @property
    def name(self) -> str:
        return f"{self.label} (`-w {self.workers} --threads {self.threads}`)"


def configs(tmp: Path, celery_pool: str, other_tmp: Path | None) -> list[Config]:
    found = [
        Config("memory", 1, 16, "memory://"),
        # Sustained load keeps the store full: at 500 jobs/s, 10,000 results within the
        # 600 s result_ttl take 20 s. This one is filled before the rounds start.
        Config(
            f"memory, {DEFAULT_MAX_RECORDS:,} results retained",
            1,
            16,
            "memory://",
            modes=("poll", "wait"),
            prefill=DEFAULT_MAX_RECORDS,
        ),
        Config("sqlite", 1, 16, f"sqlite://{tmp}/rt-w1.db"),
        Config("sqlite", 4, 4, f"sqlite://{tmp}/rt-w4.db"),
    ]
    if other_tmp is not None:  # the same, on the filesystem tempfile picks (store=None's)
        found.append(
            Config(f"sqlite in {other_tmp.parent}", 4, 4, f"sqlite://{other_tmp}/rt-w4.db",
                   modes=("poll", "wait"))
        )  # fmt: skip
    if redis_available():
        found.append(Config("redis", 4, 4, f"redis://127.0.0.1:6379/{STORE_REDIS_DB}"))
        found.append(Config(f"Celery ({celery_pool})", 4, 4, celery=True, modes=("poll",)))
    return found


def celery_command(pool: str) -> list[str]:
    concurrency = "2" if pool == "prefork" else "8"
    return [
        sys.executable, "-m", "celery", "-A", "benchmarks.celery_app:celery", "worker",
        "--pool", pool, "--concurrency", concurrency, "--loglevel", "warning",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip


PREFILL_SECONDS = 90.0


@contextlib.contextmanager
def servers(found: list[Config], log_dir: Path, celery_pool: str) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for config in found:
            if config.celery:
                env = {**python_env(), "BENCH_CELERY_DB": str(CELERY_REDIS_DB)}
                stack.enter_context(
                    process_group(celery_command(celery_pool), env, log_dir / "celery.log")
                )
                env = {"BENCH_CELERY_DB": str(CELERY_REDIS_DB)}
                target = "benchmarks.celery_app:app"
            else:
                env = {"BENCH_STORE": config.store, "BENCH_REDIS_PREFIX": REDIS_PREFIX_DEFAULT}
                target = "benchmarks.apps:jobs"
            server = start_gunicorn(target, config.workers, config.threads, env, log_dir)
            stack.callback(server.stop)
            config.server = server
            if config.prefill:
                config.load("wait", max_jobs=config.prefill, max_seconds=PREFILL_SECONDS)
        yield


def run_rounds(
    found: list[Config], rounds: int, max_jobs: int, seconds: float, fresh: bool
) -> None:
    pairs = [(config, mode) for config in found for mode in config.modes]
    for config, mode in pairs:  # warm-up: every worker boots, connects and caches
        config.load(mode, max_jobs=max_jobs // 2, max_seconds=min(seconds, 1.0), fresh=fresh)
    for r in range(rounds):
        shift = r * len(pairs) // rounds
        for config, mode in pairs[shift:] + pairs[:shift]:
            result = config.load(mode, max_jobs=max_jobs, max_seconds=seconds, fresh=fresh)
            config.results.setdefault(mode, []).append(result)
            if result.errors:
                print(f"  {config.name} {mode}: {result.errors} errors, e.g. {result.first_error}")


def unloaded_latency(found: list[Config], rounds: int, fresh: bool) -> dict[str, list[LoadResult]]:
    """One client, long polling: the latency of a job when nothing else runs."""
    out: dict[str, list[LoadResult]] = {}
    for _ in range(rounds):
        for config in found:
            if "wait" in config.modes:
                result = config.load("wait", clients=1, max_jobs=SINGLE_JOBS, max_seconds=1.0,
                                     fresh=fresh)  # fmt: skip
                out.setdefault(config.name, []).append(result)
    return out


SINGLE_JOBS = 200  # per one-client run


def _jobs(results: list[LoadResult]) -> float:
    return median([r.jobs_per_second for r in results])


def _p50(results: list[LoadResult]) -> float:
    return median([r.p50_ms for r in results])


def _p99(results: list[LoadResult]) -> float:
    return median([r.p99_ms for r in results])


def run(
    quick: bool,
    log_dir: Path,
    tmp: Path,
    celery_pool: str = "prefork",
    other_tmp: Path | None = None,
    fresh: bool = False,
) -> Section:
    section = Section("roundtrip", "2-3. Deferred round trip per store, and the Celery baseline")
    rounds = 2 if quick else 7
    # 500 jobs a run keeps the plain memory server under the store's record cap through all
    # rounds (warm-up and one-client runs included); the "retained" server shows the cap.
    max_jobs, seconds = (200, 1.0) if quick else (500, 3.0)
    found = configs(tmp, celery_pool, other_tmp)
    for db in (STORE_REDIS_DB, CELERY_REDIS_DB):
        if redis_available() and redis_client(db).dbsize():
            raise RuntimeError(f"Redis db {db} is not empty; the benchmarks need it to themselves")
    try:
        with servers(found, log_dir, celery_pool):
            run_rounds(found, rounds, max_jobs, seconds, fresh)
            single = unloaded_latency(found, rounds, fresh)
    finally:
        if redis_available():
            delete_prefix(STORE_REDIS_DB, REDIS_PREFIX_DEFAULT)
            redis_client(CELERY_REDIS_DB).flushdb()  # checked empty above: all ours
    creates = capacity.measure()
    report(section, found, single, rounds, max_jobs, seconds, celery_pool, fresh)
    capacity_report(section, found, creates)
    return section


def report(
    section: Section,
    found: list[Config],
    single: dict[str, list[LoadResult]],
    rounds: int,
    max_jobs: int,
    seconds: float,
    celery_pool: str,
    fresh: bool,
) -> None:
    connection = (
        "a **new connection per request** (`Connection: close`)"
        if fresh
        else "one HTTP/1.1 **keep-alive** connection"
    )
    pinning = (
        "Fresh connections spread a job's requests over the workers of a `-w 4` server."
        if fresh
        else "Under `-w 4`, keep-alive pins each client to one worker, so a job's submit and "
        "its status requests reach the same process."
    )
    section.add(
        f"16 client threads in one process, each with {connection} "
        f"(`http.client`), each looping: `POST /job` (the app answers at once) → `202`, then "
        f"fetch the result: **poll** = sleep {POLL_INTERVAL * 1000:.0f} ms then `GET` the "
        "status URL, repeated while `202` (a fixed interval: `Retry-After` says 1 s); "
        "**wait** = `GET` with `Prefer: wait=10`, repeated while `202`; **http** = two plain "
        "`GET /hello` on the same server, no job: the two-request ceiling of that gunicorn "
        f"setup. Each (server, mode) runs once per round, {rounds} rounds, round order "
        f"rotated; a run stops after {max_jobs} jobs or {seconds:g} s. Figures are medians of "
        "the rounds; latency is submit → last byte of the result, p50/p99 per run, median "
        "over runs. Servers: gunicorn gthread; the Celery baseline is a Flask app calling "
        f"`.delay()` / `AsyncResult.ready()` with a `celery worker --pool {celery_pool}` "
        "(`-c 2` for prefork, `-c 8` for threads) on Redis db "
        f"{CELERY_REDIS_DB}. " + pinning + " Neither client honours `Retry-After`: the "
        "polite client, which does, is section 5a.",
        "",
    )
    rows = []
    for config in found:
        for mode in config.modes:
            results = config.results.get(mode, [])
            if not results:
                continue
            errors = sum(r.errors for r in results)
            rows.append([
                config.name, mode, f"**{_jobs(results):,.0f}**",
                spread([r.jobs_per_second for r in results]),
                f"{_p50(results):.1f}", f"{_p99(results):.1f}",
                f"{median([r.requests / max(1, r.jobs) for r in results]):.2f}",
                sum(r.jobs for r in results), errors,
            ])  # fmt: skip
    section.table(
        ["server", "mode", "jobs/s", "jobs/s per run min-max", "p50 ms", "p99 ms",
         "requests/job", "jobs", "errors"],
        rows,
    )  # fmt: skip
    section.add(
        f"Unloaded latency: **1 client**, long polling (`wait`), ≤ {SINGLE_JOBS} jobs or 1 s "
        "per run, after the rounds:"
    )
    section.add("")
    section.table(
        ["server", "jobs/s", "p50 ms", "p99 ms"],
        [[name, f"{_jobs(rs):,.0f}", f"**{_p50(rs):.2f}**", f"{_p99(rs):.2f}"]
         for name, rs in single.items()],
    )  # fmt: skip
    memory = found[0]
    jobs, p50 = _jobs(memory.results["wait"]), _p50(memory.results["wait"])
    section.add(
        f"Little's law for {memory.name}, wait: 16 clients / {jobs:,.0f} jobs/s = "
        f"{16 / jobs * 1000:.1f} ms per job, against a measured p50 of {p50:.1f} ms: with 16 "
        "clients that never pause, latency is queueing behind the server's throughput. The "
        "one-client table is the latency of the machinery itself.",
        "",
    )
    targets(section, found, single)


def targets(section: Section, found: list[Config], single: dict[str, list[LoadResult]]) -> None:
    by_name = {(c.label, c.workers): c for c in found}
    memory = by_name[("memory", 1)]
    mem_wait = memory.results["wait"]
    section.targets.append(
        Target("2 p50 latency, memory store, wait, 16 clients", f"{_p50(mem_wait):.1f} ms",
               "≤ 5 ms", _p50(mem_wait) <= 5)
    )  # fmt: skip
    full = next((c for c in found if c.prefill), None)
    if full is not None:
        full_wait = full.results["wait"]
        section.targets.append(
            Target("2 p50 latency, memory store full (steady state), wait, 16 clients",
                   f"{_p50(full_wait):.1f} ms", "≤ 5 ms", _p50(full_wait) <= 5)
        )  # fmt: skip
    single_mem = single.get(memory.name)
    if single_mem:
        section.targets.append(
            Target("2 p50 latency, memory store, wait, 1 client (context)",
                   f"{_p50(single_mem):.2f} ms", "≤ 5 ms", _p50(single_mem) <= 5)
        )  # fmt: skip
    sqlite4 = by_name[("sqlite", 4)]
    lines = []
    for mode in ("poll", "wait"):
        ratio = _jobs(sqlite4.results[mode]) / _jobs(memory.results[mode])
        lines.append(f"- SQLite `-w 4` / memory jobs/s, {mode}: **{ratio:.2f}**")
        section.targets.append(
            Target(f"2 SQLite -w 4 vs memory jobs/s ({mode})", f"{ratio:.2f} x", "≥ 0.5 x",
                   ratio >= 0.5)
        )  # fmt: skip
    celery = next((c for c in found if c.celery), None)
    if celery is not None and celery.results.get("poll"):
        base_jobs, base_p50 = _jobs(celery.results["poll"]), _p50(celery.results["poll"])
        for config in found:
            if config.celery:
                continue
            for mode in ("poll", "wait"):
                ratio = _jobs(config.results[mode]) / base_jobs
                p50 = _p50(config.results[mode])
                lines.append(
                    f"- {config.name} {mode} / Celery poll: jobs/s **{ratio:.2f} x**, "
                    f"p50 {p50:.1f} ms vs {base_p50:.1f} ms"
                )
                if mode == "poll":  # like for like: Celery polls too
                    section.targets.append(
                        Target(f"3 {config.label} -w {config.workers} vs Celery jobs/s (poll)",
                               f"{ratio:.2f} x", "≥ 3 x", ratio >= 3)
                    )  # fmt: skip
                    section.targets.append(
                        Target(f"3 {config.label} -w {config.workers} p50 vs Celery (poll)",
                               f"{p50:.1f} vs {base_p50:.1f} ms", "lower", p50 < base_p50)
                    )  # fmt: skip
    section.add("Ratios (medians of the same run):", "", *lines, "")


def capacity_report(section: Section, found: list[Config], creates: list[list[str]]) -> None:
    held = ", ".join(f"{c.name}: {c.jobs_taken:,}" for c in found if c.store == "memory://")
    section.add(
        "### The memory store's record cap",
        "",
        f"`MemoryStore` keeps at most {DEFAULT_MAX_RECORDS:,} records, and finished results "
        "stay for `result_ttl` (600 s), so any sustained rate above "
        f"{DEFAULT_MAX_RECORDS / 600:.0f} jobs/s keeps it full. Jobs accepted by the "
        f"memory servers in this section (all retained, the TTL being longer than the run): "
        f"{held}. In-process, `MemoryStore.create()` (median of {capacity.SAMPLES}, each "
        "followed by `claim` and `finish`) with that many finished results retained:",
        "",
    )
    section.table(["results retained", "create() µs"], creates)
