"""Benchmark 4: a 1 GiB response on a deferred route, and the server worker's memory.

``GET /big?mib=1024`` yields 1 GiB in 64 KiB chunks under ``gunicorn -w 1 --threads 4``. The
client takes the ``202``, long-polls the status URL (``Prefer: wait=25``) and streams the
result, discarding it, in 1 MiB reads. A thread samples the worker's ``VmRSS`` from
``/proc/<pid>/status`` every 50 ms, from the submit to the last byte; the figure is the
peak minus the idle baseline (median of 1 s of samples after a 2 MiB warm-up job). The result
is deleted (``DELETE`` on the status URL) after each round. Target: peak growth ≤ 32 MiB.
"""

from __future__ import annotations

import http.client
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .apps import REDIS_PREFIX_DEFAULT
from .common import (
    STORE_REDIS_DB,
    Section,
    Target,
    delete_prefix,
    median,
    redis_available,
    redis_client,
    start_gunicorn,
)

SAMPLE_INTERVAL = 0.050  # seconds between two RSS samples
READ_SIZE = 1 << 20  # bytes per client read
TIMEOUT = 180.0  # seconds one round may take, all in all
MIB = 1 << 20


def vm_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


class Sampler(threading.Thread):
    """Samples a process's VmRSS (KiB) every SAMPLE_INTERVAL until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[int] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append(vm_kib(self.pid, "VmRSS"))
            self._stop_event.wait(SAMPLE_INTERVAL)

    def stop(self) -> list[int]:
        self._stop_event.set()
        self.join(5)
        return self.samples


def fetch_big(
    port: int, mib: int, on_ready: Callable[[], None] = lambda: None
) -> tuple[float, float, int]:
    """Submit, long-poll and download; (seconds to result, seconds to download, bytes).
    *on_ready* runs once the result is ready, before its body is read."""
    deadline = time.monotonic() + TIMEOUT
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        began = time.perf_counter()
        conn.request("GET", f"/big?mib={mib}")
        response = conn.getresponse()
        response.read()
        location = response.getheader("Location")
        if response.status != 202 or not location:
            raise RuntimeError(f"submit answered {response.status}")
        while True:
            conn.request("GET", location, headers={"Prefer": "wait=25"})
            response = conn.getresponse()
            if response.status != 202:
                break
            response.read()
            if time.monotonic() > deadline:
                raise RuntimeError("the 1 GiB job did not finish in time")
        ready = time.perf_counter()
        on_ready()
        if response.status != 200:
            raise RuntimeError(f"result answered {response.status}: {response.read(300)!r}")
        received = 0
        while chunk := response.read(READ_SIZE):
            received += len(chunk)
            if time.monotonic() > deadline:
                raise RuntimeError("download too slow")
        done = time.perf_counter()
        conn.request("DELETE", location)
        conn.getresponse().read()
        return ready - began, done - ready, received
    finally:
        conn.close()


def measure_store(label: str, url: str, rounds: int, mib: int, log_dir: Path) -> list[str]:
    env = {"BENCH_STORE": url, "BENCH_REDIS_PREFIX": REDIS_PREFIX_DEFAULT}
    server = start_gunicorn("benchmarks.apps:big", 1, 4, env, log_dir)
    try:
        (pid,) = server.worker_pids()
        fetch_big(server.port, 2)  # warm-up: imports, pool threads, a spilled body
        peaks, hwms, buffer_s, download_s, held = [], [], [], [], []
        for _ in range(rounds):
            before = _held_by_store(url)
            idle = Sampler(pid)
            idle.start()
            time.sleep(1.0)
            baseline = median(idle.stop())
            sampler = Sampler(pid)
            sampler.start()
            try:
                to_result, to_download, received = fetch_big(
                    server.port, mib, lambda b=before: held.append(_held_by_store(url) - b)
                )
            finally:
                samples = sampler.stop()
            if received != mib * MIB:
                raise RuntimeError(f"{label}: got {received} bytes, not {mib} MiB")
            peaks.append((max(samples) - baseline) / 1024)
            hwms.append((vm_kib(pid, "VmHWM") - baseline) / 1024)
            buffer_s.append(to_result)
            download_s.append(to_download)
        return [
            label, f"{baseline / 1024:.1f}", ", ".join(f"{p:.1f}" for p in peaks),
            f"{median(peaks):.1f}", f"**{max(peaks):.1f}**", f"{max(hwms):.1f}",
            f"{median(buffer_s):.2f} s ({mib / median(buffer_s):,.0f} MiB/s)",
            f"{median(download_s):.2f} s ({mib / median(download_s):,.0f} MiB/s)",
            _where(url, median(held)),
        ]  # fmt: skip
    finally:
        server.stop()


def _held_by_store(url: str) -> int:
    """Bytes the store itself holds outside the worker: Redis's used_memory, else 0. Waits
    (up to 10 s) for Redis to finish freeing what an earlier UNLINK handed to its lazy-free
    thread, so a previous round's 1 GiB does not count."""
    if not url.startswith("redis://"):
        return 0
    deadline = time.monotonic() + 10
    while True:
        info = redis_client(STORE_REDIS_DB).info("memory")
        if not int(info.get("lazyfree_pending_objects", 0)) or time.monotonic() > deadline:
            return int(info["used_memory"])
        time.sleep(0.05)


