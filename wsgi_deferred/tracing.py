"""Trace context for a replay: the accepting request's ``contextvars``, and its traceparent.

A deferred request is replayed in a worker thread, which starts with an empty context. The
runner instead runs the app inside a copy of the context the request was accepted in
(:func:`contextvars.copy_context`, PEP 567), so whatever the accepting request's tracing set
there (OpenTelemetry's current span, for one) is current during the replay: an
``OpenTelemetryMiddleware`` around the wrapped app continues the trace of the request that got
the ``202`` instead of starting a new one.

A process that is not the accepting one (an out-of-process executor) cannot share a context
object; for it the job also keeps the W3C ``traceparent`` of the accepting request's span
(W3C Trace Context, section 3.2), found through OpenTelemetry's propagator when the application
already uses OpenTelemetry (never imported here otherwise), and hands it to the app as
``environ["wsgi_deferred.traceparent"]``. The captured request kept in the store carries it,
and the process that replays it there (``wsgi-deferred worker``, a retry on a sibling) runs the
app in a context whose current span context is that traceparent
(:func:`context_from_traceparent`), so the trace goes on there too.
"""

from __future__ import annotations

import contextvars
import sys

__all__ = ["context_from_traceparent", "current_traceparent"]


def current_traceparent() -> str | None:
    """The ``traceparent`` of the current OpenTelemetry span, or None (no OpenTelemetry in
    this process, no span, or a propagator that failed)."""
    if "opentelemetry.trace" not in sys.modules:  # the app does not trace: cost nothing
        return None
    try:
        from opentelemetry import propagate

        carrier: dict[str, str] = {}
        propagate.inject(carrier)
    except Exception:  # a misconfigured propagator must not cost the request
        return None
    return carrier.get("traceparent")


def context_from_traceparent(traceparent: str | None) -> contextvars.Context:
    """A copy of the current context in which, when the app uses OpenTelemetry, the span
    context that *traceparent* names is current (a remote parent): an OpenTelemetry WSGI
    middleware around the app then starts the replay's span as its child."""
    context = contextvars.copy_context()
    if not traceparent or "opentelemetry.trace" not in sys.modules:
        return context

    def attach() -> None:
        from opentelemetry import context as otel_context
        from opentelemetry import propagate

        otel_context.attach(propagate.extract({"traceparent": traceparent}))

    try:
        context.run(attach)  # the change stays in *context*, not in the caller's
    except Exception:  # a misconfigured propagator must not cost the task
        return contextvars.copy_context()
    return context
