"""Observability: counters, gauges and duration histograms from ``middleware.stats()`` and the
Prometheus text endpoint (``metrics_path``, off by default), and task ids in log lines."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from wsgi_deferred import DeferredMiddleware
from wsgi_deferred import metrics as metrics_module
from wsgi_deferred.errors import ConfigurationError
from wsgi_deferred.metrics import DURATION_BUCKETS, Metrics, render_prometheus

PATIENCE = 10.0
JSON = {"Accept": "application/json"}


def wait_until(predicate: Callable[[], bool], timeout: float = PATIENCE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


class GateApp:
    """``/work/*`` blocks until ``release`` (or the client cancels); ``/fail`` raises."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ["PATH_INFO"]
        if path.startswith("/fail"):
            raise RuntimeError("boom")
        if path.startswith("/work"):
            with self._lock:
                self.started.append(path)
            cancelled = environ.get("wsgi_deferred.cancelled")
            deadline = time.monotonic() + PATIENCE
            while not self.release.wait(0.01) and time.monotonic() < deadline:
                if cancelled is not None and cancelled():
                    break
        body = f"app {path}".encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]


@pytest.fixture
def gate() -> Iterator[GateApp]:
    app = GateApp()
    yield app
    app.release.set()


@pytest.fixture
def make(gate: GateApp) -> Iterator[Callable[..., DeferredMiddleware]]:
    made: list[DeferredMiddleware] = []

    def factory(**options: Any) -> DeferredMiddleware:
        options.setdefault("routes", ["/work/<n>", "/fail"])
        options.setdefault("store", "memory://")
        middleware = DeferredMiddleware(gate, **options)
        made.append(middleware)
        return middleware

    yield factory
    gate.release.set()
    for middleware in made:
        middleware.close(5)


def final(client: Client, location: str) -> Any:
    deadline = time.monotonic() + PATIENCE
    while True:
        response = client.get(location, headers={**JSON, "Prefer": "wait=5"})
        if response.status_code != 202 or time.monotonic() > deadline:
            return response


# -- Prometheus text: a small parser, strict about the format ------------------------------------

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (-?[0-9.e+-]+|\+Inf|NaN)\Z")


def parse_prometheus(text: str) -> dict[str, float]:
    """``{'name{labels}': value}``; asserts HELP/TYPE precede every family's samples."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    helped: set[str] = set()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helped.add(line.split()[2])
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert kind in ("counter", "gauge", "histogram"), line
            assert name not in types, f"family {name} declared twice"
            types[name] = kind
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, labels = match.group(1), match.group(2) or ""
        family = re.sub(r"_(bucket|sum|count)\Z", "", name) if name not in types else name
        assert family in types and family in helped, f"{name} has no TYPE/HELP"
        if types[family] == "counter":
            assert name.endswith("_total"), name
        key = name + labels
        assert key not in samples, f"duplicate series {key}"
        samples[key] = float(match.group(3))
    return samples


def test_metrics_counts_and_histograms() -> None:
    metrics = Metrics()
    metrics.incr("deferred")
    metrics.incr("deferred", 2)
    for seconds in (0.004, 0.3, 0.3, 7.0, 5000.0):
        metrics.observe("run_seconds", seconds)
    snap = metrics.snapshot()
    assert snap["counters"] == {"deferred": 3}
    run = snap["durations"]["run_seconds"]
    assert run["count"] == 5
    assert run["sum"] == pytest.approx(5007.604)
    assert run["max"] == 5000.0
    buckets = run["buckets"]
    assert list(buckets) == list(DURATION_BUCKETS)
    assert buckets[0.01] == 1 and buckets[0.25] == 1 and buckets[0.5] == 3
    assert buckets[10.0] == 4 and buckets[DURATION_BUCKETS[-1]] == 4  # 5000 s only in +Inf
    assert list(buckets.values()) == sorted(buckets.values())  # cumulative


def test_render_prometheus_is_well_formed() -> None:
    metrics = Metrics()
    metrics.incr("deferred", 4)
    metrics.incr("done", 3)
    metrics.incr("rejected_pool_full")
    metrics.observe("run_seconds", 1.5)
    metrics.observe("wait_seconds", 0.02)
    stats = {**metrics.snapshot(), "pending": 5, "running": 2, "queued": 3}
    samples = parse_prometheus(render_prometheus(stats))
    assert samples['wsgi_deferred_tasks{state="queued"}'] == 3
    assert samples['wsgi_deferred_tasks{state="running"}'] == 2
    assert samples["wsgi_deferred_queue_depth"] == 3
    assert samples["wsgi_deferred_pending"] == 5
    assert samples['wsgi_deferred_tasks_finished_total{state="done"}'] == 3
    assert samples['wsgi_deferred_tasks_finished_total{state="lost"}'] == 0  # always exported
    assert samples['wsgi_deferred_requests_total{event="deferred"}'] == 4
    assert samples['wsgi_deferred_requests_total{event="rejected_pool_full"}'] == 1
    assert 'wsgi_deferred_requests_total{event="done"}' not in samples  # not counted twice
    assert samples['wsgi_deferred_run_seconds_bucket{le="1"}'] == 0
    assert samples['wsgi_deferred_run_seconds_bucket{le="2.5"}'] == 1
    assert samples['wsgi_deferred_run_seconds_bucket{le="+Inf"}'] == 1
    assert samples["wsgi_deferred_run_seconds_count"] == 1
    assert samples["wsgi_deferred_run_seconds_sum"] == 1.5
    assert samples['wsgi_deferred_wait_seconds_bucket{le="0.05"}'] == 1


def test_render_prometheus_of_a_fresh_middleware_has_every_family(
    make: Callable[..., DeferredMiddleware],
) -> None:
    samples = parse_prometheus(render_prometheus(make().stats()))
    for key in (
        'wsgi_deferred_tasks{state="queued"}',
        "wsgi_deferred_queue_depth",
        "wsgi_deferred_run_seconds_count",
        "wsgi_deferred_wait_seconds_count",
        'wsgi_deferred_tasks_finished_total{state="failed"}',
    ):
        assert samples[key] == 0, key


# -- the middleware's numbers follow real tasks -----------------------------------------------


@pytest.fixture(params=["prometheus_client", "builtin"])
def exporter(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both endpoints: prometheus_client's (process-wide, so tests compare deltas) and the
    dependency-free one served when prometheus_client is not installed."""
    if request.param == "builtin":
        monkeypatch.setattr(metrics_module, "load_exporter", lambda: None)
    return str(request.param)


def test_gauges_counters_and_durations_follow_tasks(
    make: Callable[..., DeferredMiddleware], gate: GateApp, exporter: str
) -> None:
    middleware = make(workers=1, metrics_path="/_metrics")
    assert (middleware.metrics.exporter is not None) == (exporter == "prometheus_client")
    client = Client(middleware)
    # prometheus_client's histograms are per rule; the built-in endpoint has one histogram.
    rule = '{rule="/work/<n>"}' if exporter == "prometheus_client" else ""
    before = parse_prometheus(client.get("/_metrics").get_data(as_text=True))

    def delta(samples: dict[str, float], key: str) -> float:
        return samples[key] - before.get(key, 0)

    locations = []
    for n in range(3):
        accepted = client.post(f"/work/{n}", headers=JSON)
        assert accepted.status_code == 202
        locations.append(accepted.headers["Location"])
    wait_until(lambda: len(gate.started) == 1)

    stats = middleware.stats()
    assert (stats["pending"], stats["running"], stats["queued"]) == (3, 1, 2)
    assert stats["counters"]["deferred"] == 3
    scraped = client.get("/_metrics")
    assert scraped.status_code == 200
    samples = parse_prometheus(scraped.get_data(as_text=True))
    assert samples['wsgi_deferred_tasks{state="running"}'] == 1
    assert samples['wsgi_deferred_tasks{state="queued"}'] == 2
    assert samples["wsgi_deferred_queue_depth"] == 2
    assert samples["wsgi_deferred_pending"] == 3
    assert delta(samples, 'wsgi_deferred_requests_total{event="deferred"}') == 3

    time.sleep(0.3)  # the queued tasks wait at least this long for the one worker
    gate.release.set()
    for location in locations:
        assert final(client, location).status_code == 200
    wait_until(lambda: middleware.stats()["pending"] == 0)

    stats = middleware.stats()
    assert stats["counters"]["done"] == 3
    assert (stats["pending"], stats["running"], stats["queued"]) == (0, 0, 0)
    run, waited = stats["durations"]["run_seconds"], stats["durations"]["wait_seconds"]
    assert run["count"] == 3 and run["max"] >= 0.3
    assert waited["count"] == 3 and waited["max"] >= 0.3
    samples = parse_prometheus(client.get("/_metrics").get_data(as_text=True))
    assert delta(samples, 'wsgi_deferred_tasks_finished_total{state="done"}') == 3
    assert delta(samples, f"wsgi_deferred_run_seconds_count{rule}") == 3
    labels = 'le="0.25"' + (f",{rule[1:-1]}" if rule else "")  # prometheus_client: le first
    wait_bucket = f"wsgi_deferred_wait_seconds_bucket{{{labels}}}"
    assert delta(samples, wait_bucket) <= 1  # two waited longer
    assert delta(samples, f"wsgi_deferred_wait_seconds_count{rule}") == 3
    assert samples["wsgi_deferred_queue_depth"] == 0
    assert samples['wsgi_deferred_tasks{state="running"}'] == 0
    assert samples["wsgi_deferred_pending"] == 0


def test_failed_and_cancelled_tasks_are_counted_once(
    make: Callable[..., DeferredMiddleware], gate: GateApp
) -> None:
    middleware = make(workers=2)
    client = Client(middleware)

    failing = client.post("/fail", headers=JSON)
    assert final(client, failing.headers["Location"]).status_code == 500

    running = client.post("/work/1", headers=JSON)
    wait_until(lambda: gate.started == ["/work/1"])
    assert client.delete(running.headers["Location"]).status_code == 204
    wait_until(lambda: middleware.stats()["pending"] == 0)  # it saw cancelled() and ended

    counters = middleware.stats()["counters"]
    assert counters["failed"] == 1
    assert counters["cancelled"] == 1  # once, although it was running when cancelled
    assert counters.get("done", 0) == 0


def test_inline_and_rejections_are_counted(
    make: Callable[..., DeferredMiddleware], gate: GateApp
) -> None:
    middleware = make(workers=1, max_pending=1, defer_after=2)
    client = Client(middleware)
    assert client.get("/quick").status_code == 200  # raced and finished within defer_after
    accepted = client.post("/work/1", headers=JSON)
    assert accepted.status_code == 202
    assert client.post("/work/2", headers=JSON).status_code == 503  # max_pending reached
    counters = middleware.stats()["counters"]
    assert counters["inline"] == 1
    assert counters["deferred"] == 1
    assert counters["rejected_pool_full"] == 1


# -- the endpoint ---------------------------------------------------------------------------


def test_metrics_endpoint_is_off_by_default(make: Callable[..., DeferredMiddleware]) -> None:
    client = Client(make())
    for path in ("/metrics", "/_deferred/metrics", "/_metrics"):
        response = client.get(path)
        assert response.data == f"app {path}".encode()  # the app answered, not us


def test_metrics_endpoint_methods_and_headers(make: Callable[..., DeferredMiddleware]) -> None:
    client = Client(make(metrics_path="/ops/deferred-metrics"))
    response = client.get("/ops/deferred-metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-store"
    assert int(response.headers["Content-Length"]) == len(response.data)
    head = client.head("/ops/deferred-metrics")
    assert head.status_code == 200 and head.data == b""
    post = client.post("/ops/deferred-metrics")
    assert post.status_code == 405 and post.headers["Allow"] == "GET, HEAD"
    assert client.get("/ops/deferred-metrics/x").data == b"app /ops/deferred-metrics/x"


@pytest.mark.parametrize("path", ["/status/metrics", "/status/", "metrics"])
def test_metrics_path_is_never_on_the_status_path(
    make: Callable[..., DeferredMiddleware], path: str
) -> None:
    with pytest.raises(ConfigurationError, match="metrics_path"):
        make(metrics_path=path)


# -- logs ---------------------------------------------------------------------------------


def test_every_log_line_about_a_task_names_its_id(
    make: Callable[..., DeferredMiddleware], gate: GateApp, caplog: pytest.LogCaptureFixture
) -> None:
    middleware = make(workers=2)
    client = Client(middleware)
    gate.release.set()
    with caplog.at_level(logging.DEBUG, logger="wsgi_deferred"):
        ids = []
        for path in ("/work/1", "/fail"):
            accepted = client.post(path, headers=JSON)
            ids.append(accepted.headers["Location"].rsplit("/", 1)[1])
            final(client, accepted.headers["Location"])
        gate.release.clear()
        cancelled = client.post("/work/2", headers=JSON)
        ids.append(cancelled.headers["Location"].rsplit("/", 1)[1])
        wait_until(lambda: "/work/2" in gate.started)
        client.delete(cancelled.headers["Location"])
        wait_until(lambda: middleware.stats()["pending"] == 0)

    lines = [r.getMessage() for r in caplog.records if r.name == "wsgi_deferred"]
    about_tasks = [line for line in lines if not line.startswith("using store")]
    assert len(about_tasks) >= 7, lines  # deferred/started/outcome x3 at least
    for line in about_tasks:
        assert any(task_id in line for task_id in ids), f"no task id in {line!r}"
    for task_id in ids:
        assert sum(task_id in line for line in about_tasks) >= 2
    failed = [r for r in caplog.records if ids[1] in r.getMessage() and r.exc_info]
    assert failed, "the failure's traceback is logged with its task id"


# -- prometheus_client: the default registry, and the endpoint without it ---------------------


def test_our_metrics_are_in_the_default_registry(
    make: Callable[..., DeferredMiddleware], gate: GateApp
) -> None:
    import prometheus_client  # in the test extra: missing must fail, not skip

    gate.release.set()
    middleware = make(metrics_path="/_metrics")
    client = Client(middleware)

    def app_metrics() -> dict[str, float]:  # what an app's own /metrics would expose
        return parse_prometheus(prometheus_client.generate_latest().decode())

    before = app_metrics()
    accepted = client.post("/work/1", headers=JSON)
    assert final(client, accepted.headers["Location"]).status_code == 200
    wait_until(lambda: middleware.stats()["pending"] == 0)
    after = app_metrics()
    key = 'wsgi_deferred_requests_total{event="deferred"}'
    assert after[key] - before.get(key, 0) == 1
    run = 'wsgi_deferred_run_seconds_count{rule="/work/<n>"}'
    assert after[run] - before.get(run, 0) == 1
    assert "process_cpu_seconds_total" in client.get("/_metrics").get_data(as_text=True)


NO_PROMETHEUS = """
import sys
sys.modules["prometheus_client"] = None  # as if it were not installed
from werkzeug.test import Client
from wsgi_deferred import DeferredMiddleware
def app(environ, start_response):
    start_response("200 OK", [])
    return [b""]
middleware = DeferredMiddleware(app, routes=["/x"], store="memory://", metrics_path="/m")
assert middleware.metrics.exporter is None
response = Client(middleware).get("/m")
assert response.status_code == 200, response.status
assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
sys.stdout.write(response.get_data(as_text=True))
middleware.close(1)
"""


def test_without_prometheus_client_the_endpoint_is_per_process_text() -> None:
    result = subprocess.run(
        [sys.executable, "-c", NO_PROMETHEUS], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    samples = parse_prometheus(result.stdout)
    assert samples['wsgi_deferred_tasks_finished_total{state="done"}'] == 0
    assert samples["wsgi_deferred_run_seconds_count"] == 0  # no rule label: the built-in one
    assert not any(name.startswith("python_") for name in samples)


IMPORTS = """
import sys
from wsgi_deferred import DeferredMiddleware
app = lambda environ, start_response: []
DeferredMiddleware(app, routes=["/x"], store="memory://").close(1)
print("prometheus_client" in sys.modules, "opentelemetry" in sys.modules)
DeferredMiddleware(app, routes=["/x"], store="memory://", metrics_path="/m").close(1)
print("prometheus_client" in sys.modules, "opentelemetry" in sys.modules)
"""


def test_prometheus_client_is_imported_only_when_metrics_are_on() -> None:
    result = subprocess.run(
        [sys.executable, "-c", IMPORTS], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["False False", "True False"]


def test_a_multiprocess_directory_that_does_not_exist_is_a_configuration_error(
    tmp_path: Path,
) -> None:
    code = (
        "from wsgi_deferred import DeferredMiddleware\n"
        "DeferredMiddleware(lambda e, s: [], store='memory://', metrics_path='/m')\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "missing")}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("wsgi_deferred.errors.ConfigurationError: PROMETHEUS_MULTIPROC_DIR=")


RACING_BOOT = """
import os, sys, threading
from wsgi_deferred import DeferredMiddleware
middleware = DeferredMiddleware(lambda e, s: [], store="memory://", metrics_path="/m")
booting = os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "counter_424242.db")
open(booting, "wb").close()  # a worker that has created its file but not sized it yet
threading.Timer(0.02, os.remove, [booting]).start()
body, _ = middleware.metrics.exporter.render()
assert b"wsgi_deferred_requests_total" in body
middleware.close(1)
"""


def test_a_scrape_racing_a_booting_worker_is_retried(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", RACING_BOOT], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
