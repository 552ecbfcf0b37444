"""The job load: N client threads, each submitting an instant job and fetching its result.

Each client keeps one HTTP/1.1 keep-alive connection (``http.client``), reopened only when the
server closes it; with ``fresh=True`` every request opens its own connection instead (so
under ``gunicorn -w N`` a job's requests land on any worker, as behind a load balancer).
A job is: ``POST /job`` → ``202`` + ``Location``, then either

* ``poll``: sleep ``POLL_INTERVAL`` (10 ms), ``GET`` the status URL, repeat while ``202``
  (``Retry-After`` is deliberately not honoured: it says 1 s, which would measure the header);
* ``wait``: ``GET`` the status URL with ``Prefer: wait=10`` (long poll), repeat while ``202``;
* ``polite``: ``GET`` the status URL at once, then sleep exactly the ``Retry-After`` of each
  ``202`` (whole seconds, as azure-core's ``LROPoller`` does) before the next ``GET``;
* ``http``: no job, just two ``GET /hello``: the two-request ceiling of the server itself.

Latency is from just before the POST to the last byte of the result. A round ends when it
has started ``max_jobs`` jobs or ``max_seconds`` have passed, whichever comes first; a job
stuck longer than ``JOB_TIMEOUT`` counts as an error.
"""

from __future__ import annotations

import http.client
import itertools
import threading
import time
from dataclasses import dataclass, field

from .common import percentile

POLL_INTERVAL = 0.010  # seconds between two plain polls
JOB_TIMEOUT = 30.0  # seconds one job may take before it counts as an error
EXPECTED = b'{"ok": true}'


@dataclass
class LoadResult:
    jobs: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, one per completed job
    requests: int = 0
    first_error: str = ""
    slept: float = 0.0  # seconds the clients slept obeying Retry-After (polite mode)

    @property
    def jobs_per_second(self) -> float:
        return self.jobs / self.seconds if self.seconds else 0.0

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies, 50) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies, 99) * 1000


class _Client:
    def __init__(self, port: int, fresh: bool = False) -> None:
        self.port = port
        self.fresh = fresh  # a new connection per request, closed after it
        self.conn: http.client.HTTPConnection | None = None
        self.requests = 0
        self.retry_after: str | None = None  # of the last response
        self.slept = 0.0  # seconds spent obeying Retry-After

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, str | None, bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=JOB_TIMEOUT)
        self.requests += 1
        try:
            body = b"" if method == "POST" else None
            headers = {**(headers or {}), **({"Connection": "close"} if self.fresh else {})}
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        self.retry_after = response.getheader("Retry-After")
        if response.will_close or self.fresh:
            self.close()
        return response.status, response.getheader("Location"), data

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def one_job(client: _Client, mode: str) -> None:
    if mode == "http":  # the ceiling: two plain requests, no job
        for _ in range(2):
            status, _, body = client.request("GET", "/hello")
            if status != 200 or body != b"hello":
                raise RuntimeError(f"GET /hello answered {status}")
        return
    status, location, _ = client.request("POST", "/job")
    if status != 202 or not location:
        raise RuntimeError(f"submit answered {status}")
    deadline = time.monotonic() + JOB_TIMEOUT
    headers = {"Prefer": "wait=10"} if mode == "wait" else {}
    first = True
    while True:
        if mode == "poll":
            time.sleep(POLL_INTERVAL)
        elif mode == "polite" and not first:
            delay = float(client.retry_after or 30)  # azure-core's default when it is missing
            if delay <= 0:
                delay = 30.0  # ... or 0, which azure-core reads the same way
            client.slept += delay
            time.sleep(delay)
        first = False
        status, _, body = client.request("GET", location, headers)
        if status != 202:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"still 202 after {JOB_TIMEOUT}s")
    if status != 200 or body != EXPECTED:
        raise RuntimeError(f"result answered {status} {body[:80]!r}")


def run_load(
    port: int,
    mode: str,
    *,
    clients: int = 16,
    max_jobs: int = 1000,
    max_seconds: float = 3.0,
    fresh: bool = False,
) -> LoadResult:
    """Run the load against 127.0.0.1:*port* (see the module docstring)."""
    if mode not in ("poll", "wait", "polite", "http"):
        raise ValueError(mode)
    result = LoadResult()
    lock = threading.Lock()
    tickets = itertools.count()
    start = time.perf_counter()
    stop_at = start + max_seconds

    def client_loop() -> None:
        client = _Client(port, fresh)
        try:
            while next(tickets) < max_jobs and time.perf_counter() < stop_at:
                began = time.perf_counter()
                try:
                    one_job(client, mode)
                except Exception as exc:
                    with lock:
                        result.errors += 1
                        result.first_error = result.first_error or f"{type(exc).__name__}: {exc}"
                    continue
                elapsed = time.perf_counter() - began
                with lock:
                    result.jobs += 1
                    result.latencies.append(elapsed)
        finally:
            client.close()
            with lock:
                result.requests += client.requests
                result.slept += client.slept

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max_seconds + JOB_TIMEOUT + 5)
    result.seconds = time.perf_counter() - start
    return result
