"""The contract every store backend passes (cachelib style: one suite, many backends).

A backend's test module subclasses :class:`StoreContract` and provides a ``store`` fixture
(and ``make_store`` returning a *second* handle on the same storage for shared backends).
"""

from __future__ import annotations

import threading
import time

import pytest

from wsgi_deferred.buffers import SpooledBody
from wsgi_deferred.stores.base import RETRY_WINDOW, Store
from wsgi_deferred.task import TaskRecord, TaskState, new_task_id

HOUR = 3600.0


def body_of(data: bytes, threshold: int = 1 << 20) -> SpooledBody:
    body = SpooledBody(threshold=threshold)
    body.write(data)
    return body


def new_record(**changes: object) -> TaskRecord:
    values: dict[str, object] = {"id": new_task_id(), "lease_expires": time.time() + 30}
    values.update(changes)
    return TaskRecord(**values)  # type: ignore[arg-type]


def read_all(store: Store, task_id: str) -> bytes | None:
    reader = store.open_body(task_id)
    if reader is None:
        return None
    with reader:
        return reader.read()


class StoreContract:
    """Mixin of contract tests; needs a ``store`` fixture."""

    # -- create / get ----------------------------------------------------------------------

    def test_create_then_get_returns_equal_copy(self, store: Store) -> None:
        record = new_record(label="POST /render/1", owner="abc")
        store.create(record)
        got = store.get(record.id)
        assert got is not None and got is not record
        assert got.state is TaskState.QUEUED
        assert (got.id, got.label, got.owner) == (record.id, "POST /render/1", "abc")
        assert got.created == pytest.approx(record.created)
        got.state = TaskState.DONE  # a copy: the store must not change
        assert store.get(record.id).state is TaskState.QUEUED  # type: ignore[union-attr]

    def test_unknown_id_is_none_everywhere(self, store: Store) -> None:
        task_id = new_task_id()
        assert store.get(task_id) is None
        assert store.open_body(task_id) is None
        assert store.claim(task_id, time.time() + 30) is False
        assert store.cancel(task_id) is False
        assert store.renew([task_id], time.time() + 30) == set()
        assert store.wait(task_id, 0.05) is None
        store.set_progress(task_id, 0.5, "ignored")  # no error

    def test_duplicate_create_is_an_error(self, store: Store) -> None:
        record = new_record()
        store.create(record)
        with pytest.raises(ValueError):
            store.create(record)

    # -- claim / progress / finish ---------------------------------------------------------

    def test_full_life_cycle(self, store: Store) -> None:
        record = new_record()
        store.create(record)
        assert store.claim(record.id, time.time() + 30) is True
        running = store.get(record.id)
        assert running is not None and running.state is TaskState.RUNNING
        assert running.started is not None
        store.set_progress(record.id, 0.25, "a quarter")
        got = store.get(record.id)
        assert got is not None and (got.progress, got.message) == (0.25, "a quarter")
        headers = [("Content-Type", "text/plain"), ("X-Two", "a"), ("X-Two", "b")]
        assert store.finish(
            record.id, "201 Created", headers, body_of(b"hello"), time.time() + HOUR
        )
        done = store.get(record.id)
        assert done is not None and done.state is TaskState.DONE
        assert (done.status, done.headers, done.body_size) == ("201 Created", headers, 5)
        assert done.finished is not None
        assert read_all(store, record.id) == b"hello"
        assert read_all(store, record.id) == b"hello"  # readable again, independently

    def test_claim_twice_only_first_wins(self, store: Store) -> None:
        record = new_record()
        store.create(record)
        assert store.claim(record.id, time.time() + 30) is True
        assert store.claim(record.id, time.time() + 30) is False

    def test_large_body_round_trips_in_chunks(self, store: Store) -> None:
        record = new_record()
        store.create(record)
        store.claim(record.id, time.time() + 30)
        data = bytes(range(256)) * (12 * 4096 + 7)  # ~12 MiB, not a multiple of any chunk size
        body = body_of(data, threshold=1 << 16)
        assert store.finish(record.id, "200 OK", [], body, time.time() + HOUR)
        reader = store.open_body(record.id)
        assert reader is not None
        with reader:
            first = reader.read(1000)
            rest = reader.read()
        assert first + rest == data

    def test_empty_body(self, store: Store) -> None:
        record = new_record()
        store.create(record)
        store.claim(record.id, time.time() + 30)
        assert store.finish(record.id, "204 No Content", [], body_of(b""), time.time() + HOUR)
        assert read_all(store, record.id) == b""

    def test_fail_and_lost_are_final(self, store: Store) -> None:
        for state in ("failed", "lost"):
            record = new_record()
            store.create(record)
            store.claim(record.id, time.time() + 30)
            assert store.fail(record.id, state, "boom", time.time() + HOUR) is True
            got = store.get(record.id)
            assert got is not None and got.state is TaskState(state) and got.message == "boom"
            assert store.fail(record.id, "failed", "again", time.time() + HOUR) is False
            assert store.finish(record.id, "200 OK", [], body_of(b"x"), time.time() + HOUR) is False
            assert store.open_body(record.id) is None

    def test_finish_queued_task_directly(self, store: Store) -> None:
        record = new_record()
        store.create(record)
        assert store.finish(record.id, "200 OK", [], body_of(b"q"), time.time() + HOUR)
        assert read_all(store, record.id) == b"q"

    def test_create_running_record(self, store: Store) -> None:
        record = new_record(state=TaskState.RUNNING, started=time.time())
        store.create(record)
        assert store.get(record.id).state is TaskState.RUNNING  # type: ignore[union-attr]
        assert store.claim(record.id, time.time() + 30) is False

    # -- cancel ----------------------------------------------------------------------------

    def test_cancel_queued_never_runs(self, store: Store) -> None:
        record = new_record()
        store.create(record)
        assert store.cancel(record.id) is True
        assert store.get(record.id).state is TaskState.CANCELLED  # type: ignore[union-attr]
        assert store.claim(record.id, time.time() + 30) is False
        assert store.cancel(record.id) is False

    def test_cancel_running_refuses_its_result(self, store: Store) -> None:
        record = new_record()
        store.create(record)
        store.claim(record.id, time.time() + 30)
        assert store.cancel(record.id) is True
        assert store.renew([record.id], time.time() + 30) == set()
        assert store.finish(record.id, "200 OK", [], body_of(b"late"), time.time() + HOUR) is False
        assert store.open_body(record.id) is None

    def test_cancel_done_deletes_result(self, store: Store) -> None:
        record = new_record()
        store.create(record)
        store.finish(record.id, "200 OK", [], body_of(b"bye"), time.time() + HOUR)
        assert store.cancel(record.id) is True
        assert store.get(record.id) is None
        assert store.open_body(record.id) is None

    # -- leases, expiry, purge -------------------------------------------------------------

    def test_lease_running_out_reads_lost(self, store: Store) -> None:
        record = new_record()
        store.create(record)
        store.claim(record.id, time.time() + 0.2)
        assert store.get(record.id).state is TaskState.RUNNING  # type: ignore[union-attr]
        time.sleep(0.4)
        got = store.get(record.id)
        assert got is not None and got.state is TaskState.LOST
        assert store.finish(record.id, "200 OK", [], body_of(b"x"), time.time() + HOUR) is False

    def test_queued_lease_running_out_reads_lost(self, store: Store) -> None:
        record = new_record(lease_expires=time.time() + 0.2)
        store.create(record)
        time.sleep(0.4)
        assert store.get(record.id).state is TaskState.LOST  # type: ignore[union-attr]

    def test_renew_keeps_task_alive(self, store: Store) -> None:
        record = new_record()
        store.create(record)
        store.claim(record.id, time.time() + 0.3)
        for _ in range(4):
            time.sleep(0.15)
            assert store.renew([record.id], time.time() + 0.3) == {record.id}
        assert store.get(record.id).state is TaskState.RUNNING  # type: ignore[union-attr]

    def test_expired_result_is_gone(self, store: Store) -> None:
        record = new_record()
        store.create(record)
        store.finish(record.id, "200 OK", [], body_of(b"x"), time.time() + 0.2)
        assert store.get(record.id) is not None
        time.sleep(0.4)
        assert store.get(record.id) is None
        assert store.open_body(record.id) is None

    def test_purge_removes_expired_and_stale(self, store: Store) -> None:
        keep, old, stale = new_record(), new_record(), new_record()
        for record in (keep, old, stale):
            store.create(record)
        store.finish(keep.id, "200 OK", [], body_of(b"k"), time.time() + HOUR)
        store.finish(old.id, "200 OK", [], body_of(b"o"), time.time() + 60)
        removed = store.purge(now=time.time() + 120 + 2 * HOUR)
        assert removed >= 2
        store.purge(now=time.time() + 10 * HOUR)
        assert store.get(stale.id) is None
        assert store.open_body(old.id) is None

    # -- wait ------------------------------------------------------------------------------

    def test_wait_returns_when_finished(self, store: Store) -> None:
        record = new_record()
        store.create(record)
        store.claim(record.id, time.time() + 30)

        def finish_soon() -> None:
            time.sleep(0.2)
            store.finish(record.id, "200 OK", [], body_of(b"w"), time.time() + HOUR)

        thread = threading.Thread(target=finish_soon)
        thread.start()
        started = time.monotonic()
        got = store.wait(record.id, 10)
        elapsed = time.monotonic() - started
        thread.join()
        assert got is not None and got.state is TaskState.DONE
        assert elapsed < 5

    def test_wait_times_out_with_current_record(self, store: Store) -> None:
        record = new_record()
        store.create(record)
        started = time.monotonic()
        got = store.wait(record.id, 0.3)
        assert got is not None and got.state is TaskState.QUEUED
        assert 0.25 <= time.monotonic() - started < 5

    def test_wait_sees_lease_run_out(self, store: Store) -> None:
        record = new_record(lease_expires=time.time() + 0.2)
        store.create(record)
        got = store.wait(record.id, 10)
        assert got is not None and got.state is TaskState.LOST

    # -- races -----------------------------------------------------------------------------

    def test_race_two_claimers_one_winner(self, store: Store) -> None:
        for _ in range(20):
            record = new_record()
            store.create(record)
            barrier = threading.Barrier(2)
            results: list[bool] = []

            def claimer(
                barrier: threading.Barrier = barrier,
                results: list[bool] = results,
                record: TaskRecord = record,
            ) -> None:
                barrier.wait()
                results.append(store.claim(record.id, time.time() + 30))

            threads = [threading.Thread(target=claimer) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(results) == [False, True]

    def test_race_cancel_against_finish(self, store: Store) -> None:
        for _ in range(20):
            record = new_record()
            store.create(record)
            store.claim(record.id, time.time() + 30)
            barrier = threading.Barrier(2)
            outcome: dict[str, bool] = {}

            def cancel(
                barrier: threading.Barrier = barrier,
                outcome: dict[str, bool] = outcome,
                record: TaskRecord = record,
            ) -> None:
                barrier.wait()
                outcome["cancel"] = store.cancel(record.id)

            def finish(
                barrier: threading.Barrier = barrier,
                outcome: dict[str, bool] = outcome,
                record: TaskRecord = record,
            ) -> None:
                barrier.wait()
                outcome["finish"] = store.finish(
                    record.id, "200 OK", [], body_of(b"r"), time.time() + HOUR
                )

            threads = [threading.Thread(target=cancel), threading.Thread(target=finish)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert outcome["cancel"] is True
            # Whatever the order, a cancelled task ends with no result anyone can fetch.
            assert store.open_body(record.id) is None
            got = store.get(record.id)
            assert got is None or got.state is TaskState.CANCELLED

    def test_race_no_lost_progress_updates(self, store: Store) -> None:
        record = new_record()
        store.create(record)
        store.claim(record.id, time.time() + 30)
        barrier = threading.Barrier(4)

        def report(n: int) -> None:
            barrier.wait()
            for i in range(20):
                store.set_progress(record.id, i / 20, f"t{n}")

        threads = [threading.Thread(target=report, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        store.finish(record.id, "200 OK", [], body_of(b"d"), time.time() + HOUR)
        got = store.get(record.id)
        assert got is not None and got.state is TaskState.DONE

    # -- misc ------------------------------------------------------------------------------

    def test_secret_is_stable_bytes(self, store: Store) -> None:
        first = store.secret()
        assert isinstance(first, bytes) and len(first) >= 16
        assert store.secret() == first

    def test_close_is_idempotent(self, store: Store) -> None:
        store.close()
        store.close()

    # -- per-client admission (docs/security.md, "Limits") ---------------------------------

    def test_slots_are_limited_per_client(self, store: Store) -> None:
        until = time.time() + 30
        alice, bob = "a" * 32, "b" * 32
        ids = [new_task_id() for _ in range(3)]
        assert store.acquire_slot(alice, ids[0], 2, until)
        assert store.acquire_slot(alice, ids[1], 2, until)
        assert not store.acquire_slot(alice, ids[2], 2, until)
        assert store.acquire_slot(alice, ids[0], 2, until), "a slot already held is kept"
        assert store.acquire_slot(bob, ids[2], 2, until), "another client: its own quota"
        assert store.client_slots(alice) == 2 and store.client_slots(bob) == 1
        store.release_slot(alice, ids[0])
        store.release_slot(alice, ids[0])  # idempotent
        assert store.client_slots(alice) == 1
        assert store.acquire_slot(alice, ids[2], 2, until)
        for task_id in ids:
            store.release_slot(alice, task_id)
            store.release_slot(bob, task_id)
        assert store.client_slots(alice) == 0 and store.client_slots(bob) == 0

    def test_expired_slots_free_themselves_unless_renewed(self, store: Store) -> None:
        # A process that died never releases: its slots run out like a lease.
        client = "c" * 32
        dead, live, new = new_task_id(), new_task_id(), new_task_id()
        soon = time.time() + 0.3
        assert store.acquire_slot(client, dead, 2, soon)
        assert store.acquire_slot(client, live, 2, soon)
        assert not store.acquire_slot(client, new, 2, time.time() + 30)
        store.renew_slots([(client, live)], time.time() + 30)
        store.renew_slots([(client, new_task_id())], time.time() + 30)  # gone: stays gone
        threading.Event().wait(0.5)
        assert store.client_slots(client) == 1
        assert store.acquire_slot(client, new, 2, time.time() + 30)
        assert not store.acquire_slot(client, new_task_id(), 2, time.time() + 30)
        store.release_slot(client, live)
        store.release_slot(client, new)

    def test_renewing_a_slot_never_cuts_short_it_or_its_siblings(self, store: Store) -> None:
        # A task queued at a remote engine holds its slot for an hour; the client's running
        # tasks renew theirs by one lease. Neither renewal may shorten the queued slot, which
        # shares the client's key with them (Redis).
        client = "e" * 32
        queued, running = new_task_id(), new_task_id()
        assert store.acquire_slot(client, queued, 5, time.time() + 3600)
        assert store.acquire_slot(client, running, 5, time.time() + 0.3)
        store.renew_slots([(client, running)], time.time() + 0.4)
        store.renew_slots([(client, queued)], time.time() + 0.4)  # sooner: ignored
        store.release_slot(client, running)
        threading.Event().wait(1.6)  # past both short expiries and the Redis key's margin
        assert store.client_slots(client) == 1
        store.release_slot(client, queued)
        assert store.client_slots(client) == 0

    def test_race_for_the_last_slot_has_one_winner(self, store: Store) -> None:
        client = "d" * 32
        barrier = threading.Barrier(8)
        won: list[str] = []
        lock = threading.Lock()

        def take() -> None:
            task_id = new_task_id()
            barrier.wait()
            if store.acquire_slot(client, task_id, 3, time.time() + 30):
                with lock:
                    won.append(task_id)

        threads = [threading.Thread(target=take) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 3
        assert store.client_slots(client) == 3
        for task_id in won:
            store.release_slot(client, task_id)

    # -- execution tier: attempts, the delivery gate, retries, captured requests (issue 10) --

    def test_claim_and_deliver_count_attempts(self, store: Store) -> None:
        first, second = new_record(), new_record()
        store.create(first)
        store.create(second)
        assert store.claim(first.id, time.time() + 30) is True
        assert store.get(first.id).attempts == 1  # type: ignore[union-attr]
        delivered = store.deliver(second.id, time.time() + 30)
        assert delivered is not None
        assert (delivered.state, delivered.attempts) == (TaskState.RUNNING, 1)
        assert delivered.started is not None

    def test_deliver_skips_a_live_lease_and_a_final_task(self, store: Store) -> None:
        record = new_record()
        store.create(record)
        assert store.deliver(record.id, time.time() + 30) is not None
        assert store.deliver(record.id, time.time() + 30) is None  # lease held and live
        assert store.finish(record.id, "200 OK", [], body_of(b"x"), time.time() + HOUR)
        assert store.deliver(record.id, time.time() + 30) is None  # final
        assert store.get(record.id).attempts == 1  # type: ignore[union-attr]
        assert store.deliver(new_task_id(), time.time() + 30) is None  # unknown

    def test_lapsed_lease_on_a_retry_rule_requeues_until_attempts_run_out(
        self, store: Store
    ) -> None:
        record = new_record(max_attempts=2)
        store.create(record)
        assert store.deliver(record.id, time.time() + 0.2) is not None
        time.sleep(0.3)
        again = store.get(record.id)
        assert again is not None and again.state is TaskState.QUEUED, again
        assert again.attempts == 1
        assert again.lease_expires is not None and again.lease_expires > time.time() + 10
        second = store.deliver(record.id, time.time() + 0.2)
        assert second is not None and second.attempts == 2
        time.sleep(0.3)
        final = store.get(record.id)
        assert final is not None and final.state is TaskState.LOST  # no runs left
        assert store.deliver(record.id, time.time() + 30) is None

    def test_lapsed_lease_off_the_retry_rules_reads_lost(self, store: Store) -> None:
        record = new_record()  # max_attempts=1
        store.create(record)
        assert store.deliver(record.id, time.time() + 0.2) is not None
        time.sleep(0.3)
        assert store.get(record.id).state is TaskState.LOST  # type: ignore[union-attr]
        assert store.deliver(record.id, time.time() + 30) is None

    def test_a_requeued_task_that_nobody_runs_reads_lost_in_the_end(
        self, store: Store, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        record = new_record(max_attempts=3, lease_expires=time.time() + 0.2)
        store.create(record)
        assert store.deliver(record.id, time.time() + 0.2) is not None
        time.sleep(0.3)
        assert store.get(record.id).state is TaskState.QUEUED  # type: ignore[union-attr]
        # Its first runner cannot renew it, and nobody delivers it within RETRY_WINDOW: a
        # queued task's lease running out is `lost`, retry rule or not.
        assert store.renew([record.id], time.time() + 30) == set()
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + RETRY_WINDOW + 1)
        assert store.get(record.id).state is TaskState.LOST  # type: ignore[union-attr]

    def test_captured_request_round_trips_in_chunks(self, store: Store) -> None:
        record = new_record(max_attempts=2)
        store.create(record)
        data = bytes(range(256)) * (3 * 4096 + 7)  # ~3 MiB: several chunks everywhere
        body = body_of(data, threshold=1024)
        meta = b'{"REQUEST_METHOD": "POST"}'
        store.save_request(record.id, meta, body)
        assert body.open().read(4) == data[:4], "the caller keeps its body"
        body.discard()
        kept = store.load_request(record.id)
        assert kept is not None
        got_meta, reader = kept
        with reader:
            assert got_meta == meta
            assert reader.read() == data
        store.delete_request(record.id)
        assert store.load_request(record.id) is None
        store.delete_request(record.id)  # idempotent

    def test_empty_captured_request(self, store: Store) -> None:
        record = new_record()
        store.create(record)
        store.save_request(record.id, b"{}", SpooledBody())
        kept = store.load_request(record.id)
        assert kept is not None
        with kept[1] as reader:
            assert (kept[0], reader.read()) == (b"{}", b"")
        assert store.load_request(new_task_id()) is None

    def test_a_requeued_task_is_not_renewed_by_its_first_runner(self, store: Store) -> None:
        # Its runner, alive but late (a store outage longer than the lease), must not win the
        # task back from its retry: the two would run at once (docs/execution.md, "Retries").
        record = new_record(max_attempts=2)
        store.create(record)
        assert store.deliver(record.id, time.time() + 0.2) is not None
        threading.Event().wait(0.35)
        assert record.id not in store.renew([record.id], time.time() + 30)
        again = store.get(record.id)
        assert again is not None and again.state is TaskState.QUEUED and again.attempts == 1
        second = store.deliver(record.id, time.time() + 30)
        assert second is not None and second.attempts == 2
        assert record.id in store.renew([record.id], time.time() + 30)  # its new runner's

    def test_retry_candidates_leave_out_healthy_tasks(self, store: Store) -> None:
        healthy, waiting, lapsed = (new_record(max_attempts=2) for _ in range(3))
        for record in (healthy, waiting, lapsed):
            store.create(record)
            store.save_request(record.id, b"{}", body_of(b"x"))
        assert store.deliver(healthy.id, time.time() + 30) is not None  # running, leased
        assert store.deliver(lapsed.id, time.time() + 0.2) is not None  # its runner will die
        threading.Event().wait(0.35)
        found = store.retry_candidates(100)
        assert lapsed.id in found
        assert healthy.id not in found and waiting.id not in found
        for record in (healthy, waiting, lapsed):
            store.delete_request(record.id)
        assert lapsed.id not in store.retry_candidates(100), "its request is gone: no retry"

    def test_attempts_survive_the_end_states(self, store: Store) -> None:
        record = new_record(max_attempts=3)
        store.create(record)
        assert store.deliver(record.id, time.time() + 30) is not None
        assert store.finish(record.id, "200 OK", [], body_of(b"ok"), time.time() + HOUR)
        done = store.get(record.id)
        assert done is not None and (done.attempts, done.max_attempts) == (1, 3)

    # -- waiting (docs/protocol.md, "Holds") -------------------------------------------------

    def test_one_finish_wakes_every_waiter_of_the_task(self, store: Store) -> None:
        record, other = new_record(), new_record()
        store.create(record)
        store.create(other)
        got: list[TaskRecord | None] = []
        lock = threading.Lock()

        def wait(task_id: str) -> None:
            result = store.wait(task_id, 20)
            with lock:
                got.append(result)

        waiters = [threading.Thread(target=wait, args=(record.id,)) for _ in range(12)]
        bystander = threading.Thread(target=wait, args=(other.id,))
        for thread in [*waiters, bystander]:
            thread.start()
        time.sleep(0.2)  # all of them inside wait()
        store.finish(record.id, "200 OK", [], body_of(b"w"), time.time() + HOUR)
        for thread in waiters:
            thread.join(10)
            assert not thread.is_alive(), "a waiter was not woken by the finish"
        assert len(got) == 12 and all(r is not None and r.state is TaskState.DONE for r in got)
        assert bystander.is_alive()  # another task's waiter keeps waiting
        store.cancel(other.id)  # a cancel wakes its waiters too
        bystander.join(10)
        assert not bystander.is_alive()


# -- listing (Store.list_tasks: the operator's view) ----------------------------------------------


class ListingContract:
    """Contract of :meth:`Store.list_tasks`; mixed into :class:`StoreContract`."""

    def test_list_newest_first_with_limit(self, store: Store) -> None:
        now = time.time()
        records = [new_record(created=now - 60 + n, label=f"GET /t/{n}") for n in range(5)]
        for record in records:
            store.create(record)
        listed = store.list_tasks()
        assert [r.id for r in listed] == [r.id for r in reversed(records)]
        assert [r.label for r in listed] == [f"GET /t/{n}" for n in (4, 3, 2, 1, 0)]
        assert all(r.state is TaskState.QUEUED for r in listed)
        assert [r.id for r in store.list_tasks(limit=2)] == [records[4].id, records[3].id]
        assert store.list_tasks(limit=0) == []

    def test_list_filters_by_state(self, store: Store) -> None:
        queued, running, done, failed, cancelled = (new_record() for _ in range(5))
        for record in (queued, running, done, failed, cancelled):
            store.create(record)
        for record in (running, done, failed, cancelled):
            assert store.claim(record.id, time.time() + 30)
        store.set_progress(running.id, 0.25, "a quarter")
        assert store.finish(done.id, "200 OK", [("A", "b")], body_of(b"x"), time.time() + HOUR)
        assert store.fail(failed.id, "failed", "boom", time.time() + HOUR)
        assert store.cancel(cancelled.id)

        def ids(*states: str) -> set[str]:
            return {r.id for r in store.list_tasks(states=states)}

        assert ids("queued") == {queued.id}
        assert ids("running") == {running.id}
        assert ids("done", "failed") == {done.id, failed.id}
        assert ids("cancelled") == {cancelled.id}
        assert ids() == set()
        assert {r.id for r in store.list_tasks()} == {
            queued.id, running.id, done.id, failed.id, cancelled.id
        }  # fmt: skip
        (progress,) = store.list_tasks(states=["running"])
        assert (progress.progress, progress.message) == (0.25, "a quarter")
        assert progress.started is not None

    def test_list_reports_lapsed_leases_lost_and_skips_expired(self, store: Store) -> None:
        lapsing, expiring, live = new_record(), new_record(), new_record()
        for record in (lapsing, expiring, live):
            store.create(record)
        store.claim(lapsing.id, time.time() + 0.2)
        store.claim(expiring.id, time.time() + 30)
        store.finish(expiring.id, "200 OK", [], body_of(b"x"), time.time() + 0.2)
        time.sleep(0.4)
        listed = {r.id: r for r in store.list_tasks()}
        assert set(listed) == {lapsing.id, live.id}
        assert listed[lapsing.id].state is TaskState.LOST
        assert {r.id for r in store.list_tasks(states=["lost"])} == {lapsing.id}
        assert store.list_tasks(states=["running"]) == []

    def test_list_reads_a_lapsed_retry_task_queued_as_get_does(self, store: Store) -> None:
        # Its runner died and it has runs left: the operator's list must agree with the
        # status URL (queued, waiting for its next run), not call it lost.
        record = new_record(max_attempts=2)
        store.create(record)
        assert store.deliver(record.id, time.time() + 0.2) is not None
        time.sleep(0.3)
        (listed,) = store.list_tasks()
        assert listed.state is TaskState.QUEUED, listed
        assert [r.id for r in store.list_tasks(states=["queued"])] == [record.id]
        assert store.list_tasks(states=["lost"]) == []
        assert store.get(record.id).state is TaskState.QUEUED  # type: ignore[union-attr]

    def test_list_hands_out_copies(self, store: Store) -> None:
        record = new_record()
        store.create(record)
        (first,) = store.list_tasks()
        first.state, first.label = TaskState.DONE, "changed"
        (again,) = store.list_tasks()
        assert again.state is TaskState.QUEUED and again.label is None

    def test_list_many_tasks_pages_through_everything(self, store: Store) -> None:
        created = set()
        for _ in range(1200):  # more than one Redis SCAN page
            record = new_record()
            store.create(record)
            created.add(record.id)
        assert {r.id for r in store.list_tasks(limit=5000)} == created
        assert len(store.list_tasks()) == 1000  # DEFAULT_LIST_LIMIT


# Every backend's suite runs these too (this block stays apart from the tests above).
for _name, _test in vars(ListingContract).items():
    if _name.startswith("test_"):
        setattr(StoreContract, _name, _test)
