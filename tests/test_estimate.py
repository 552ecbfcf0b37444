"""Retry-After worth obeying (wsgi_deferred/estimate.py, docs/protocol.md "Retry-After"):
estimates from this route's history, the task's age and its place in the queue; always a
whole number of seconds >= 1; the estimate in the status body; brief holds of polls whose
task is about to end."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import apps
import pytest
from apps import PATIENCE, Harness, SlowApp, request, status_request, wait_until
from hypothesis import given
from hypothesis import strategies as st

from wsgi_deferred.estimate import (
    HISTORY_PER_ROUTE,
    MAX_RETRY_AFTER,
    DurationHistory,
    retry_after_seconds,
    route_of,
)
from wsgi_deferred.task import TaskRecord, TaskState, new_task_id


@pytest.fixture
def make_mw() -> Iterator[Harness]:
    with Harness() as harness:
        yield harness


def running(label: str, started_ago: float) -> TaskRecord:
    now = time.time()
    return TaskRecord(
        id=new_task_id(),
        state=TaskState.RUNNING,
        created=now - started_ago,
        started=now - started_ago,
        label=label,
    )


def learn(history: DurationHistory, label: str, *seconds: float) -> None:
    for value in seconds:
        history.record(new_task_id(), label, value)


@pytest.mark.parametrize(
    ("label", "route"),
    [
        ("POST /render/42", "POST /render/*"),
        ("POST /render/43/pdf", "POST /render/*/pdf"),
        ("GET /report/" + "a" * 30, "GET /report/*"),
        ("GET /report/weekly", "GET /report/weekly"),
        (None, ""),
    ],
)
def test_routes_fold_id_segments(label: str | None, route: str) -> None:
    assert route_of(label) == route


def test_the_typical_run_is_the_median_of_the_last_runs() -> None:
    history = DurationHistory()
    assert history.typical("POST /r/1") is None
    learn(history, "POST /r/1", 1.0, 9.0, 2.0)
    assert history.typical("POST /r/2") == 2.0  # same route, another id
    assert history.typical("GET /other") is None
    learn(history, "POST /r/1", *([5.0] * HISTORY_PER_ROUTE))  # bounded: old runs age out
    assert history.typical("POST /r/1") == 5.0


def test_a_task_is_learnt_once_however_often_it_is_polled() -> None:
    history = DurationHistory()
    record = TaskRecord(
        id=new_task_id(), state=TaskState.DONE, started=10.0, finished=13.0, label="GET /a"
    )
    history.observe(record)
    history.observe(record)
    learn(history, "GET /a", 1.0)
    assert history.typical("GET /a") == 2.0  # median of (3, 1), not of (3, 3, 1)
    history.observe(TaskRecord(id=new_task_id(), state=TaskState.FAILED, label="GET /a"))
    assert history.typical("GET /a") == 2.0


def test_routes_are_bounded() -> None:
    history = DurationHistory(routes=2)
    learn(history, "GET /a", 1.0)
    learn(history, "GET /b", 1.0)
    learn(history, "GET /c", 1.0)
    assert history.typical("GET /a") is None and history.typical("GET /c") == 1.0


def test_remaining_from_age_queue_and_overrun() -> None:
    history = DurationHistory()
    assert history.remaining(running("GET /a", 0.0)) is None  # no history yet
    learn(history, "GET /a", 4.0)
    assert history.remaining(running("GET /a", 1.0)) == pytest.approx(3.0, abs=0.1)
    # Overran its typical time: half of what it has run so far.
    assert history.remaining(running("GET /a", 10.0)) == pytest.approx(5.0, abs=0.1)
    queued = TaskRecord(id=new_task_id(), state=TaskState.QUEUED, label="GET /a")
    assert history.remaining(queued) == 4.0
    assert history.remaining(queued, queued_ahead=4, workers=2) == 12.0  # 4 * (1 + 4/2)
    done = TaskRecord(id=new_task_id(), state=TaskState.DONE, label="GET /a")
    assert history.remaining(done) == 0.0


@given(
    remaining=st.one_of(st.none(), st.floats(min_value=0, max_value=1e9)),
    age=st.floats(min_value=0, max_value=1e9),
)
def test_retry_after_is_a_whole_number_of_at_least_one_second(
    remaining: float | None, age: float
) -> None:
    seconds = retry_after_seconds(remaining, age)
    assert isinstance(seconds, int) and 1 <= seconds <= MAX_RETRY_AFTER


def test_retry_after_rounds_down_so_the_next_poll_lands_before_the_end() -> None:
    assert retry_after_seconds(0.05, 0) == 1
    assert retry_after_seconds(1.49, 0) == 1
    assert retry_after_seconds(3.9, 0) == 3
    assert retry_after_seconds(None, 0) == 1 and retry_after_seconds(None, 30) == 2


# -- through the middleware ---------------------------------------------------------------------


def test_retry_after_and_the_body_follow_the_routes_history(make_mw: Harness) -> None:
    slow = SlowApp()
    mw = make_mw(slow, routes=["/slow/<id>"])
    learn(mw.history, "GET /slow/1", 3.6, 3.6, 3.6)
    accepted = request(mw, "GET", "/slow/7")
    assert accepted.header("Retry-After") == "3"  # floor(3.6): just before the end
    assert accepted.json()["estimate"] == pytest.approx(3.6, abs=0.2)
    # A route with no history: no estimate, the age-based Retry-After.
    other = make_mw(SlowApp(), routes=["/slow/<id>"])
    fresh = request(other, "GET", "/slow/7")
    assert fresh.header("Retry-After") == "1" and fresh.json()["estimate"] is None


def test_finished_tasks_teach_the_history(make_mw: Harness) -> None:
    mw = make_mw(apps.plain_app, routes=["/x/<id>"])
    for n in range(3):
        accepted = request(mw, "GET", f"/x/{n}")
        assert status_request(mw, accepted.location, wait=PATIENCE).code == 200
    typical = mw.history.typical("GET /x/99")
    assert typical is not None and typical < 1.0


def test_a_queued_task_counts_the_queue(make_mw: Harness) -> None:
    slow = SlowApp()
    mw = make_mw(slow, routes=["/slow/<id>"], workers=1)
    learn(mw.history, "GET /slow/1", 2.0)
    first = request(mw, "GET", "/slow/1")
    assert slow.started.wait(PATIENCE)
    second, third = request(mw, "GET", "/slow/2"), request(mw, "GET", "/slow/3")
    assert first.json()["state"] == "queued"  # as answered: not yet claimed
    # third has one task queued ahead of it on one worker: 2 * (1 + 1) s
    poll = status_request(mw, third.location, **{"wsgi.multithread": False})
    assert poll.json()["state"] == "queued"
    assert poll.json()["estimate"] == pytest.approx(4.0)
    assert poll.header("Retry-After") == "4"
    assert second.code == 202


def test_a_poll_of_a_task_about_to_end_is_briefly_held(make_mw: Harness) -> None:
    slow = SlowApp()
    mw = make_mw(slow, routes=["/slow/<id>"], max_holds=1)
    learn(mw.history, "GET /slow/1", 0.5)
    accepted = request(mw, "GET", "/slow/1")
    out: list[apps.Result] = []
    thread = threading.Thread(target=lambda: out.append(request(mw, "GET", accepted.location)))
    thread.start()  # no Prefer: wait, yet held, as the task should end within 0.5 s
    assert wait_until(lambda: mw.holds.held == 1)
    slow.release.set()
    thread.join(PATIENCE)
    assert out[0].code == 200 and out[0].body == b"slow done"
    assert "Preference-Applied" not in dict(out[0].headers)
    assert mw.holds.held == 0


def test_a_poll_of_a_long_task_is_not_held(make_mw: Harness) -> None:
    slow = SlowApp()
    mw = make_mw(slow, routes=["/slow/<id>"], max_holds=1)
    learn(mw.history, "GET /slow/1", 30.0)
    accepted = request(mw, "GET", "/slow/1")
    poll = request(mw, "GET", accepted.location)
    assert poll.code == 202 and not slow.finished.is_set()
    assert mw.holds.held == 0 and mw.holds.refused == 0  # never asked for a slot
    assert int(poll.header("Retry-After") or 0) >= 29
