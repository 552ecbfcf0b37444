"""Shutdown never stores a cut-short answer (issue 10).

When the drain timeout cuts a task, the pool sets its cancel flag; an app that honours
``wsgi_deferred.cancelled()`` then returns early. That early answer must not become the
result: the task reads ``lost`` (or, on a ``retry`` rule, runs again elsewhere).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from apps import PATIENCE, request, status_request, wait_until

from wsgi_deferred import DeferredMiddleware
from wsgi_deferred.stores.memory import MemoryStore
from wsgi_deferred.task import TaskState


class SlowFailStore(MemoryStore):
    """A memory store whose ``fail`` takes a while: the window in which the old code let
    the app's early return be stored as ``done`` before shutdown's ``lost`` landed."""

    def fail(self, task_id: str, state: str, message: str | None, expires: float) -> bool:
        time.sleep(0.3)
        return super().fail(task_id, state, message, expires)


class CancelAwareApp:
    """Works until cancelled, then answers ``409 cancelled`` at once (like the example app)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.returned = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.started.set()
        cancelled = environ["wsgi_deferred.cancelled"]
        deadline = time.monotonic() + PATIENCE * 4
        while not cancelled() and time.monotonic() < deadline:
            time.sleep(0.005)
        start_response("409 Conflict", [("Content-Type", "text/plain")])
        self.returned.set()
        return [b"cancelled"]


def test_a_task_cut_by_the_drain_timeout_reads_lost_not_its_early_answer() -> None:
    store = SlowFailStore()
    app = CancelAwareApp()
    mw = DeferredMiddleware(app, routes=["POST /work"], store=store, drain_timeout=0.1)
    accepted = request(mw, "POST", "/work")
    assert accepted.code == 202
    assert app.started.wait(PATIENCE)
    mw.pool.shutdown()
    assert app.returned.wait(PATIENCE), "the app never saw cancelled()"
    assert wait_until(lambda: store.get(accepted.task_id).state.is_final)  # type: ignore[union-attr]
    record = store.get(accepted.task_id)
    assert record is not None
    assert record.state is TaskState.LOST, record
    assert store.open_body(accepted.task_id) is None
    final = status_request(mw, accepted.location)
    assert final.code == 500 and final.json()["state"] == "lost"
    assert b"cancelled" not in final.body


def test_a_task_that_finishes_within_the_drain_timeout_keeps_its_answer() -> None:
    store = MemoryStore()
    release = threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        release.wait(PATIENCE)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"finished"]

    mw = DeferredMiddleware(app, routes=["POST /work"], store=store, drain_timeout=PATIENCE)
    accepted = request(mw, "POST", "/work")
    assert wait_until(lambda: mw.pool.running == 1)
    threading.Timer(0.1, release.set).start()
    mw.pool.shutdown()
    final = status_request(mw, accepted.location)
    assert (final.code, final.body) == (200, b"finished")
