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
``environ["wsgi_deferred.traceparent"]``.
"""

from __future__ import annotations

import sys

__all__ = ["current_traceparent"]


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