def _where(url: str, held: float) -> str:
    if url.startswith("redis://"):
        return f"Redis: `used_memory` +{held / MIB:,.0f} MiB"
    if url.startswith("sqlite://"):
        return "a file beside the database"
    return "a spill file in $TMPDIR"


def run(quick: bool, log_dir: Path, tmp: Path) -> Section:
    section = Section("bigresponse", "4. A 1 GiB response through a deferred route")
    mib = 64 if quick else 1024
    rounds = 1 if quick else 5
    for directory in (tmp, Path(tempfile.gettempdir())):  # bodies, and the spill files
        free = shutil.disk_usage(directory).free
        if free < 3 * mib * MIB:
            section.add(f"Skipped: only {free / 2**30:.1f} GiB free in {directory}.", "")
            return section
    stores = [("memory", "memory://"), ("sqlite", f"sqlite://{tmp}/big.db")]
    if redis_available():
        stores.append(("redis", f"redis://127.0.0.1:6379/{STORE_REDIS_DB}"))
    rows = []
    try:
        for label, url in stores:
            rows.append(measure_store(label, url, rounds, mib, log_dir))
    finally:
        delete_prefix(STORE_REDIS_DB, REDIS_PREFIX_DEFAULT)
    section.add(
        f"`GET /big?mib={mib}` ({mib} MiB in 64 KiB chunks) on a deferred route under "
        f"`gunicorn -w 1 --threads 4`; {rounds} round(s) per store. RSS of the one worker "
        "process, sampled every 50 ms from submit to last byte; growth = peak - idle "
        "baseline. `VmHWM` is the kernel's own high-water mark (a cross-check that no peak "
        "fell between samples; it also covers the warm-up). Result bodies spool to files "
        "(page cache, not RSS); the Redis store keeps them in Redis instead, whose own memory "
        "is not counted here.",
        "",
    )
    section.table(
        ["store", "idle RSS MiB", "peak growth per round, MiB", "median MiB", "worst MiB",
         "VmHWM - idle MiB", "submit → result ready", "download", "the body sat in"],
        rows,
    )  # fmt: skip
    for row in rows:
        worst = float(row[4].strip("*"))
        section.targets.append(
            Target(f"4 peak RSS growth, {mib} MiB response ({row[0]} store)",
                   f"{worst:.1f} MiB", "≤ 32 MiB", worst <= 32)
        )  # fmt: skip
    return section
