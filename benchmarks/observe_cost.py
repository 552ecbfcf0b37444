"""CPU cost per deferred task of the observability hooks (issue 11), in this process.

    .venv/bin/python benchmarks/observe_cost.py

Times, per simulated task, what the middleware adds around a task when metrics are on: the
context copy and traceparent look-up (tracing.py), two counter increments, two histogram
observations and five pool-change gauge updates (reserve, submit, start, end, release), for
three set-ups measured in the same run, one after the other: the dependency-free counters
(``metrics_path`` unset or prometheus_client absent: the baseline), prometheus_client in one
process, and prometheus_client's multiprocess mode (a fresh ``PROMETHEUS_MULTIPROC_DIR``, in a
subprocess, since the mode is chosen when prometheus_client is imported). Thread CPU time
(``time.thread_time``), median of 15 rounds of 2,000 tasks. Not part of ``run.py``.
"""

from __future__ import annotations

import contextvars
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROUNDS, TASKS = 15, 2000


class _Pool:
    pending = 0
    running = 0


def per_task_us(mode: str) -> float:
    from wsgi_deferred.metrics import Metrics
    from wsgi_deferred.tracing import current_traceparent

    metrics = Metrics(prometheus=mode != "builtin")
    assert (metrics.exporter is None) == (mode == "builtin"), "prometheus_client missing"
    pool = _Pool()
    hook = metrics.watch(pool)
    rounds = []
    for _ in range(ROUNDS):
        started = time.thread_time()
        for _ in range(TASKS):
            contextvars.copy_context()
            current_traceparent()
            metrics.incr("deferred")
            if hook is not None:
                for step in range(5):  # the pool's state as a task moves through it
                    pool.pending, pool.running = step % 3, step % 2
                    hook(pool)
            metrics.incr("done")
            metrics.observe("run_seconds", 0.3, "POST /job")
            metrics.observe("wait_seconds", 0.01, "POST /job")
        rounds.append((time.thread_time() - started) / TASKS * 1e6)
    return statistics.median(rounds)


def main() -> None:
    if len(sys.argv) == 2:  # child: one mode
        print(per_task_us(sys.argv[1]))
        return
    results = {}
    for mode in ("builtin", "prometheus", "multiprocess"):
        env = dict(os.environ)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        with tempfile.TemporaryDirectory() as directory:
            if mode == "multiprocess":
                env["PROMETHEUS_MULTIPROC_DIR"] = directory
            out = subprocess.run(
                [sys.executable, __file__, mode], env=env, capture_output=True, text=True,
                check=True, timeout=600,
            ).stdout  # fmt: skip
        results[mode] = float(out)
    base = results["builtin"]
    print("| set-up | CPU µs per task | added vs built-in |")
    print("| --- | --- | --- |")
    for mode, value in results.items():
        print(f"| {mode} | {value:.1f} | +{value - base:.1f} |")


if __name__ == "__main__":
    main()
