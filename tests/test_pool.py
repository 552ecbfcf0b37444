"""pool.py: the bounded, lazily started, fork-safe worker pool, its heartbeat and its drain."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest
from apps import (
    PATIENCE,
    Harness,
    Result,
    Router,
    SlowApp,
    pool_threads,
    request,
    wait_until,
)

from wsgi_deferred.errors import DeferredError, PoolFull
from wsgi_deferred.pool import ClientLimit, WorkerPool
from wsgi_deferred.task import TaskState


class FakeJob:
    """A PoolJob that blocks until ``release`` is set (or runs at once when *block* is False)."""

    counter = 0

    def __init__(self, client_key: str | None = None, block: bool = True) -> None:
        FakeJob.counter += 1
        self.id = f"job-{FakeJob.counter}"
        self.client_key = client_key
        self.started = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()
        self.thread_name: str | None = None
        if not block:
            self.release.set()

    def run(self) -> None:
        self.thread_name = threading.current_thread().name
        self.started.set()
        self.release.wait(PATIENCE)
        self.finished.set()


class Recorder:
    def __init__(self) -> None:
        self.abandoned: list[tuple[str, str]] = []
        self.beats: list[list[str]] = []
        self.beat = threading.Event()

    def on_abandon(self, job: FakeJob, reason: str) -> None:  # type: ignore[override]
        self.abandoned.append((job.id, reason))

    def on_heartbeat(self, jobs: list[FakeJob]) -> None:  # type: ignore[override]
        self.beats.append([job.id for job in jobs])
        self.beat.set()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def make_pool(recorder: Recorder) -> Iterator[type[WorkerPool]]:
    pools: list[WorkerPool] = []
    jobs: list[FakeJob] = []

    def factory(**options: object) -> WorkerPool:
        options.setdefault("workers", 2)
        options.setdefault("max_pending", 10)
        options.setdefault("on_abandon", recorder.on_abandon)
        options.setdefault("drain_timeout", PATIENCE)
        pool = WorkerPool(**options)  # type: ignore[arg-type]
        pools.append(pool)
        return pool

    factory.jobs = jobs  # type: ignore[attr-defined]
    yield factory  # type: ignore[misc]
    for pool in pools:
        for job in pool.jobs():
            job.release.set()  # type: ignore[attr-defined]
        pool.shutdown()
        assert not [t for t in pool.threads() if t.is_alive()]


@pytest.fixture
def make_mw() -> Iterator[Harness]:
    with Harness() as harness:
        yield harness


def submit(pool: WorkerPool, job: FakeJob) -> FakeJob:
    pool.reserve(job.client_key)
    pool.submit(job)
    return job


# -- lazy start, names -------------------------------------------------------------------------


def assert_child_passed(pid: int) -> None:
    """Reap a forked child that exits 0 on success, or with the number of its failed check."""
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), status
    assert os.WEXITSTATUS(status) == 0, f"child failed at check {os.WEXITSTATUS(status)}"


def test_no_threads_before_the_first_submit(make_pool, recorder: Recorder) -> None:
    before = pool_threads()
    pool = make_pool(workers=3, on_heartbeat=recorder.on_heartbeat, name="wsgi-deferred-lazy")
    assert tuple(pool.threads()) == ()
    pool.reserve()
    assert tuple(pool.threads()) == ()  # a reservation alone starts nothing
    assert pool_threads() == before
    job = FakeJob(block=False)
    pool.submit(job)
    assert job.finished.wait(PATIENCE)
    names = sorted(t.name for t in pool.threads())
    assert names == [
        "wsgi-deferred-lazy-heartbeat",
        "wsgi-deferred-lazy-worker-1",
        "wsgi-deferred-lazy-worker-2",
        "wsgi-deferred-lazy-worker-3",
    ]
    assert all(t.daemon for t in pool.threads())
    assert job.thread_name is not None and job.thread_name.startswith("wsgi-deferred-lazy-worker-")


def test_threads_are_started_once(make_pool) -> None:
    pool = make_pool(workers=2)
    for _ in range(5):
        job = submit(pool, FakeJob(block=False))
        assert job.finished.wait(PATIENCE)
    assert len(tuple(pool.threads())) == 2


def test_middleware_starts_no_threads_until_a_task_is_submitted(make_mw: Harness) -> None:
    before = pool_threads()
    slow = SlowApp()
    mw = make_mw(Router({"/slow": slow}), routes=["/slow"], workers=2)
    assert request(mw, "GET", "/not-deferred/").body == b"hello world"
    assert pool_threads() == before
    assert request(mw, "GET", "/slow").code == 202
    assert len(pool_threads() - before) == 3  # two workers and the heartbeat
    slow.release.set()


# -- admission ---------------------------------------------------------------------------------


def test_max_pending_counts_reserved_queued_and_running(make_pool) -> None:
    pool = make_pool(workers=1, max_pending=3)
    running = submit(pool, FakeJob())
    assert running.started.wait(PATIENCE)
    submit(pool, FakeJob())  # queued behind it
    pool.reserve()  # reserved, not yet submitted
    assert pool.pending == 3 and pool.running == 1
    with pytest.raises(PoolFull) as info:
        pool.reserve()
    assert isinstance(info.value, DeferredError)
    pool.release()
    assert pool.pending == 2
    pool.reserve()  # the released slot is free again
    pool.release()
    running.release.set()


def test_finished_jobs_free_their_slot(make_pool) -> None:
    pool = make_pool(workers=1, max_pending=1)
    job = submit(pool, FakeJob(block=False))
    assert job.finished.wait(PATIENCE)
    assert wait_until(lambda: pool.pending == 0)
    submit(pool, FakeJob(block=False))


def test_per_client_limit(make_pool) -> None:
    pool = make_pool(workers=1, max_pending=10, max_pending_per_client=2)
    first = submit(pool, FakeJob("alice"))
    submit(pool, FakeJob("alice"))
    with pytest.raises(ClientLimit):
        pool.reserve("alice")
    assert issubclass(ClientLimit, PoolFull)
    submit(pool, FakeJob("bob"))  # other clients are not affected
    pool.reserve(None)  # nor are requests without a client key
    pool.release(None)
    first.release.set()
    assert wait_until(lambda: first.id not in {j.id for j in pool.jobs()})
    pool.reserve("alice")  # alice's finished job gave her slot back
    pool.release("alice")
    for job in pool.jobs():
        job.release.set()  # type: ignore[attr-defined]


def test_find_and_jobs(make_pool) -> None:
    pool = make_pool()
    job = submit(pool, FakeJob())
    assert pool.find(job.id) is job
    assert pool.find("nope") is None
    assert [j.id for j in pool.jobs()] == [job.id]
    job.release.set()
    assert wait_until(lambda: pool.find(job.id) is None)


def test_a_job_that_raises_does_not_kill_its_worker(make_pool, caplog) -> None:
    class Exploding(FakeJob):
        def run(self) -> None:
            raise RuntimeError("bug in a job")

    pool = make_pool(workers=1)
    submit(pool, Exploding())
    after = submit(pool, FakeJob(block=False))
    assert after.finished.wait(PATIENCE)
    assert "internal error in worker" in caplog.text
    assert wait_until(lambda: pool.pending == 0)


# -- heartbeat ---------------------------------------------------------------------------------


def test_heartbeat_reports_unfinished_jobs(make_pool, recorder: Recorder) -> None:
    pool = make_pool(heartbeat_interval=0.01, on_heartbeat=recorder.on_heartbeat)
    job = submit(pool, FakeJob())
    assert recorder.beat.wait(PATIENCE)
    assert [job.id] in recorder.beats
    job.release.set()


def test_heartbeat_survives_a_failing_callback(make_pool, caplog) -> None:
    calls = threading.Semaphore(0)

    def failing(jobs: list[FakeJob]) -> None:
        calls.release()
        raise RuntimeError("store down")

    pool = make_pool(heartbeat_interval=0.01, on_heartbeat=failing)
    job = submit(pool, FakeJob())
    assert calls.acquire(timeout=PATIENCE) and calls.acquire(timeout=PATIENCE)
    assert "heartbeat failed" in caplog.text
    job.release.set()


# -- shutdown ----------------------------------------------------------------------------------


def test_shutdown_drains_running_jobs_within_the_timeout(make_pool, recorder: Recorder) -> None:
    pool = make_pool(workers=1)
    job = submit(pool, FakeJob())
    assert job.started.wait(PATIENCE)
    threading.Timer(0.05, job.release.set).start()
    started = time.monotonic()
    pool.shutdown(timeout=PATIENCE)
    assert job.finished.is_set()
    assert time.monotonic() - started < PATIENCE
    assert recorder.abandoned == []
    assert not [t for t in pool.threads() if t.is_alive()]


def test_shutdown_abandons_queued_jobs_at_once_and_never_runs_them(
    make_pool, recorder: Recorder
) -> None:
    pool = make_pool(workers=1)
    running = submit(pool, FakeJob())
    assert running.started.wait(PATIENCE)
    queued = submit(pool, FakeJob(block=False))
    threading.Timer(0.05, running.release.set).start()
    pool.shutdown(timeout=PATIENCE)
    assert [job_id for job_id, _ in recorder.abandoned] == [queued.id]
    assert "before this task started" in recorder.abandoned[0][1]
    assert not queued.started.is_set()


def test_shutdown_abandons_jobs_still_running_at_the_timeout(make_pool, recorder: Recorder) -> None:
    pool = make_pool(workers=1)
    job = submit(pool, FakeJob())
    assert job.started.wait(PATIENCE)
    started = time.monotonic()
    pool.shutdown(timeout=0.1)
    assert time.monotonic() - started < 2.0
    assert recorder.abandoned == [(job.id, "the server process stopped before this task finished")]
    job.release.set()
    assert wait_until(lambda: not any(t.is_alive() for t in pool.threads()))


def test_shutdown_is_idempotent_and_refuses_new_work(make_pool, recorder: Recorder) -> None:
    pool = make_pool()
    job = submit(pool, FakeJob(block=False))
    assert job.finished.wait(PATIENCE)
    pool.shutdown(timeout=1)
    pool.shutdown(timeout=1)
    pool.shutdown()
    assert recorder.abandoned == []
    with pytest.raises(PoolFull, match="shutting down"):
        pool.reserve()


def test_shutdown_of_an_unused_pool_is_a_no_op(make_pool) -> None:
    pool = make_pool()
    started = time.monotonic()
    pool.shutdown()
    assert time.monotonic() - started < 1.0
    assert tuple(pool.threads()) == ()


def test_shutdown_leaves_no_threads(make_pool, recorder: Recorder) -> None:
    before = set(threading.enumerate())
    pool = make_pool(workers=3, heartbeat_interval=0.01, on_heartbeat=recorder.on_heartbeat)
    for _ in range(6):
        submit(pool, FakeJob(block=False))
    assert wait_until(lambda: pool.pending == 0)
    assert len(set(threading.enumerate()) - before) == 4
    pool.shutdown()
    assert set(threading.enumerate()) - before == set()


# -- the middleware's drain marks what it could not finish lost --------------------------------


def test_middleware_shutdown_drains_and_marks_the_rest_lost(make_mw: Harness) -> None:
    slow = SlowApp()
    mw = make_mw(slow, routes=["/slow/<n>"], workers=1)
    store = mw.get_store()
    running = request(mw, "POST", "/slow/1")
    assert slow.started.wait(PATIENCE)
    queued = request(mw, "POST", "/slow/2")
    mw.pool.shutdown(timeout=0.1)
    # The running one outlived the drain, the queued one never started: both lost.
    for accepted in (running, queued):
        record = store.get(accepted.task_id)
        assert record is not None and record.state is TaskState.LOST, accepted.task_id
    assert slow.paths == ["/slow/1"]
    answer = request(mw, "GET", running.location)
    assert answer.code == 500 and answer.json()["state"] == "lost"
    slow.release.set()
    assert slow.finished.wait(PATIENCE)
    assert wait_until(lambda: not any(t.is_alive() for t in mw.pool.threads()))
    # The late finish does not resurrect it.
    record = store.get(running.task_id)
    assert record is not None and record.state is TaskState.LOST
    assert slow.paths == ["/slow/1"]  # the queued task never ran
    # After shutdown no new work is taken: 503, nothing created.
    refused = request(mw, "POST", "/slow/3")
    assert refused.code == 503 and refused.header("Retry-After")


def test_middleware_shutdown_lets_a_running_task_finish(make_mw: Harness) -> None:
    slow = SlowApp()
    mw = make_mw(slow, routes=["/slow"], workers=1)
    accepted = request(mw, "GET", "/slow")
    assert slow.started.wait(PATIENCE)
    threading.Timer(0.05, slow.release.set).start()
    mw.pool.shutdown(timeout=PATIENCE)
    record = mw.get_store().get(accepted.task_id)
    assert record is not None and record.state is TaskState.DONE
    assert request(mw, "GET", accepted.location).body == b"slow done"


def test_middleware_close_is_idempotent_and_removes_its_threads(make_mw: Harness) -> None:
    before = set(threading.enumerate())
    slow = SlowApp()
    mw = make_mw(slow, routes=["/slow"], workers=2)
    accepted = request(mw, "GET", "/slow")
    slow.release.set()
    assert request(mw, "GET", accepted.location, headers={"Prefer": "wait=5"}).code == 200
    assert len(set(threading.enumerate()) - before) == 3
    mw.close()
    mw.close()
    assert set(threading.enumerate()) - before == set()


# -- fork safety -------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # "multi-threaded, use of fork()"
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_has_no_threads_and_accepts_new_work(make_pool, recorder: Recorder) -> None:
    pool = make_pool(workers=2, on_heartbeat=recorder.on_heartbeat)
    parent_job = submit(pool, FakeJob())
    assert parent_job.started.wait(PATIENCE)
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status, never return into pytest
        code = 99
        try:
            code = 10
            if tuple(pool.threads()) or pool.jobs() or pool.pending:
                os._exit(code)
            code = 11
            job = FakeJob(block=False)
            pool.reserve()
            pool.submit(job)
            if not job.finished.wait(PATIENCE):
                os._exit(code)
            code = 12
            if not job.thread_name or not job.thread_name.startswith("wsgi-deferred-worker-"):
                os._exit(code)
            code = 13
            if not wait_until(lambda: pool.pending == 0):
                os._exit(code)
            code = 14
            pool.shutdown(timeout=PATIENCE)  # the child drains its own threads only
            code = 0
        finally:
            os._exit(code)
    assert_child_passed(pid)
    # The parent's pool is untouched by the child's life.
    assert parent_job.id in {j.id for j in pool.jobs()}
    assert all(t.is_alive() for t in pool.threads())
    parent_job.release.set()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_middleware_serves_deferred_requests_in_the_child(make_mw: Harness) -> None:
    slow = SlowApp()
    mw = make_mw(slow, routes=["/slow/<n>"], workers=1)
    assert request(mw, "GET", "/slow/1").code == 202  # the parent's pool is now running
    assert slow.started.wait(PATIENCE)
    slow.release.set()
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = 20
            if any(t.is_alive() for t in mw.pool.threads()):
                os._exit(code)
            code = 21
            accepted = request(mw, "GET", "/slow/2")
            if accepted.code != 202:
                os._exit(code)
            code = 22
            done = request(mw, "GET", accepted.location, headers={"Prefer": "wait=5"})
            if done.code != 200 or done.body != b"slow done":
                os._exit(code)
            code = 0
        finally:
            os._exit(code)
    assert_child_passed(pid)


def test_shutdown_answers_inline_waiters_of_unstarted_work_with_503(make_mw: Harness) -> None:
    """Under defer_after a request waits inline for its job; if shutdown abandons that job
    before it started, the waiter gets a clean 503 at once (no exception, no task)."""
    slow = SlowApp()
    mw = make_mw(Router({"/a": slow}), defer_after=PATIENCE, workers=1)
    answers: dict[str, Result] = {}
    clients = [
        threading.Thread(target=lambda p=p: answers.__setitem__(p, request(mw, "GET", p)))
        for p in ("/a", "/b")
    ]
    clients[0].start()
    assert slow.started.wait(PATIENCE)
    clients[1].start()
    assert wait_until(lambda: mw.pool.pending == 2)  # /b is queued behind /a
    started = time.monotonic()
    mw.pool.shutdown(timeout=0.05)
    clients[1].join(PATIENCE)
    assert time.monotonic() - started < 2.0
    assert answers["/b"].status == "503 Service Unavailable"
    assert answers["/b"].header("Retry-After")
    slow.release.set()  # the running one still finishes and is answered inline
    clients[0].join(PATIENCE)
    assert answers["/a"].code == 200 and answers["/a"].body == b"slow done"
    assert mw.get_store().purge() == 0
