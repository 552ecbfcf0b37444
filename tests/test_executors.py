"""The executor seam (issue 10): the registry, the retry sweeper and the snapshot kept in
the store, in process. Real engines and real kills are in ``tests/e2e/test_tier.py``."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apps import PATIENCE, echo_app, make_environ, wait_until

from wsgi_deferred import DeferredMiddleware
from wsgi_deferred.admission import slot_client
from wsgi_deferred.buffers import SpooledBody
from wsgi_deferred.capture import capture_request
from wsgi_deferred.errors import ConfigurationError
from wsgi_deferred.executors import SCHEMES, register_executor
from wsgi_deferred.executors.base import RemoteExecutor
from wsgi_deferred.executors.delivery import run_delivered
from wsgi_deferred.executors.snapshots import restore_snapshot, snapshot_meta
from wsgi_deferred.executors.threads import ThreadExecutor
from wsgi_deferred.runner import Job
from wsgi_deferred.task import TaskState, new_task_id

LEASE = 0.3  # seconds
SHARED = "redis://127.0.0.1:6379/15"  # a remote executor needs a shared store (not contacted)


@pytest.fixture
def built() -> Iterator[list[DeferredMiddleware]]:
    made: list[DeferredMiddleware] = []
    yield made
    for middleware in made:
        middleware.close(1)


def make(built: list[DeferredMiddleware], **options: Any) -> DeferredMiddleware:
    middleware = DeferredMiddleware(echo_app, routes=["POST /echo"], **options)
    built.append(middleware)
    return middleware


# -- the registry ------------------------------------------------------------------------------


def test_none_and_threads_name_the_thread_executor(built: list[DeferredMiddleware]) -> None:
    assert type(make(built).executor) is ThreadExecutor
    assert type(make(built, executor="threads").executor) is ThreadExecutor
    middleware = make(built)
    assert middleware.pool is middleware.executor


def test_celery_urls_and_apps_name_the_celery_executor(built: list[DeferredMiddleware]) -> None:
    from celery import Celery

    from wsgi_deferred.executors.celery import DEFAULT_QUEUE, CeleryExecutor

    by_url = make(built, executor="celery+amqp://guest@127.0.0.1:1//", store=SHARED).executor
    assert isinstance(by_url, CeleryExecutor) and by_url.remote
    assert by_url.celery.conf.task_acks_late and by_url.celery.conf.task_reject_on_worker_lost
    assert by_url.celery.conf.worker_prefetch_multiplier == 1
    assert by_url.queue == DEFAULT_QUEUE
    app = Celery("mine", broker="memory://", set_as_current=False)
    app.conf.wsgi_deferred_queue = "render"
    by_app = make(built, executor=app, store=SHARED).executor
    assert isinstance(by_app, CeleryExecutor) and by_app.celery is app
    assert by_app.queue == "render"


@pytest.mark.parametrize("store", [None, "memory://"])
@pytest.mark.parametrize("spec", ["celery+amqp://guest@127.0.0.1:1//", "rq+redis://127.0.0.1:1/0"])
def test_a_remote_executor_refuses_a_store_its_workers_cannot_read(
    spec: str, store: str | None
) -> None:
    # The workers read each task's captured request from the store: with a private one
    # every task would read lost, so the web tier refuses to start.
    with pytest.raises(ConfigurationError, match="needs a shared store"):
        DeferredMiddleware(echo_app, routes=["POST /echo"], executor=spec, store=store)


@pytest.mark.parametrize("spec", ["celery", "celery+", "frob+redis://x", 42, object()])
def test_bad_executors_are_configuration_errors(spec: object) -> None:
    with pytest.raises(ConfigurationError, match="executor"):
        DeferredMiddleware(echo_app, executor=spec)


def test_an_executor_plugs_in_without_changing_the_middleware(
    built: list[DeferredMiddleware],
) -> None:
    register_executor("mine", "wsgi_deferred.executors.threads:ThreadExecutor")
    try:
        assert type(make(built, executor="mine+anything://x").executor) is ThreadExecutor
    finally:
        del SCHEMES["mine"]


def test_an_unreachable_broker_makes_the_task_read_lost_not_hang(
    built: list[DeferredMiddleware], tmp_path: Path
) -> None:
    from apps import request, result_of

    middleware = make(
        built, store=f"sqlite:///{tmp_path}/t.db", executor="celery+amqp://guest@127.0.0.1:1//"
    )
    started = time.monotonic()
    accepted = request(middleware, "POST", "/echo", data=b"x")
    assert time.monotonic() - started < 30
    final = result_of(middleware, accepted)
    assert final.code == 500 and final.json()["state"] == "lost"


# -- captured requests in the store -----------------------------------------------------------


def test_a_snapshot_round_trips_through_its_stored_form() -> None:
    environ = make_environ("/echo", "POST", data=b"a" * 5000, headers={"X-Sig": "abc"})
    snapshot = capture_request(environ, 10**6)
    meta = snapshot_meta(snapshot)
    restored = restore_snapshot(meta, snapshot.body.open(), spool_threshold=1024)
    assert restored.variables == snapshot.variables
    assert restored.url_scheme == snapshot.url_scheme
    assert restored.body.getvalue() == b"a" * 5000
    assert not restored.body.in_memory  # past the threshold: spooled to disk
    restored.discard()
    snapshot.discard()


@pytest.mark.parametrize(
    "meta", [b"not json", b"[]", b'{"format": 99}', b'{"format": 1, "variables": {"A": 1}}']
)
def test_a_foreign_snapshot_is_refused(meta: bytes) -> None:
    with pytest.raises(ValueError):
        restore_snapshot(meta, SpooledBody().open())


# -- retries: a task whose runner died runs again in another process ---------------------------


def abandoned_task(middleware: DeferredMiddleware, body: bytes) -> str:
    """A task accepted by *middleware* whose process then died mid-run: its record is
    running, its lease renewed by nobody."""
    environ = make_environ("/echo", "POST", data=body)
    environ["wsgi.multiprocess"] = True
    job = Job(middleware.runner, new_task_id(), capture_request(environ, 10**6))
    job.attached = False
    middleware.runner.attach(job)
    record = middleware.get_store().deliver(job.id, time.time() + LEASE)
    assert record is not None and record.attempts == 1
    job.snapshot.discard()
    return job.id


def test_a_sibling_process_runs_a_retry_task_whose_runner_died(
    built: list[DeferredMiddleware], tmp_path: Path
) -> None:
    options = {"store": f"sqlite:///{tmp_path}/t.db", "lease_timeout": LEASE}
    dead = make(built, retry=["POST /echo"], max_attempts=2, **options)
    sibling = make(built, retry=["POST /echo"], max_attempts=2, **options)
    task_id = abandoned_task(dead, b"payload")
    store = sibling.get_store()
    assert wait_until(lambda: store.get(task_id).state is TaskState.DONE, PATIENCE)  # type: ignore[union-attr]
    record = store.get(task_id)
    assert record is not None and record.attempts == 2
    reader = store.open_body(task_id)
    assert reader is not None
    with reader:
        assert b"payload".hex().encode() in reader.read()
    # Deleted just after the result is stored (runner._forget_request), so wait for it.
    gone = wait_until(lambda: store.load_request(task_id) is None, PATIENCE)
    assert gone, "the captured request goes with its task"


def test_off_the_retry_rules_a_task_whose_runner_died_reads_lost(
    built: list[DeferredMiddleware], tmp_path: Path
) -> None:
    options = {"store": f"sqlite:///{tmp_path}/t.db", "lease_timeout": LEASE}
    dead = make(built, retry=["POST /other"], **options)
    sibling = make(built, retry=["POST /other"], **options)
    task_id = abandoned_task(dead, b"payload")
    time.sleep(LEASE * 3)
    assert sibling.pool.sweep() == 0
    record = sibling.get_store().get(task_id)
    assert record is not None and record.state is TaskState.LOST


def test_a_retry_task_runs_at_most_max_attempts_times(
    built: list[DeferredMiddleware], tmp_path: Path
) -> None:
    options = {"store": f"sqlite:///{tmp_path}/t.db", "lease_timeout": LEASE}
    dead = make(built, retry=["POST /echo"], max_attempts=1, **options)
    task_id = abandoned_task(dead, b"payload")  # its one run was the one that died
    time.sleep(LEASE * 2)
    assert dead.pool.sweep() == 0
    assert dead.get_store().get(task_id).state is TaskState.LOST  # type: ignore[union-attr]


def test_with_a_memory_store_nothing_is_kept_for_retries(built: list[DeferredMiddleware]) -> None:
    from apps import request, result_of

    middleware = make(built, store="memory://", retry=["POST /echo"])
    accepted = request(middleware, "POST", "/echo", data=b"x")
    assert result_of(middleware, accepted).code == 201  # echo_app answers 201 Created
    assert middleware.get_store().load_request(accepted.task_id) is None
    assert middleware.get_store().get(accepted.task_id).max_attempts == 1  # type: ignore[union-attr]


def test_rq_urls_and_queues_name_the_rq_executor(built: list[DeferredMiddleware]) -> None:
    from redis import Redis
    from rq import Queue

    from wsgi_deferred.executors.rq import DEFAULT_QUEUE, RQExecutor

    by_url = make(built, executor="rq+redis://127.0.0.1:1/0", store=SHARED).executor
    assert isinstance(by_url, RQExecutor) and by_url.remote
    assert by_url.queue.name == DEFAULT_QUEUE
    queue = Queue("render", connection=Redis(port=1))
    by_queue = make(built, executor=queue, store=SHARED).executor
    assert isinstance(by_queue, RQExecutor) and by_queue.queue is queue


def test_rq_jobs_refuse_to_run_outside_the_worker() -> None:
    from wsgi_deferred.executors.rq import perform

    with pytest.raises(RuntimeError, match="wsgi-deferred worker"):
        perform(new_task_id())


def test_an_unreachable_rq_redis_makes_the_task_read_lost(
    built: list[DeferredMiddleware], tmp_path: Path
) -> None:
    from apps import request, result_of

    middleware = make(
        built, store=f"sqlite:///{tmp_path}/t.db", executor="rq+redis://127.0.0.1:1/0"
    )
    final = result_of(middleware, request(middleware, "POST", "/echo", data=b"x"))
    assert final.code == 500 and final.json()["state"] == "lost"


# -- a remote task's client slot (docs/security.md, "Limits") ---------------------------------


class RecordingExecutor(RemoteExecutor):
    """A remote executor whose engine is a list: the test delivers what it was sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[str] = []

    def send(self, task_id: str) -> bool:
        self.sent.append(task_id)
        return True


