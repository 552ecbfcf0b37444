"""Trace context flows into the replay: with OpenTelemetry's own WSGI middleware outside and
inside ours, the replay's span belongs to the trace of the request that got the ``202``."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from werkzeug.test import Client

from wsgi_deferred import DeferredMiddleware

PATIENCE = 10.0
JSON = {"Accept": "application/json"}


@pytest.fixture
def tracing() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    # A provider of the test's own (never the global one, which can be set only once).
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def make_app(provider: TracerProvider, seen: list[dict[str, Any]]) -> Any:
    tracer = provider.get_tracer("tests.app")

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with tracer.start_as_current_span("app work"):
            seen.append(dict(environ))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"traced"]

    return app


def wait_for(exporter: InMemorySpanExporter, count: int) -> list[ReadableSpan]:
    deadline = time.monotonic() + PATIENCE
    while len(spans := list(exporter.get_finished_spans())) < count:
        assert time.monotonic() < deadline, [s.name for s in spans]
        time.sleep(0.01)
    return spans


def final(client: Client, location: str) -> Any:
    deadline = time.monotonic() + PATIENCE
    while True:
        response = client.get(location, headers={**JSON, "Prefer": "wait=5"}, buffered=True)
        if response.status_code != 202 or time.monotonic() > deadline:
            return response


@pytest.mark.parametrize("defer_after", [None, 0.05], ids=["marked", "defer_after"])
def test_replay_span_is_in_the_trace_of_the_accepting_request(
    tracing: tuple[TracerProvider, InMemorySpanExporter], defer_after: float | None
) -> None:
    provider, exporter = tracing
    seen: list[dict[str, Any]] = []
    inner = OpenTelemetryMiddleware(make_app(provider, seen), tracer_provider=provider)
    options: dict[str, Any] = {"store": "memory://", "defer_after": defer_after}
    if defer_after is None:
        options["routes"] = ["POST /work"]
    deferred = DeferredMiddleware(inner, **options)
    outer = OpenTelemetryMiddleware(deferred, tracer_provider=provider)
    try:
        client = Client(outer)
        if defer_after is not None:
            # Slow enough to be handed over: the app waits for the inline wait to end.
            gate_app = inner.wsgi

            def slow(environ: dict[str, Any], start_response: Any) -> Any:
                time.sleep(defer_after * 4)
                return gate_app(environ, start_response)

            inner.wsgi = slow
        accepted = client.post("/work", headers=JSON, buffered=True)
        assert accepted.status_code == 202
        assert final(client, accepted.headers["Location"]).data == b"traced"
        spans = wait_for(exporter, 4)  # outer POST, inner replay, app work, status GET(s)
    finally:
        deferred.close(5)

    servers = [s for s in spans if s.kind is SpanKind.SERVER]
    # The POST that got the 202 (status polls of a running task answer 202 too).
    accepting = [
        s
        for s in servers
        if s.attributes.get("http.status_code") == 202 and s.attributes.get("http.method") == "POST"
    ]
    assert len(accepting) == 1, [(s.name, dict(s.attributes or {})) for s in servers]
    post = accepting[0]
    # The inner OpenTelemetryMiddleware finds a current span, so it makes its span a child of
    # it (kind INTERNAL); in an empty context it would start a new trace (kind SERVER, no parent).
    replays = [
        s for s in spans if s.parent is not None and s.parent.span_id == post.context.span_id
    ]
    assert len(replays) == 1, [(s.name, s.kind, s.parent, s.context) for s in spans]
    replay = replays[0]
    assert replay.context.trace_id == post.context.trace_id
    (work,) = [s for s in spans if s.name == "app work"]
    assert work.context.trace_id == post.context.trace_id
    assert work.parent is not None and work.parent.span_id == replay.context.span_id
    # The status polls are requests of their own: their own traces, not the task's.
    assert replay.name == "POST /work" and replay.kind is SpanKind.INTERNAL
    polls = [s for s in servers if s is not post]
    assert polls and all(s.context.trace_id != post.context.trace_id for s in polls)
    # The traceparent kept for out-of-process executors names the accepting span.
    (environ,) = seen
    traceparent = environ["wsgi_deferred.traceparent"]
    ids = f"{post.context.trace_id:032x}-{post.context.span_id:016x}"
    assert traceparent == f"00-{ids}-{int(post.context.trace_flags):02x}"


def test_replay_sees_the_accepting_requests_contextvars_and_no_leak() -> None:
    request_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_var")
    seen: list[str | None] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(request_var.get(None))
        request_var.set("changed by the replay")  # must stay inside the replay's copy
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    deferred = DeferredMiddleware(app, routes=["POST /work/<n>"], store="memory://", workers=1)

    def outer(environ: dict[str, Any], start_response: Any) -> Any:
        request_var.set(environ["PATH_INFO"])
        return deferred(environ, start_response)

    try:
        client = Client(outer)
        for n in range(3):
            accepted = client.post(f"/work/{n}", headers=JSON)
            assert final(client, accepted.headers["Location"]).data == b"ok"
    finally:
        deferred.close(5)
    assert seen == ["/work/0", "/work/1", "/work/2"]
    assert request_var.get(None) != "changed by the replay"  # the copy kept it


def test_no_traceparent_without_opentelemetry_spans() -> None:
    seen: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ.get("wsgi_deferred.traceparent", "missing"))
        start_response("200 OK", [])
        return [b""]

    deferred = DeferredMiddleware(app, routes=["POST /work"], store="memory://")
    try:
        client = Client(deferred)
        accepted = client.post("/work", headers=JSON, buffered=True)
        assert final(client, accepted.headers["Location"]).status_code == 200
    finally:
        deferred.close(5)
    assert seen == [None]  # no current span: the key is there, empty


def test_a_replay_in_another_process_continues_the_trace_from_the_stored_traceparent(
    tracing: tuple[TracerProvider, InMemorySpanExporter], tmp_path: Any
) -> None:
    """The execution tier's case: the process that replays the task (a Celery worker, a
    sibling taking over a retry) shares no context object with the one that accepted it; the
    captured request in the store carries the traceparent instead (tracing.py)."""
    from apps import make_environ

    from wsgi_deferred.capture import capture_request
    from wsgi_deferred.executors.delivery import run_delivered
    from wsgi_deferred.runner import Job
    from wsgi_deferred.task import TaskState, new_task_id

    provider, exporter = tracing
    options: dict[str, Any] = {
        "store": f"sqlite:///{tmp_path}/t.db",
        "routes": ["POST /work"],
        "retry": ["POST /work"],
        "max_attempts": 2,  # a retry rule: the thread executor keeps the captured request
    }
    seen: list[dict[str, Any]] = []
    accepting = DeferredMiddleware(make_app(provider, seen), **options)
    inner = OpenTelemetryMiddleware(make_app(provider, seen), tracer_provider=provider)
    other = DeferredMiddleware(inner, **options)  # "another process": no shared context
    try:
        environ = make_environ("/work", "POST", data=b"x")
        environ["wsgi.multiprocess"] = True
        with provider.get_tracer("tests").start_as_current_span("accepting request") as span:
            job = Job(accepting.runner, new_task_id(), capture_request(environ, 10**6))
        job.attached = False
        # Stored (queued, with its captured request and traceparent) but never run here: what
        # a remote executor's web process does before it sends the id to the engine.
        accepting.runner.attach(job)
        job.snapshot.discard()
        # Delivered where no context of the accepting request exists, as in a worker.
        ran = contextvars.Context().run(run_delivered, other.runner, job.id)
        assert ran == "ran"
        record = other.get_store().get(job.id)
        assert record is not None and record.state is TaskState.DONE
    finally:
        accepting.close(5)
        other.close(5)
    replays = [s for s in exporter.get_finished_spans() if s.name.startswith("POST")]
    assert len(replays) == 1, [s.name for s in exporter.get_finished_spans()]
    replay = replays[0]
    assert replay.parent is not None, "the replay started a trace of its own"
    assert replay.context.trace_id == span.get_span_context().trace_id
    assert replay.parent.span_id == span.get_span_context().span_id
    assert seen and seen[-1]["wsgi_deferred.traceparent"] == job.traceparent
