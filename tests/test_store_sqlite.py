from __future__ import annotations

import io
import multiprocessing
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import BinaryIO

import pytest
from store_contract import HOUR, StoreContract, body_of, new_record, read_all

from wsgi_deferred.buffers import COPY_CHUNK, SpooledBody
from wsgi_deferred.errors import ConfigurationError, StoreUnavailable
from wsgi_deferred.stores import open_store
from wsgi_deferred.stores import sqlite as sqlite_module
from wsgi_deferred.stores.sqlite import INLINE_BODY_MAX_BYTES, SQLiteStore
from wsgi_deferred.task import TaskState, new_task_id


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SQLiteStore]:
        store = SQLiteStore(str(tmp_path / "tasks.db"))
        yield store
        store.close()


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "tasks.db")


def body_files(path: str) -> list[str]:
    return sorted(os.listdir(path + ".bodies"))


def inline_bodies(path: str) -> list[tuple[str, bytes]]:
    with closing(sqlite3.connect(path)) as raw:
        return raw.execute("SELECT id, body FROM tasks WHERE body IS NOT NULL").fetchall()


# -- sharing between instances and processes ---------------------------------------------------


def test_two_instances_on_one_file_share_tasks(db: str) -> None:
    a, b = SQLiteStore(db), SQLiteStore(db)
    record = new_record(label="GET /report")
    a.create(record)
    got = b.get(record.id)
    assert got is not None and got.label == "GET /report"
    assert b.claim(record.id, time.time() + 30) is True
    assert a.claim(record.id, time.time() + 30) is False
    a.set_progress(record.id, 0.5, "half")
    assert (b.get(record.id).progress, b.get(record.id).message) == (0.5, "half")  # type: ignore[union-attr]
    assert b.finish(record.id, "200 OK", [("X-A", "é")], body_of(b"shared"), time.time() + HOUR)
    assert a.get(record.id).headers == [("X-A", "é")]  # type: ignore[union-attr]
    assert read_all(a, record.id) == b"shared"
    assert a.secret() == b.secret() and len(a.secret()) == 32
    assert a.cancel(record.id) is True
    assert b.get(record.id) is None


def test_lost_is_persisted_for_every_instance(db: str) -> None:
    a, b = SQLiteStore(db), SQLiteStore(db)
    record = new_record(lease_expires=time.time() + 0.05)
    a.create(record)
    time.sleep(0.1)
    lost = a.get(record.id)
    assert lost is not None and lost.state is TaskState.LOST
    with closing(sqlite3.connect(db)) as raw:
        assert raw.execute("SELECT state FROM tasks WHERE id = ?", (record.id,)).fetchone() == (
            "lost",
        )
    assert b.get(record.id) == lost  # same finished time and message everywhere


def test_wait_sees_another_instance_finish(db: str) -> None:
    a, b = SQLiteStore(db), SQLiteStore(db)
    record = new_record()
    a.create(record)
    timer = threading.Timer(
        0.2, lambda: a.finish(record.id, "200 OK", [], body_of(b"x"), time.time() + HOUR)
    )
    timer.start()
    started = time.monotonic()
    got = b.wait(record.id, 5)  # b's condition is never notified: this is the polling path
    timer.join()
    a.close()
    b.close()  # stops its wake-up listener thread
    assert got is not None and got.state is TaskState.DONE
    assert time.monotonic() - started < 1


def test_wait_wakes_at_once_on_a_finish_in_this_process(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "POLL_MIN", 10.0)  # polling alone would take 10 s
    store = SQLiteStore(db)
    record = new_record()
    store.create(record)
    timer = threading.Timer(
        0.1, lambda: store.fail(record.id, "failed", "boom", time.time() + HOUR)
    )
    timer.start()
    started = time.monotonic()
    got = store.wait(record.id, 8)
    timer.join()
    store.close()  # stops its wake-up listener thread
    assert got is not None and got.state is TaskState.FAILED
    assert time.monotonic() - started < 2


