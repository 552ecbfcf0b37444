"""RedisStore: the shared contract against a real Redis, plus what only Redis has (several
hosts on one store, chunked bodies, TTLs, a server that dies and comes back)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator

import pytest
import redis_server
from redis_server import RedisServerProcess, keys_under
from store_contract import HOUR, StoreContract, body_of, new_record, read_all

from wsgi_deferred.buffers import SpooledBody
from wsgi_deferred.errors import ConfigurationError, StoreUnavailable
from wsgi_deferred.stores.base import STALE_RETENTION
from wsgi_deferred.task import TaskRecord, TaskState

redis = pytest.importorskip("redis")
from wsgi_deferred.stores.redis import RedisStore  # noqa: E402

# Shared fixtures, bound here so that pytest finds them.
redis_url = redis_server.redis_url
redis_prefix = redis_server.redis_prefix
redis_process = redis_server.redis_process

MiB = 1 << 20
MakeStore = Callable[..., RedisStore]


@pytest.fixture
def make_store(redis_url: str, redis_prefix: str) -> Iterator[Callable[..., RedisStore]]:
    """Another handle ("host") on the same storage: its own client and connection pool."""
    stores: list[RedisStore] = []

    def make(**options: object) -> RedisStore:
        stores.append(RedisStore(redis_url, prefix=redis_prefix, **options))  # type: ignore[arg-type]
        return stores[-1]

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def store(make_store: Callable[..., RedisStore]) -> RedisStore:
    return make_store()


class TestRedisStore(StoreContract):
    """The whole shared contract (store fixture above)."""


def running(store: RedisStore, **changes: object) -> TaskRecord:
    record = new_record(**changes)
    store.create(record)
    assert store.claim(record.id, time.time() + 30)
    return record


def kinds(url: str, prefix: str) -> list[str]:
    """The kinds of key left under *prefix* ("task", "body", "done", "index", ...)."""
    return sorted({key.decode()[len(prefix) :].split(":")[0] for key in keys_under(url, prefix)})


# -- several hosts -------------------------------------------------------------------------


def test_two_hosts_share_tasks_and_waiter_wakes_at_once(make_store: MakeStore) -> None:
    host_a, host_b = make_store(), make_store()
    record = new_record(label="POST /render/1")
    host_a.create(record)
    assert host_b.get(record.id).label == "POST /render/1"  # type: ignore[union-attr]
    assert host_b.claim(record.id, time.time() + 30) is True
    assert host_a.claim(record.id, time.time() + 30) is False
    host_b.set_progress(record.id, 0.5, "half")
    assert host_a.get(record.id).progress == 0.5  # type: ignore[union-attr]

    woke: list[float] = []
    got: list[TaskRecord | None] = []

    def waiter() -> None:
        got.append(host_a.wait(record.id, 20))
        woke.append(time.monotonic())

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.3)
    assert thread.is_alive()
    finished_at = time.monotonic()
    assert host_b.finish(record.id, "200 OK", [], body_of(b"from b"), time.time() + HOUR)
    thread.join(5)
    assert got and got[0] is not None and got[0].state is TaskState.DONE
    assert woke[0] - finished_at < 0.5
    assert read_all(host_a, record.id) == b"from b"


def long_polls_on(
    hosts: list[RedisStore], record: TaskRecord, count: int, end: Callable[[RedisStore], object]
) -> tuple[list[tuple[float, TaskState | None]], float]:
    """*count* long polls of *record*, spread over *hosts*, while ``end(hosts[1])`` ends the
    task: when and in which state each woke, and when the task ended (monotonic)."""
    woke: list[tuple[float, TaskState | None]] = []
    lock = threading.Lock()

    def waiter(host: RedisStore) -> None:
        got = host.wait(record.id, 20)
        with lock:
            woke.append((time.monotonic(), got.state if got else None))

    threads = [threading.Thread(target=waiter, args=(hosts[i % 3],)) for i in range(count)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    ended_at = time.monotonic()
    assert end(hosts[1]) is True  # any end transition wakes them all
    for t in threads:
        t.join(5)
    return woke, ended_at


def test_every_concurrent_waiter_wakes(make_store: MakeStore) -> None:
    hosts = [make_store() for _ in range(3)]
    record = running(hosts[0])
    woke, cancelled_at = long_polls_on(hosts, record, 8, lambda host: host.cancel(record.id))
    assert len(woke) == 8
    assert all(state is TaskState.CANCELLED for _, state in woke)
    assert max(at for at, _ in woke) - cancelled_at < 0.5


def test_claim_race_across_hosts(make_store: MakeStore) -> None:
    hosts = [make_store() for _ in range(4)]

    def claimer(host: RedisStore, task_id: str, barrier: threading.Barrier, out: list) -> None:
        barrier.wait()
        out.append(host.claim(task_id, time.time() + 30))

    for _ in range(10):
        record = new_record()
        hosts[0].create(record)
        barrier, results = threading.Barrier(4), []
        threads = [
            threading.Thread(target=claimer, args=(h, record.id, barrier, results)) for h in hosts
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [False, False, False, True]


def test_long_poll_outlasts_socket_timeout(make_store: MakeStore) -> None:
    store = make_store(socket_timeout=0.3)
    record = running(store)
    started = time.monotonic()
    got = store.wait(record.id, 1.2)  # blocks in Redis longer than the socket timeout
    assert got is not None and got.state is TaskState.RUNNING
    assert 1.1 <= time.monotonic() - started < 3
    # No reply left unread on a pooled connection: the next calls see the live task (with
    # redis-py 5.3.1 and a private read_response(timeout=...) they answered None, issue 9).
    for _ in range(3):
        assert store.get(record.id).state is TaskState.RUNNING  # type: ignore[union-attr]
        assert store.wait(record.id, 0.05).state is TaskState.RUNNING  # type: ignore[union-attr]


def test_wait_reports_lost_as_soon_as_the_lease_runs_out(make_store: MakeStore) -> None:
    store = make_store()
    record = new_record()
    store.create(record)
    store.claim(record.id, time.time() + 0.3)
    started = time.monotonic()
    got = store.wait(record.id, 10)
    assert got is not None and got.state is TaskState.LOST
    assert 0.25 < time.monotonic() - started < 0.8


def test_wait_wakes_when_a_finished_task_is_deleted(make_store: MakeStore) -> None:
    host_a, host_b = make_store(), make_store()
    record = running(host_a)
    assert host_a.wait(record.id, 0.05).state is TaskState.RUNNING  # type: ignore[union-attr]
    host_b.purge(now=time.time() + 2 * STALE_RETENTION)  # the stale record goes
    started = time.monotonic()
    assert host_a.wait(record.id, 10) is None
    assert time.monotonic() - started < 0.5


# -- bodies --------------------------------------------------------------------------------


def test_large_body_is_chunked_and_round_trips(
    make_store: MakeStore, redis_url: str, redis_prefix: str
) -> None:
    store = make_store(chunk_size=64 * 1024)
    data = bytes(range(251)) * (5 * MiB // 251 + 1)  # ~5 MiB, not a multiple of the chunk
    record = running(store)
    assert store.finish(
        record.id, "200 OK", [], body_of(data, threshold=1 << 16), time.time() + HOUR
    )
    client = redis.Redis.from_url(redis_url)
    (body_key,) = [k for k in keys_under(redis_url, redis_prefix) if b":body:" in k]
    assert client.llen(body_key) == -(-len(data) // (64 * 1024))
    assert read_all(store, record.id) == data
    assert store.get(record.id).body_size == len(data)  # type: ignore[union-attr]
    reader = store.open_body(record.id)
    assert reader is not None
    with reader:
        parts = [reader.read(1000), reader.read(70_000), reader.read()]
    assert b"".join(parts) == data

    assert store.cancel(record.id) is True  # a finished task is deleted with its body
    assert kinds(redis_url, redis_prefix) == ["done"]  # only the short-lived wake-up token
    client.close()


def test_body_is_copied_and_served_with_flat_memory(make_store: MakeStore) -> None:
    store = make_store(chunk_size=64 * 1024)
    data = b"x" * (8 * MiB)
    record = running(store)
    body = body_of(data, threshold=1 << 16)  # spilled to a file
    tracemalloc.start()
    try:
        assert store.finish(record.id, "200 OK", [], body, time.time() + HOUR)
        _, finish_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        reader = store.open_body(record.id)
        assert reader is not None
        total = 0
        with reader:
            while chunk := reader.read(16 * 1024):
                total += len(chunk)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == len(data)
    assert finish_peak < 1 * MiB and read_peak < 1 * MiB
    assert body.path is None  # the store discarded the spooled body


def test_expired_result_leaves_no_keys(
    make_store: MakeStore, redis_url: str, redis_prefix: str
) -> None:
    store = make_store(chunk_size=1024)
    record = running(store)
    assert store.finish(record.id, "200 OK", [], body_of(b"z" * 10_000), time.time() + 0.3)
    assert "body" in kinds(redis_url, redis_prefix)
    time.sleep(0.5)
    assert store.get(record.id) is None
    assert set(kinds(redis_url, redis_prefix)) <= {"done", "index"}
    assert store.purge() == 0  # Redis TTLs already removed it
    assert set(kinds(redis_url, redis_prefix)) <= {"done"}


class CancelMidUpload(SpooledBody):
    """A body whose upload is overtaken by a cancel from another host."""

    def __init__(self, other: RedisStore, task_id: str) -> None:
        super().__init__()
        self.other, self.task_id = other, task_id
        self.write(b"y" * 300_000)

    def iter_chunks(self, chunk_size: int = 65536) -> Iterator[bytes]:
        for n, chunk in enumerate(super().iter_chunks(chunk_size)):
            if n == 2:
                assert self.other.cancel(self.task_id)
            yield chunk


def test_finish_losing_to_cancel_leaves_no_chunks(
    make_store: MakeStore, redis_url: str, redis_prefix: str
) -> None:
    host_a, host_b = make_store(chunk_size=50_000), make_store()
    record = running(host_a)
    body = CancelMidUpload(host_b, record.id)
    assert host_a.finish(record.id, "200 OK", [], body, time.time() + HOUR) is False
    assert host_a.get(record.id).state is TaskState.CANCELLED  # type: ignore[union-attr]
    assert host_a.open_body(record.id) is None
    assert "body" not in kinds(redis_url, redis_prefix)
    assert body.in_memory is False  # discarded by the store


def body_keys(url: str, prefix: str) -> list[bytes]:
    return [k for k in keys_under(url, prefix) if b":body:" in k]


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[], object]], int]:
    """Counts the commands (or pipelines) the calling thread sends while a call runs."""
    sent: list[int] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def send(self: object, *args: object, **kwargs: object) -> object:
        sent.append(threading.get_ident())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", send)

    def count(call: Callable[[], object]) -> int:
        del sent[:]
        call()
        return sent.count(threading.get_ident())

    return count


@pytest.mark.parametrize("size", [1, 12, 4095, 4096])
def test_small_body_travels_inline_and_round_trips(
    make_store: MakeStore, redis_url: str, redis_prefix: str, round_trips: Callable, size: int
) -> None:
    store = make_store(chunk_size=4096)
    data = (bytes(range(256)) * 17)[:size]  # every byte value, NULs and high bytes included
    record = running(store)
    store.get(record.id)  # connections warmed up
    results: list[object] = []
    finish = lambda: results.append(  # noqa: E731
        store.finish(record.id, "200 OK", [("X-A", "b")], body_of(data, 1), time.time() + HOUR)
    )
    assert round_trips(finish) == 1 and results == [True]  # spilled to a file or not
    assert round_trips(lambda: results.append(store.open_body(record.id))) == 1
    reader = results[-1]
    assert reader is not None and reader.read() == data  # type: ignore[attr-defined]
    assert store.get(record.id).body_size == size  # type: ignore[union-attr]
    (key,) = body_keys(redis_url, redis_prefix)
    client = redis.Redis.from_url(redis_url)
    assert client.lrange(key, 0, -1) == [data]
    assert 3590_000 < client.pttl(key) <= HOUR * 1000  # expires with the record
    client.close()


def test_empty_body_needs_no_body_key(store: RedisStore, redis_url: str, redis_prefix: str) -> None:
    record = running(store)
    assert store.finish(record.id, "204 No Content", [], body_of(b""), time.time() + HOUR)
    assert read_all(store, record.id) == b""
    assert body_keys(redis_url, redis_prefix) == []


def test_body_just_over_one_chunk_is_still_chunked(
    make_store: MakeStore, redis_url: str, redis_prefix: str, round_trips: Callable
) -> None:
    store = make_store(chunk_size=4096)
    data = bytes(range(256)) * 16 + b"!"  # 4097 bytes
    record = running(store)
    finish = lambda: store.finish(record.id, "200 OK", [], body_of(data), time.time() + HOUR)  # noqa: E731
    assert round_trips(finish) == 4  # state check, two chunks, the script
    (key,) = body_keys(redis_url, redis_prefix)
    client = redis.Redis.from_url(redis_url)
    assert client.lrange(key, 0, -1) == [data[:4096], b"!"]
    client.close()
    reader = store.open_body(record.id)
    assert reader is not None
    with reader:
        assert reader.read(10) == data[:10] and reader.read() == data[10:]


def finish_and_cancel_at_once(finisher: RedisStore, canceller: RedisStore, size: int) -> bool:
    """Runs a finish and a cancel of one running task in two threads at the same moment."""
    record = running(finisher)
    barrier, results = threading.Barrier(2), {}

    def finish() -> None:
        body = body_of(b"q" * size)
        barrier.wait()
        results["finish"] = finisher.finish(record.id, "200 OK", [], body, time.time() + HOUR)

    def cancel() -> None:
        barrier.wait()
        results["cancel"] = canceller.cancel(record.id)

    threads = [threading.Thread(target=finish), threading.Thread(target=cancel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results["cancel"] is True  # it cancelled the task, or deleted its result
    got = finisher.get(record.id)
    assert got is None or got.state is TaskState.CANCELLED
    assert finisher.open_body(record.id) is None
    return results["finish"]


@pytest.mark.parametrize("size", [100, 5000])  # inline, chunked
def test_finish_racing_cancel_leaves_no_body_keys(
    make_store: MakeStore, redis_url: str, redis_prefix: str, size: int
) -> None:
    host_a, host_b = make_store(chunk_size=1024), make_store()
    for _ in range(15):
        finish_and_cancel_at_once(host_a, host_b, size)
        assert body_keys(redis_url, redis_prefix) == []
    # Cancelled first: the losing finish stored nothing (inline or chunk by chunk).
    record = running(host_a)
    assert host_b.cancel(record.id)
    assert not host_a.finish(record.id, "200 OK", [], body_of(b"q" * size), time.time() + HOUR)
    assert body_keys(redis_url, redis_prefix) == []


def test_waiter_gets_the_ended_record_from_its_wake_up_token(
    make_store: MakeStore, round_trips: Callable
) -> None:
    host_a, host_b = make_store(), make_store()
    record = running(host_a, label='GET /ünïcode/\\"x"\u2028')
    host_a.wait(record.id, 0.01)  # both connection pools (reads, long polls) warmed up
    got: list[TaskRecord | None] = []
    counted: list[int] = []
    thread = threading.Thread(
        target=lambda: counted.append(round_trips(lambda: got.append(host_a.wait(record.id, 20))))
    )
    thread.start()
    time.sleep(0.3)
    headers = [("Content-Type", "text/plain; charset=ü"), ("X-Empty", "")]
    assert host_b.finish(record.id, "201 Created", headers, body_of(b"ok"), time.time() + HOUR)
    thread.join(5)
    assert got[0] == host_a.get(record.id)  # what a read would have said, field for field
    assert got[0] is not None and got[0].label == record.label and got[0].status == "201 Created"
    assert counted == [2]  # a read, then the blocking move that brings the record

    assert host_b.cancel(record.id)  # deleted: the token now says "gone"
    assert host_a.wait(record.id, 5) is None


def test_wait_treats_an_expired_token_record_as_gone(store: RedisStore) -> None:
    record = running(store)
    assert store.fail(record.id, "failed", "boom", time.time() + 0.2)
    time.sleep(0.3)  # the record expired; its token (kept NOTIFY_TTL) still holds it
    assert store.wait(record.id, 1) is None


# -- TTLs, purge, secret -------------------------------------------------------------------


def test_keys_carry_ttls(make_store: MakeStore, redis_url: str, redis_prefix: str) -> None:
    store = make_store(chunk_size=4)
    client = redis.Redis.from_url(redis_url)
    key = f"{redis_prefix}task:{{%s}}"

    record = new_record(lease_expires=time.time() + 30)
    store.create(record)
    ttl = client.pttl(key % record.id) / 1000
    assert STALE_RETENTION + 25 < ttl <= STALE_RETENTION + 30  # unfinished: lease + retention
    store.claim(record.id, time.time() + 100)
    assert client.pttl(key % record.id) / 1000 > STALE_RETENTION + 95  # renewed with the lease

    assert store.finish(record.id, "200 OK", [], body_of(b"abcdefghij"), time.time() + 50)
    for k in keys_under(redis_url, redis_prefix):
        if b":index:{" in k:
            assert client.pttl(k) == -1  # the sharded purge index (trimmed, never expired)
        elif b":done:" in k:
            assert 0 < client.pttl(k) <= 60_000
        else:
            assert 45_000 < client.pttl(k) <= 50_000, k  # record and body expire together

    other = new_record()
    store.create(other)
    store.cancel(other.id)
    assert STALE_RETENTION - 5 < client.pttl(key % other.id) / 1000 <= STALE_RETENTION
    client.close()


def test_purge_counts_what_it_removed(
    make_store: MakeStore, redis_url: str, redis_prefix: str
) -> None:
    store = make_store()
    records = [running(store) for _ in range(3)]
    store.finish(records[0].id, "200 OK", [], body_of(b"a"), time.time() + 60)
    assert store.purge() == 0
    assert store.purge(now=time.time() + 120) == 1  # only the finished one is due
    assert store.get(records[0].id) is None and store.get(records[1].id) is not None
    assert store.purge(now=time.time() + 30 + STALE_RETENTION + 5) == 2  # then the stale ones
    assert store.purge(now=time.time() + 10 * HOUR) == 0
    assert set(kinds(redis_url, redis_prefix)) <= {"done", "index"}


def test_lost_is_persisted_for_every_host(make_store: MakeStore) -> None:
    host_a, host_b = make_store(), make_store()
    record = new_record()
    host_a.create(record)
    host_a.claim(record.id, time.time() + 0.1)
    time.sleep(0.2)
    first = host_a.get(record.id)
    second = host_b.get(record.id)
    assert first is not None and second is not None
    assert first.state is second.state is TaskState.LOST
    assert first.finished == second.finished  # the same persisted record, not two guesses
    assert host_b.renew([record.id], time.time() + 30) == set()
    assert host_b.fail(record.id, "failed", "late", time.time() + HOUR) is False


def test_record_round_trips_every_field(store: RedisStore) -> None:
    record = new_record(owner="h4sh", label="GET /ünïcode", created=1700000000.123456789)
    store.create(record)
    store.set_progress(record.id, 1e-05, "")
    got = store.get(record.id)
    assert got is not None
    assert (got.owner, got.label, got.created) == ("h4sh", "GET /ünïcode", record.created)
    assert (got.progress, got.message) == (1e-05, "")
    store.set_progress(record.id, None, None)
    assert (store.get(record.id).progress, store.get(record.id).message) == (None, None)  # type: ignore[union-attr]
    store.fail(record.id, "failed", None, time.time() + HOUR)
    assert store.get(record.id).message is None  # type: ignore[union-attr]


def test_secret_is_shared_by_every_host(make_store: MakeStore) -> None:
    secrets = {make_store().secret() for _ in range(3)}
    assert len(secrets) == 1 and len(secrets.pop()) == 32


def test_ready_client_is_accepted_and_decoding_clients_refused(
    redis_url: str, redis_prefix: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    store = RedisStore(client, prefix=redis_prefix)
    record = new_record()
    store.create(record)
    assert store.get(record.id) is not None
    store.close()
    assert client.ping()  # a client handed in is not closed by the store
    client.close()
    with pytest.raises(ConfigurationError):
        RedisStore(redis.Redis.from_url(redis_url, decode_responses=True))
    assert RedisStore.from_url(redis_url, prefix=redis_prefix).shared is True


def test_importing_the_package_does_not_import_redis() -> None:
    code = (
        "import sys, wsgi_deferred, wsgi_deferred.stores, wsgi_deferred.stores.memory\n"
        "sys.exit(1 if 'redis' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=30).returncode == 0


# -- a server that dies and comes back ----------------------------------------------------


def each_method(store: RedisStore, task_id: str) -> dict[str, Callable[[], object]]:
    return {
        "create": lambda: store.create(new_record()),
        "claim": lambda: store.claim(task_id, time.time() + 30),
        "renew": lambda: store.renew([task_id], time.time() + 30),
        "set_progress": lambda: store.set_progress(task_id, 0.5, "x"),
        "finish": lambda: store.finish(task_id, "200 OK", [], body_of(b"x"), time.time() + 60),
        "fail": lambda: store.fail(task_id, "failed", "x", time.time() + 60),
        "cancel": lambda: store.cancel(task_id),
        "get": lambda: store.get(task_id),
        "open_body": lambda: store.open_body(task_id),
        "wait": lambda: store.wait(task_id, 10),
        "purge": lambda: store.purge(),
        "secret": lambda: store.secret(),
    }


def test_dead_server_fails_fast_and_store_recovers(redis_process: RedisServerProcess) -> None:
    store = RedisStore(redis_process.url, prefix="t:")
    record = running(store)
    store.secret()
    redis_process.stop()
    for name, call in each_method(store, record.id).items():
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            call()
        assert time.monotonic() - started < 3, name

    redis_process.start()  # an empty server (no persistence), same port, same store object
    fresh = running(store)
    assert store.finish(fresh.id, "200 OK", [], body_of(b"back"), time.time() + 60)
    assert read_all(store, fresh.id) == b"back"
    assert store.wait(fresh.id, 1).state is TaskState.DONE  # type: ignore[union-attr]
    assert len(store.secret()) == 32
    store.close()


def test_reader_and_waiter_fail_promptly_when_server_dies(
    redis_process: RedisServerProcess,
) -> None:
    store = RedisStore(redis_process.url, prefix="t:", chunk_size=1024)
    done = running(store)
    store.finish(done.id, "200 OK", [], body_of(b"r" * 10_000), time.time() + 60)
    reader = store.open_body(done.id)
    assert reader is not None and reader.read(10) == b"r" * 10
    waiting = running(store)
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            store.wait(waiting.id, 30)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.3)
    killed = time.monotonic()
    redis_process.stop()
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - killed < 2
    assert len(errors) == 1 and isinstance(errors[0], StoreUnavailable)
    with pytest.raises(StoreUnavailable):
        reader.read()
    store.close()


@pytest.mark.parametrize("chunks", [[], [b"one chunk"], [b"hello ", b"world"]])
def test_a_result_stored_by_the_earlier_key_layout_is_still_served(
    store: RedisStore, redis_url: str, redis_prefix: str, chunks: list[bytes]
) -> None:
    """Before the one-slot layout a body lived in ``body:{ID}:<upload token>`` (the token in
    the record's ``body`` field); results finished before an upgrade stay readable."""
    record = running(store)
    client = redis.Redis.from_url(redis_url)
    if chunks:
        client.rpush(f"{redis_prefix}body:{{{record.id}}}:0123abcd", *chunks)
    data = b"".join(chunks)
    client.hset(
        f"{redis_prefix}task:{{{record.id}}}",
        mapping={
            "state": "done", "finished": repr(time.time()), "body": "0123abcd",
            "chunks": str(len(chunks)), "status": "200 OK", "headers": "[]",
            "body_size": str(len(data)), "expires": repr(time.time() + 60),
        },
    )  # fmt: skip
    client.close()
    assert store.get(record.id).state is TaskState.DONE  # type: ignore[union-attr]
    assert read_all(store, record.id) == data


def purge_past_a_full_batch(store: RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """purge() with a batch of 2: several rounds in most shards, every due task found."""
    import wsgi_deferred.stores.redis as module

    monkeypatch.setattr(module, "PURGE_BATCH", 2)
    records = [running(store) for _ in range(40)]
    for record in records[:30]:
        store.finish(record.id, "200 OK", [], body_of(b"x"), time.time() + 60)
    assert store.purge(now=time.time() + 120) == 30
    assert all(store.get(r.id) is not None for r in records[30:])
    assert store.purge(now=time.time() + 120) == 0


def test_purge_walks_past_a_full_batch(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    purge_past_a_full_batch(make_store(), monkeypatch)


def test_an_index_entry_below_its_tasks_deadline_is_moved_not_purged(
    make_store: MakeStore, redis_url: str
) -> None:
    """Index scores are lower bounds (they are written beside the scripts, not in them):
    purge() asks the task's own script and moves the entry to the real deadline."""
    store = make_store()
    record = running(store)
    client = redis.Redis.from_url(redis_url)
    shard = store._index(record.id)
    client.zadd(shard, {record.id: 1.0})  # as if a crash left it too low
    assert store.purge() == 0
    assert store.get(record.id).state is TaskState.RUNNING  # type: ignore[union-attr]
    deadline = float(client.hget(store._key("task", record.id), "purge_at"))
    assert client.zscore(shard, record.id) == pytest.approx(deadline)
    assert deadline > time.time() + STALE_RETENTION
    client.close()
