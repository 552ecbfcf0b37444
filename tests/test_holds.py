"""The hold budget (wsgi_deferred/holds.py) on every path, in process.

docs/protocol.md, "Holds": a held request takes a slot with a non-blocking acquire; past the
budget a poll is answered at once (202 + Retry-After, no Preference-Applied: wait) and an
inline wait gets the 202 at once; the slot is released on every way out.
"""

from __future__ import annotations

import sys
import threading
import types
from collections.abc import Iterator
from typing import Any

import apps
import pytest
from apps import PATIENCE, Harness, Result, SlowApp, request, status_request, wait_until

from wsgi_deferred import DeferredMiddleware
from wsgi_deferred.errors import StoreUnavailable
from wsgi_deferred.holds import (
    DEFAULT_MAX_HOLDS,
    GREEN_MAX_HOLDS,
    INLINE,
    POLL,
    HoldBudget,
    holds_for_threads,
)
from wsgi_deferred.stores.memory import MemoryStore

THREADED = {"wsgi.multithread": True}
SYNC = {"wsgi.multithread": False}


@pytest.fixture
def make_mw() -> Iterator[Harness]:
    with Harness() as harness:
        yield harness


def in_thread(fn: Any) -> tuple[threading.Thread, list[Result]]:
    out: list[Result] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


def applied(result: Result) -> str:
    return result.header("Preference-Applied") or ""


# -- the budget itself --------------------------------------------------------------------------


def test_acquire_is_bounded_non_blocking_and_released() -> None:
    budget = HoldBudget(max_holds=2)
    assert budget.try_acquire(THREADED) and budget.try_acquire(THREADED)
    assert not budget.try_acquire(THREADED)  # refused at once, not queued
    assert budget.held == 2 and budget.refused == 1
    budget.release()
    assert budget.try_acquire(THREADED)
    budget.release()
    budget.release()
    budget.release()  # one too many never goes negative
    assert budget.held == 0


def test_the_context_manager_releases_when_the_block_raises() -> None:
    budget = HoldBudget(max_holds=1)
    with pytest.raises(OSError), budget.hold(THREADED) as held:
        assert held and budget.held == 1
        raise OSError("client went away")
    assert budget.held == 0
    with budget.hold(THREADED) as first, budget.hold(THREADED) as second:
        assert first and not second
    assert budget.held == 0


def test_defaults_per_kind_of_server(monkeypatch: pytest.MonkeyPatch) -> None:
    budget = HoldBudget()
    assert budget.limit(THREADED) == DEFAULT_MAX_HOLDS
    assert budget.limit(SYNC, POLL) == 0  # a sync worker never holds a poll
    assert budget.limit(SYNC, INLINE) == 1  # its one request would be running the app anyway
    assert HoldBudget(max_holds=9).limit(SYNC, POLL) == 0
    assert HoldBudget(max_holds=9).limit(THREADED) == 9
    # gevent: threading patched -> a large budget (the check never imports gevent itself).
    fake = types.ModuleType("gevent.monkey")
    fake.is_module_patched = lambda name: name == "threading"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gevent.monkey", fake)
    assert HoldBudget().limit(THREADED) == GREEN_MAX_HOLDS
    assert HoldBudget(max_holds=3).limit(THREADED) == 3  # by hand wins


def test_eventlet_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("eventlet.patcher")
    fake.is_monkey_patched = lambda name: name == "thread"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "eventlet.patcher", fake)
    assert HoldBudget().limit(THREADED) == GREEN_MAX_HOLDS


def test_a_forked_child_starts_with_no_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    budget = HoldBudget(max_holds=1)
    assert budget.try_acquire(THREADED)
    monkeypatch.setattr("os.getpid", lambda: -1)  # as in a child forked while holding
    assert budget.held == 0 and budget.try_acquire(THREADED)


@pytest.mark.parametrize(("threads", "holds"), [(1, 0), (2, 1), (4, 1), (8, 2), (32, 8)])
def test_holds_for_threads_leaves_most_threads_to_pages(threads: int, holds: int) -> None:
    assert holds_for_threads(threads) == holds