def _claim_each(path: str, ids: list[str], barrier: object, results: object) -> None:
    """Child process: race the others for every task, report the ones it won."""
    store = SQLiteStore(path)
    won = []
    for task_id in ids:
        barrier.wait()  # type: ignore[attr-defined]
        if store.claim(task_id, time.time() + 30):
            won.append(task_id)
    results.put(won)  # type: ignore[attr-defined]
    store.close()


def test_processes_racing_to_claim_have_one_winner(db: str) -> None:
    store = SQLiteStore(db)
    ids = [new_task_id() for _ in range(30)]
    for task_id in ids:
        store.create(new_record(id=task_id))
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters, like separate workers
    n = 4
    barrier, results = ctx.Barrier(n, timeout=30), ctx.Queue()
    procs = [ctx.Process(target=_claim_each, args=(db, ids, barrier, results)) for _ in range(n)]
    for proc in procs:
        proc.start()
    won = [results.get(timeout=30) for _ in procs]
    for proc in procs:
        proc.join(10)
        assert proc.exitcode == 0
    assert Counter(task_id for w in won for task_id in w) == Counter(ids)
    assert all(store.get(i).state is TaskState.RUNNING for i in ids)  # type: ignore[union-attr]


def test_forked_child_uses_its_own_connection(db: str) -> None:
    store = SQLiteStore(db)
    record = new_record()
    store.create(record)  # the parent has used the store: it holds a connection
    parent_conn = store._connection()

    def child() -> None:
        assert store._connection() is not parent_conn
        assert store.claim(record.id, time.time() + 30)
        assert store.finish(record.id, "200 OK", [], body_of(b"from child"), time.time() + HOUR)
        store.close()

    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    proc.join(10)
    assert proc.exitcode == 0
    assert store._connection() is parent_conn  # untouched by the child, still in use
    assert store.get(record.id).state is TaskState.DONE  # type: ignore[union-attr]
    assert read_all(store, record.id) == b"from child"


def test_one_connection_per_thread(db: str) -> None:
    store = SQLiteStore(db)
    mine = store._connection()
    seen: list[sqlite3.Connection] = []
    thread = threading.Thread(target=lambda: seen.append(store._connection()))
    thread.start()
    thread.join()
    assert seen[0] is not mine
    assert store._connection() is mine
    store.close()
    store.close()
    assert store._connection() is not mine  # reopened after close
    assert store.get(new_task_id()) is None


# -- bodies ------------------------------------------------------------------------------------


def test_large_bodies_are_files_beside_the_database(db: str) -> None:
    store = SQLiteStore(db)
    other, big = new_record(), new_record()
    store.create(other)
    store.create(big)
    other_data = os.urandom(INLINE_BODY_MAX_BYTES + 1)
    assert store.finish(other.id, "200 OK", [], body_of(other_data), time.time() + HOUR)
    data = os.urandom(3 * COPY_CHUNK + 5)
    spilled = body_of(data, threshold=1024)
    spill_path = spilled.path
    assert spill_path is not None
    spill_inode = os.stat(spill_path).st_ino
    assert store.finish(big.id, "200 OK", [], spilled, time.time() + 60)
    assert not os.path.exists(spill_path)  # discarded: only the store's name is left
    names = body_files(db)
    assert len(names) == 2 and not any(n.endswith(".tmp") for n in names)
    # Same filesystem: the spill file itself was kept (hard link), not copied.
    assert spill_inode in {os.stat(Path(db + ".bodies", n)).st_ino for n in names}
    contents = {Path(db + ".bodies", n).read_bytes() for n in names}
    assert contents == {other_data, data}
    assert read_all(store, big.id) == data
    assert store.cancel(other.id) is True  # deleting a result deletes its file
    assert [Path(db + ".bodies", n).read_bytes() for n in body_files(db)] == [data]
    assert store.purge(now=time.time() + 2 * HOUR) == 1
    assert body_files(db) == []


