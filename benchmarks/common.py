"""Shared helpers: statistics, the machine description, servers in subprocesses, Redis hygiene."""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # tests/servers.py: the gunicorn-subprocess helper

from servers import Gunicorn, free_port  # noqa: E402

__all__ = ["ROOT", "Gunicorn", "Section", "free_port", "machine", "median", "percentile"]

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
#: Redis databases the benchmarks own; both must be empty when a run starts.
STORE_REDIS_DB, CELERY_REDIS_DB = 9, 10


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (*pct* in 0..100) of *values*."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def spread(values: Sequence[float]) -> str:
    """``min-max (±x% of the median)`` for a list of per-round figures."""
    mid = median(values)
    low, high = min(values), max(values)
    half = (high - low) / 2 / mid * 100 if mid else float("nan")
    return f"{low:,.0f}-{high:,.0f} (±{half:.1f}%)"


@dataclass
class Target:
    name: str
    figure: str
    target: str
    met: bool | None  # None: not applicable / not measured

    @property
    def verdict(self) -> str:
        return {True: "met", False: "**missed**", None: "n/a"}[self.met]


@dataclass
class Section:
    """One benchmark's outcome: markdown for RESULTS.md and the verdicts against targets."""

    name: str
    title: str
    markdown: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, *lines: str) -> None:
        self.markdown.extend(lines)

    def table(self, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self.add("| " + " | ".join(header) + " |", "|" + " --- |" * len(header))
        self.add(*("| " + " | ".join(str(c) for c in row) + " |" for row in rows))
        self.add("")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    info = {
        "nproc": str(os.cpu_count()),
        "cpu": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version() + f" ({platform.python_implementation()})",
    }
    for package in (
        "wsgi_deferred", "werkzeug", "flask", "gunicorn", "redis", "celery", "azure-core",
    ):  # fmt: skip
        info[package] = _version(package)
    info["redis-server"] = _redis_server_version()
    try:  # only section 1b needs wrk
        wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
        info["wrk"] = (wrk.stdout + wrk.stderr).split("[")[0].strip()
    except FileNotFoundError:
        info["wrk"] = "not installed"
    info["git"] = _git_head()
    return info


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _redis_server_version() -> str:
    with contextlib.suppress(Exception):
        import redis

        return str(redis.Redis(REDIS_HOST, REDIS_PORT, socket_timeout=2).info()["redis_version"])
    return "unreachable"


def _git_head() -> str:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "wsgi_deferred"],
        capture_output=True,
        text=True,
    )
    changed = sorted(line[3:] for line in dirty.stdout.splitlines() if line.strip())
    suffix = f" (+ uncommitted changes to {', '.join(changed)})" if changed else ""
    return out.stdout.strip() + suffix


# -- servers -------------------------------------------------------------------------------


def start_gunicorn(
    target: str, workers: int, threads: int, env: dict[str, str], log_dir: Path
) -> Gunicorn:
    """A gunicorn (gthread worker) serving *target*, with every worker booted."""
    server = Gunicorn(
        target,
        workers=workers,
        threads=threads,
        env={"WSGI_DEFERRED_TEST_LOGS": str(log_dir), **env},
        extra_args=["--worker-class", "gthread", "--log-level", "warning"],
    )
    # tests/servers.py writes its log where WSGI_DEFERRED_TEST_LOGS of *this* process says.
    os.environ["WSGI_DEFERRED_TEST_LOGS"] = str(log_dir)
    server.start()
    try:
        deadline = time.monotonic() + 30
        while len(server.worker_pids()) < workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{target}: workers did not boot:\n{server.log()}")
            time.sleep(0.05)
        time.sleep(0.5)  # workers import the app after they appear
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def process_group(command: list[str], env: dict[str, str], log: Path) -> Iterator[int]:
    """Run *command* in its own session; SIGTERM (then SIGKILL) its whole group on exit."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


# -- Redis ---------------------------------------------------------------------------------


def redis_client(db: int):  # type: ignore[no-untyped-def]
    import redis

    return redis.Redis(REDIS_HOST, REDIS_PORT, db=db, socket_timeout=5)


def redis_available() -> bool:
    try:
        return bool(redis_client(0).ping())
    except Exception:
        return False


def delete_prefix(db: int, prefix: str) -> int:
    """Delete every key of *db* under *prefix*; how many went."""
    client = redis_client(db)
    removed = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=prefix + "*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            removed += int(client.unlink(*batch))
            batch = []
    if batch:
        removed += int(client.unlink(*batch))
    return removed


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def file_create_micros(directories: Sequence[Path], count: int = 200) -> str:
    """µs to create, write, rename and delete one small file in each directory: the cost
    a store pays per result body kept as a file (it varies a lot between filesystems)."""
    import tempfile

    parts = []
    for directory in dict.fromkeys(directories):
        work = Path(tempfile.mkdtemp(dir=directory))
        try:
            start = time.perf_counter()
            for i in range(count):
                fd, name = tempfile.mkstemp(dir=work)
                os.write(fd, b'{"ok": true}')
                os.close(fd)
                os.replace(name, work / f"body{i}")
                os.unlink(work / f"body{i}")
            parts.append(f"{directory}: {(time.perf_counter() - start) / count * 1e6:.0f}")
        finally:
            for leftover in work.iterdir():
                leftover.unlink()
            work.rmdir()
    return ", ".join(parts)