def test_bad_budget_is_refused() -> None:
    with pytest.raises(ValueError):
        HoldBudget(max_holds=-1)


# -- status polls -------------------------------------------------------------------------------


def test_a_long_poll_past_the_budget_is_answered_at_once(make_mw: Harness) -> None:
    slow = SlowApp()
    mw = make_mw(slow, routes=["/slow"], max_holds=1)
    accepted = request(mw, "GET", "/slow")
    assert slow.started.wait(PATIENCE)
    thread, held = in_thread(lambda: status_request(mw, accepted.location, wait=PATIENCE))
    assert wait_until(lambda: mw.holds.held == 1)
    refused = status_request(mw, accepted.location, wait=PATIENCE)
    assert not slow.finished.is_set()  # answered while the task still runs: not held
    assert refused.code == 202
    assert refused.header("Retry-After") == "1"
    assert "wait" not in applied(refused)
    assert refused.json()["state"] == "running"
    slow.release.set()
    thread.join(PATIENCE)
    assert held[0].code == 200 and held[0].body == b"slow done"
    assert mw.holds.held == 0
    assert mw.holds.refused == 1


def test_a_held_poll_that_times_out_says_so_and_frees_its_slot(make_mw: Harness) -> None:
    slow = SlowApp()
    mw = make_mw(slow, routes=["/slow"], max_holds=1)
    accepted = request(mw, "GET", "/slow")
    timed_out = status_request(mw, accepted.location, wait=0.05)
    assert timed_out.code == 202 and applied(timed_out) == "wait=1"
    assert mw.holds.held == 0


def test_a_sync_worker_never_holds_a_poll(make_mw: Harness) -> None:
    slow = SlowApp()
    mw = make_mw(slow, routes=["/slow"], max_holds=5)
    accepted = request(mw, "GET", "/slow")
    assert slow.started.wait(PATIENCE)
    answer = status_request(mw, accepted.location, wait=PATIENCE, **SYNC)
    assert answer.code == 202 and "wait" not in applied(answer)
    assert not slow.finished.is_set()
    assert mw.holds.refused == 1 and mw.holds.held == 0


class DownWhileWaiting(MemoryStore):
    def wait(self, task_id: str, timeout: float) -> Any:
        raise StoreUnavailable("gone")


def test_a_store_failing_during_the_hold_frees_the_slot(make_mw: Harness) -> None:
    slow = SlowApp()
    mw = make_mw(slow, routes=["/slow"], store=DownWhileWaiting(), max_holds=1)
    accepted = request(mw, "GET", "/slow")
    answer = status_request(mw, accepted.location, wait=PATIENCE)
    assert answer.code == 503 and answer.header("Retry-After")
    assert mw.holds.held == 0


def test_a_client_gone_during_the_answer_frees_the_slot(make_mw: Harness) -> None:
    slow = SlowApp()
    mw = make_mw(slow, routes=["/slow"], max_holds=1)
    accepted = request(mw, "GET", "/slow")
    errors: list[BaseException] = []

    def broken_pipe(status: str, headers: Any, exc_info: Any = None) -> Any:
        raise BrokenPipeError("client went away")

    def poll(environ: dict[str, Any]) -> None:
        try:
            list(mw(environ, broken_pipe))
        except BrokenPipeError as exc:
            errors.append(exc)

    environ = apps.make_environ(accepted.location, headers={"Prefer": "wait=5"})
    thread = threading.Thread(target=poll, args=(environ,), daemon=True)
    thread.start()
    assert wait_until(lambda: mw.holds.held == 1)
    slow.release.set()
    thread.join(PATIENCE)
    assert len(errors) == 1 and mw.holds.held == 0
    # ... and of an inline wait (Prefer: wait on a marked request).
    poll(apps.make_environ("/slow", headers={"Prefer": "wait=5"}))
    assert len(errors) == 2 and mw.holds.held == 0


# -- inline waits -------------------------------------------------------------------------------