@pytest.mark.parametrize("spill", [False, True])
def test_bodies_up_to_the_threshold_are_inline(db: str, spill: bool) -> None:
    store = SQLiteStore(db)
    sizes = [0, 1, INLINE_BODY_MAX_BYTES - 1, INLINE_BODY_MAX_BYTES, INLINE_BODY_MAX_BYTES + 1]
    records = {size: new_record() for size in sizes}
    payloads = {size: os.urandom(size) for size in sizes}
    for size, record in records.items():
        store.create(record)
        body = body_of(payloads[size], threshold=1000 if spill else 1 << 20)
        spill_path = body.path
        assert store.finish(record.id, "200 OK", [], body, time.time() + HOUR)
        assert spill_path is None or not os.path.exists(spill_path)  # discarded either way
        assert store.get(record.id).body_size == size  # type: ignore[union-attr]
    for size, record in records.items():
        assert read_all(store, record.id) == payloads[size]  # byte-identical
        reader = store.open_body(record.id)
        assert reader is not None
        reader.close()
        assert isinstance(reader, io.BytesIO) == (size <= INLINE_BODY_MAX_BYTES)
    # Only the body over the threshold has a file; the others are in their rows.
    assert [Path(db + ".bodies", n).read_bytes() for n in body_files(db)] == [payloads[sizes[-1]]]
    assert sorted(inline_bodies(db)) == sorted(
        (records[size].id, payloads[size]) for size in sizes[:-1]
    )


def test_cancel_and_purge_remove_inline_bodies(db: str) -> None:
    store = SQLiteStore(db)
    cancelled, expired = new_record(), new_record()
    for record in (cancelled, expired):
        store.create(record)
        assert store.finish(record.id, "200 OK", [], body_of(b"inline"), time.time() + HOUR)
    assert len(inline_bodies(db)) == 2 and body_files(db) == []
    assert store.cancel(cancelled.id) is True
    assert [task_id for task_id, _ in inline_bodies(db)] == [expired.id]
    assert store.open_body(cancelled.id) is None
    assert store.purge(now=time.time() + 2 * HOUR) == 1
    assert inline_bodies(db) == [] and body_files(db) == []
    with closing(sqlite3.connect(db)) as raw:
        assert raw.execute("SELECT count(*) FROM tasks").fetchone() == (0,)


def test_a_small_job_costs_one_statement_per_call_and_no_file(db: str) -> None:
    store = SQLiteStore(db)
    store.get(new_task_id())  # connection and schema
    statements: list[str] = []
    store._connection().set_trace_callback(statements.append)
    record = new_record()
    store.create(record)
    assert store.claim(record.id, time.time() + 30)
    headers = [("Content-Type", "application/json")]
    assert store.finish(record.id, "200 OK", headers, body_of(b"{}"), time.time() + HOUR)
    assert store.get(record.id).headers == headers  # type: ignore[union-attr]
    assert read_all(store, record.id) == b"{}"
    assert len(statements) == 5, statements
    assert body_files(db) == []


def test_version_1_database_gets_the_body_column(db: str) -> None:
    with closing(sqlite3.connect(db)) as raw:  # the schema before inline bodies
        raw.execute(
            "CREATE TABLE tasks (id TEXT PRIMARY KEY, state TEXT NOT NULL, created REAL NOT NULL,"
            " started REAL, finished REAL, progress REAL, message TEXT, owner TEXT, label TEXT,"
            " lease_expires REAL, expires REAL, status TEXT, headers TEXT, body_size INTEGER,"
            " body_file TEXT)"
        )
    store = SQLiteStore(db)
    record = new_record()
    store.create(record)
    assert store.finish(record.id, "200 OK", [], body_of(b"v2"), time.time() + HOUR)
    assert read_all(store, record.id) == b"v2"
    assert store._connection().execute("PRAGMA user_version").fetchone() == (3,)
    assert SQLiteStore(db).get(record.id) is not None  # a second instance finds it done