def test_a_remote_task_holds_its_client_slot_until_a_worker_ran_it(
    built: list[DeferredMiddleware], tmp_path: Path
) -> None:
    from apps import Router, SlowApp, call

    slow = SlowApp()
    register_executor("recording", f"{__name__}:RecordingExecutor")
    try:
        options: dict[str, Any] = {
            "routes": ["POST /slow"],
            "store": f"sqlite:///{tmp_path}/t.db",
            "executor": "recording+engine",
            "max_pending_per_client": 1,
            "lease_timeout": LEASE,
        }
        web = DeferredMiddleware(Router({"/slow": slow}), **options)
        other_host = DeferredMiddleware(Router({"/slow": slow}), **options)
        built += [web, other_host]
    finally:
        del SCHEMES["recording"]
    store, client = web.get_store(), slot_client("10.1.0.1")

    def submit() -> Any:
        return call(web, make_environ("/slow", "POST", REMOTE_ADDR="10.1.0.1"))

    first = submit()
    assert first.code == 202 and web.executor.sent == [first.task_id]  # type: ignore[attr-defined]
    # Queued at the engine for several leases, the web tier's heartbeat beating meanwhile
    # (its pool threads never start here: nothing runs in this process): the slot is
    # still taken, so the client cannot queue past its limit.
    for _ in range(4):
        time.sleep(LEASE)
        web.admission.renew()
    assert store.client_slots(client) == 1
    assert submit().code == 429
    # A worker runs it for several leases: its heartbeat keeps the slot.
    worker = threading.Thread(target=run_delivered, args=(web.runner, first.task_id))
    worker.start()
    try:
        assert slow.started.wait(PATIENCE)
        time.sleep(LEASE * 4)
        assert store.client_slots(client) == 1
    finally:
        slow.release.set()
        worker.join(PATIENCE)
    assert store.get(first.task_id).state is TaskState.DONE  # type: ignore[union-attr]
    assert store.client_slots(client) == 0  # given back by the run's end
    # A run whose slot lapsed meanwhile (a retry after its first runner died) takes it
    # again for as long as it runs.
    slow.started.clear()
    slow.release.clear()
    again = submit()
    store.release_slot(client, again.task_id)  # as if it had lapsed
    worker = threading.Thread(target=run_delivered, args=(web.runner, again.task_id))
    worker.start()
    try:
        assert slow.started.wait(PATIENCE)
        assert store.client_slots(client) == 1
    finally:
        slow.release.set()
        worker.join(PATIENCE)
    assert store.client_slots(client) == 0
    # Cancelled while queued, on another host, leases later: given back at once (the
    # captured request names the client), and the delivery that skips it changes nothing.
    second = submit()
    assert second.code == 202
    time.sleep(LEASE * 2)
    web.admission.renew()  # the accepting host forgets it: it is not running there
    assert call(other_host, make_environ(second.location, "DELETE")).code == 204
    assert store.client_slots(client) == 0
    assert run_delivered(web.runner, second.task_id) == "skipped"
    # Cancelled by the host that took the slot: given back at once too.
    third = submit()
    assert call(web, make_environ(third.location, "DELETE")).code == 204
    assert store.client_slots(client) == 0


