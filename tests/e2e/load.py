"""A bounded, concurrent job load against a running server, with byte-for-byte checks."""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from servers import http_request

#: Seconds one job may take from submit to result before the load fails.
JOB_TIMEOUT = 60.0
#: Seconds to pause after a poll that was answered 202 at once (a server that does not hold
#: polls, e.g. a single-threaded worker), so the loop does not spin.
POLL_PAUSE = 0.05


@dataclass
class LoadReport:
    statuses: Counter[str] = field(default_factory=Counter)
    mismatches: list[str] = field(default_factory=list)
    served_by: Counter[str] = field(default_factory=Counter)


def run_job(submit_port: int, fetch_port: int, size: int, report: LoadReport) -> None:
    body = os.urandom(size)
    accepted = http_request(submit_port, "POST", "/job", body, {"Content-Type": "x/bytes"})
    report.statuses[f"submit {accepted.status}"] += 1
    if accepted.status != 202:
        return
    location = accepted.headers["location"]
    deadline = time.monotonic() + JOB_TIMEOUT
    while True:
        result = http_request(fetch_port, "GET", location, headers={"Prefer": "wait=10"})
        if result.status != 202 or time.monotonic() > deadline:
            break
        time.sleep(POLL_PAUSE)
    report.statuses[f"result {result.status}"] += 1
    if result.status != 200:
        report.mismatches.append(f"{location}: {result.status} {result.body[:200]!r}")
        return
    report.served_by[result.headers.get("x-pid", "?")] += 1
    if result.body != body[::-1] or result.headers["x-digest"] != hashlib.sha256(body).hexdigest():
        report.mismatches.append(f"{location}: body differs")


def run_load(
    submit_port: int, fetch_port: int, jobs: int, clients: int = 16, max_size: int = 64 * 1024
) -> LoadReport:
    """*jobs* jobs from *clients* concurrent clients; sizes vary from 0 to *max_size* bytes."""
    report = LoadReport()
    rng = random.Random(1234)
    sizes = [rng.choice([0, 1, 100, rng.randrange(max_size + 1)]) for _ in range(jobs)]
    with ThreadPoolExecutor(clients) as executor:
        futures = [executor.submit(run_job, submit_port, fetch_port, s, report) for s in sizes]
        for future in futures:
            future.result(timeout=JOB_TIMEOUT * 2)
    return report