def test_spilled_body_is_copied_when_it_cannot_be_linked(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_link(src: str, dst: str) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    store = SQLiteStore(db)
    record = new_record()
    store.create(record)
    data = os.urandom(2 * COPY_CHUNK + 3)
    body = body_of(data, threshold=100)
    spill_path = body.path
    assert store.finish(record.id, "200 OK", [], body, time.time() + HOUR)
    assert spill_path is not None and not os.path.exists(spill_path)
    assert read_all(store, record.id) == data
    assert len(body_files(db)) == 1


class _CancelledWhileCopying(SpooledBody):
    """A body whose copy is interrupted by the client's DELETE (the finish/cancel race)."""

    def __init__(self, cancel: object, size: int) -> None:
        super().__init__()
        self.cancel = cancel
        self.write(b"x" * size)

    def open(self) -> BinaryIO:  # read once, inline or into a file
        assert self.cancel()  # type: ignore[operator]
        return super().open()


@pytest.mark.parametrize("size", [8, INLINE_BODY_MAX_BYTES + 1])
def test_cancel_winning_during_finish_leaves_no_body(db: str, size: int) -> None:
    store, other = SQLiteStore(db), SQLiteStore(db)
    record = new_record()
    store.create(record)
    store.claim(record.id, time.time() + 30)
    body = _CancelledWhileCopying(lambda: other.cancel(record.id), size)
    assert store.finish(record.id, "200 OK", [], body, time.time() + HOUR) is False
    assert body_files(db) == []
    assert store.open_body(record.id) is None
    assert store.get(record.id).state is TaskState.CANCELLED  # type: ignore[union-attr]
    assert inline_bodies(db) == []


def test_finish_of_a_cancelled_task_writes_nothing(db: str) -> None:
    store = SQLiteStore(db)
    record = new_record()
    store.create(record)
    store.cancel(record.id)
    body = body_of(b"x" * 5000, threshold=100)
    spill_path = body.path
    assert store.finish(record.id, "200 OK", [], body, time.time() + HOUR) is False
    assert body_files(db) == []
    assert spill_path is not None and not os.path.exists(spill_path)  # discarded anyway


def test_purge_sweeps_orphaned_body_files(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SQLiteStore(db)
    record = new_record()
    store.create(record)
    store.finish(record.id, "200 OK", [], body_of(b"kept"), time.time() + HOUR)
    orphan = Path(db + ".bodies", new_task_id() + ".deadbeef")
    orphan.write_bytes(b"left by a killed worker")
    store.purge()
    assert orphan.exists()  # young: its finish() may still be committing
    monkeypatch.setattr(sqlite_module, "_ORPHAN_GRACE", -10.0)
    store.purge()
    assert not orphan.exists()
    assert read_all(store, record.id) == b"kept"


# -- locking and failures ----------------------------------------------------------------------


def test_locked_database_raises_store_unavailable_in_bounded_time(db: str) -> None:
    store = SQLiteStore(db, busy_timeout=0.3)
    record = new_record()
    store.create(record)
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        for operation in (
            lambda: store.create(new_record()),
            lambda: store.claim(record.id, time.time() + 30),
            lambda: store.cancel(record.id),
            lambda: store.purge(),
        ):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                operation()
            assert 0.25 <= time.monotonic() - started < 2
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert store.claim(record.id, time.time() + 30) is True  # usable again


def test_short_lock_is_waited_out(db: str) -> None:
    store = SQLiteStore(db, busy_timeout=5)
    store.get(new_task_id())  # schema exists
    blocker = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(0.2, lambda: blocker.execute("ROLLBACK"))
    release.start()
    started = time.monotonic()
    record = new_record()
    store.create(record)
    release.join()
    blocker.close()
    assert time.monotonic() - started >= 0.15
    assert store.get(record.id) is not None


def test_unopenable_database_raises_store_unavailable(tmp_path: Path) -> None:
    (tmp_path / "a-directory.db").mkdir()
    store = SQLiteStore(str(tmp_path / "a-directory.db"))
    with pytest.raises(StoreUnavailable):
        store.get(new_task_id())
    (tmp_path / "a-file").write_text("")
    with pytest.raises(StoreUnavailable):
        SQLiteStore(str(tmp_path / "a-file" / "tasks.db"))


def test_wal_mode_and_synchronous_normal(db: str) -> None:
    store = SQLiteStore(db)
    store.get(new_task_id())
    with closing(sqlite3.connect(db)) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert store._connection().execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    assert store._connection().execute("PRAGMA busy_timeout").fetchone() == (5000,)


# -- URLs --------------------------------------------------------------------------------------


def test_from_url_absolute_path_forms(tmp_path: Path) -> None:
    expected = str(tmp_path / "new" / "dir" / "d.db")
    assert str(tmp_path).startswith("/")
    store = SQLiteStore.from_url(f"sqlite://{tmp_path}/new/dir/d.db")  # sqlite:///abs
    assert store.path == expected
    assert (tmp_path / "new" / "dir").is_dir()  # missing parents created
    assert SQLiteStore.from_url(f"sqlite:///{tmp_path}/new/dir/d.db").path == expected  # ////
    assert SQLiteStore.from_url(f"SQLite://{tmp_path}/new/dir/d.db").path == expected


def test_from_url_relative_path_is_fixed_at_creation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = SQLiteStore.from_url("sqlite://rel/d.db", busy_timeout=1.5)
    assert store.path == str(tmp_path / "rel" / "d.db")
    assert store.busy_timeout == 1.5
    monkeypatch.chdir("/")
    record = new_record()
    store.create(record)
    assert (tmp_path / "rel" / "d.db").exists()


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///", "sqlite://:memory:", "memory://", "sqlite:/d.db", "d.db"]
)
def test_from_url_rejects_non_files(url: str) -> None:
    with pytest.raises(ConfigurationError):
        SQLiteStore.from_url(url)


def test_open_store_picks_sqlite(tmp_path: Path) -> None:
    store = open_store(f"sqlite://{tmp_path}/o.db")
    assert isinstance(store, SQLiteStore) and store.shared is True
    assert store.path == str(tmp_path / "o.db")


# -- cross-process wake-ups (stores/sqlite_wake.py, docs/protocol.md "Holds") -------------------


def _wait_in_child(path: str, task_id: str, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    # Re-reading the row only every minute: only a wake-up can end this wait in time.
    sqlite_module.FALLBACK_SECONDS = 60.0
    store = SQLiteStore(path)
    try:
        record = store.wait(task_id, 30)
        results.put(record.state.value if record is not None else None)
    finally:
        store.close()


def test_a_finish_in_one_process_wakes_a_wait_in_another(db: str) -> None:
    store = SQLiteStore(db)
    record = new_record(state=TaskState.RUNNING)
    store.create(record)
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_wait_in_child, args=(db, record.id, results))
    proc.start()
    try:
        wake_dir = Path(db + ".wake")
        deadline = time.monotonic() + 20
        while not (wake_dir.is_dir() and any(wake_dir.iterdir())):  # the child listens
            assert time.monotonic() < deadline, "the waiting process never bound its socket"
            time.sleep(0.02)
        time.sleep(0.2)  # into its wait
        assert store.finish(record.id, "200 OK", [], SpooledBody(), time.time() + HOUR)
        assert results.get(timeout=10) == "done"  # well before the 60 s re-read
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        store.close()
    assert proc.exitcode == 0
    assert not list(Path(db + ".wake").iterdir())  # close() removed the child's socket


def test_a_dead_processes_socket_is_removed_by_the_next_broadcast(db: str) -> None:
    import socket

    store = SQLiteStore(db)
    wake_dir = Path(db + ".wake")
    wake_dir.mkdir(mode=0o700)
    stale = wake_dir / "999999-dead.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(stale))
    sock.close()  # as a killed process leaves it: the file stays, nobody receives
    record = new_record(state=TaskState.RUNNING)
    store.create(record)
    assert store.fail(record.id, "failed", "x", time.time() + HOUR)
    assert not stale.exists()
    store.close()


def test_waits_in_one_process_are_woken_without_polling(db: str) -> None:
    sqlite_module.FALLBACK_SECONDS, saved = 60.0, sqlite_module.FALLBACK_SECONDS
    store = SQLiteStore(db)
    try:
        record = new_record(state=TaskState.RUNNING)
        store.create(record)
        out: list[object] = []
        waiter = threading.Thread(target=lambda: out.append(store.wait(record.id, 30)))
        waiter.start()
        time.sleep(0.1)
        assert store.finish(record.id, "200 OK", [], SpooledBody(), time.time() + HOUR)
        waiter.join(10)
        assert not waiter.is_alive() and out[0].state is TaskState.DONE  # type: ignore[attr-defined]
    finally:
        sqlite_module.FALLBACK_SECONDS = saved
        store.close()