def test_an_inline_wait_past_the_budget_gets_the_202_at_once(make_mw: Harness) -> None:
    slow = SlowApp()
    mw = make_mw(slow, routes=["/slow"], max_holds=0)
    answer = request(mw, "GET", "/slow", headers={"Prefer": "wait=5"})
    assert answer.code == 202 and not slow.finished.is_set()
    # No slot for a poll either: answered at once, the task still running.
    poll = status_request(mw, answer.location, wait=PATIENCE)
    assert poll.code == 202 and not slow.finished.is_set()
    assert mw.holds.refused == 2


def test_defer_after_waits_only_within_the_budget(make_mw: Harness) -> None:
    slow = SlowApp()
    mw = make_mw(slow, defer_after=PATIENCE, max_holds=1)
    thread, first = in_thread(lambda: request(mw, "GET", "/a"))
    assert wait_until(lambda: mw.holds.held == 1)
    second = request(mw, "GET", "/b")  # the one slot is taken: the 202 at once
    assert second.code == 202
    slow.release.set()
    thread.join(PATIENCE)
    assert first[0].code == 200 and first[0].body == b"slow done"  # answered inline
    assert mw.holds.held == 0


def test_a_sync_worker_still_waits_inline(make_mw: Harness) -> None:
    mw = make_mw(apps.plain_app, defer_after=PATIENCE, max_holds=0)
    assert request(mw, "GET", "/a", **SYNC).code == 200
    assert mw.holds.held == 0


def test_max_holds_is_a_checked_keyword() -> None:
    from wsgi_deferred.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        DeferredMiddleware(apps.plain_app, max_holds=-1)


# -- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "env", "holds"),
    [
        (["--threads", "8"], {}, 2),
        (["--threads", "32"], {}, 8),
        (["--threads", "1"], {}, 0),
        (["--threads", "8", "--max-holds", "5"], {}, 5),
        (["--threads", "8"], {"WSGI_DEFERRED_MAX_HOLDS": "3"}, 3),
        (["--threads", "8"], {"WSGI_DEFERRED_MAX_HOLDS": "auto"}, 2),
    ],
)
def test_serve_sets_the_budget_from_threads(
    argv: list[str], env: dict[str, str], holds: int
) -> None:
    from wsgi_deferred.cli.options import build_serve_parser
    from wsgi_deferred.cli.serve import serve_options

    args = build_serve_parser().parse_args(["app:app", *argv])
    assert serve_options(args, env)["max_holds"] == holds


# -- back-off of refused crowds -----------------------------------------------------------------


def test_backoff_grows_with_the_refusals_of_the_last_second() -> None:
    from wsgi_deferred.holds import MAX_BACKOFF, REFUSED_POLLS_PER_SECOND

    budget = HoldBudget(max_holds=0)
    assert budget.backoff() == 1
    for _ in range(REFUSED_POLLS_PER_SECOND * 3):
        assert not budget.try_acquire(THREADED)
    assert budget.backoff() in (3, 4)  # 3x the rate (4 if the second rolled over mid-way)
    for _ in range(REFUSED_POLLS_PER_SECOND * 100):
        budget.try_acquire(THREADED)
    assert budget.backoff() == MAX_BACKOFF


def test_a_refused_crowd_is_spread_out_unless_the_task_has_an_estimate(make_mw: Harness) -> None:
    from wsgi_deferred.holds import REFUSED_POLLS_PER_SECOND

    slow = SlowApp()
    mw = make_mw(slow, routes=["/slow/<id>"], max_holds=0)
    accepted = request(mw, "GET", "/slow/1")
    for _ in range(REFUSED_POLLS_PER_SECOND * 4):
        status_request(mw, accepted.location, wait=PATIENCE)
    crowded = status_request(mw, accepted.location, wait=PATIENCE)
    assert crowded.code == 202 and int(crowded.header("Retry-After") or 0) >= 4
    page = status_request(mw, accepted.location, wait=PATIENCE, headers={"Accept": "text/html"})
    assert (page.header("Refresh") or "").startswith(page.header("Retry-After") or "?")
    # With an estimate the client is told when the end should come, crowd or not.
    mw.history.record("x", "GET /slow/1", 2.5)
    aimed = status_request(mw, accepted.location, wait=PATIENCE)
    assert aimed.header("Retry-After") == "2"