def test_a_task_the_engine_never_got_gives_its_client_slot_back(
    built: list[DeferredMiddleware], tmp_path: Path
) -> None:
    from apps import call

    middleware = make(
        built,
        store=f"sqlite:///{tmp_path}/t.db",
        executor="rq+redis://127.0.0.1:1/0",  # nothing listens there
        max_pending_per_client=1,
    )
    for _ in range(3):  # each send fails, reads lost, and frees the one slot
        accepted = call(middleware, make_environ("/echo", "POST", REMOTE_ADDR="10.1.0.2"))
        assert accepted.code == 202
        status = call(middleware, make_environ(accepted.location, "GET"))
        assert status.json()["state"] == "lost"
    assert middleware.get_store().client_slots(slot_client("10.1.0.2")) == 0


def test_a_store_without_slot_methods_lets_remote_slots_lapse_after_a_lease(
    built: list[DeferredMiddleware], tmp_path: Path
) -> None:
    # The per-process fallback counts in memory; a web tier that only sends tasks away runs
    # no heartbeat, so the count must forget a sent task on its own, not lock the client out.
    from apps import call

    from wsgi_deferred.stores.sqlite import SQLiteStore

    class NoSlots(SQLiteStore):
        def acquire_slot(self, client: str, task_id: str, limit: int, expires: float) -> bool:
            raise NotImplementedError

        def release_slot(self, client: str, task_id: str) -> None:
            raise NotImplementedError

    register_executor("recording", f"{__name__}:RecordingExecutor")
    try:
        middleware = make(
            built,
            store=NoSlots(str(tmp_path / "t.db")),
            executor="recording+engine",
            max_pending_per_client=1,
            lease_timeout=LEASE,
        )
    finally:
        del SCHEMES["recording"]

    def submit() -> int:
        return call(middleware, make_environ("/echo", "POST", REMOTE_ADDR="10.1.0.3")).code

    assert [submit(), submit()] == [202, 429]
    time.sleep(LEASE * 1.5)
    assert submit() == 202


@pytest.mark.parametrize("task_id", ["../etc/passwd", "", 42, None])
def test_a_delivery_of_no_task_id_is_skipped(
    built: list[DeferredMiddleware], tmp_path: Path, task_id: Any
) -> None:
    # An engine's message is input too: a malformed id never reaches the store.
    middleware = make(built, store=f"sqlite:///{tmp_path}/t.db")
    assert run_delivered(middleware.runner, task_id) == "skipped"
