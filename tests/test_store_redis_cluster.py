"""RedisStore on a real local Redis Cluster (three primaries) and behind a real Sentinel: the
shared contract on both, plus what the cluster rules demand (one slot per task, scripts that
declare their keys, no cross-slot work) and the URL forms.

The ``redis_cluster`` and ``redis_sentinel`` session fixtures come from tests/conftest.py."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis_cluster import MASTER_NAME, LocalCluster, LocalSentinel
from store_contract import HOUR, StoreContract, body_of, read_all
from test_store_redis import each_method, long_polls_on, purge_past_a_full_batch, running

from wsgi_deferred import config
from wsgi_deferred.errors import ConfigurationError, StoreUnavailable
from wsgi_deferred.stores import REDIS_SCHEMES, open_store
from wsgi_deferred.stores.base import STALE_RETENTION
from wsgi_deferred.task import TaskState, new_task_id

redis = pytest.importorskip("redis")
from redis.cluster import RedisCluster  # noqa: E402

from wsgi_deferred.stores import redis_connect  # noqa: E402
from wsgi_deferred.stores.redis import INDEX_SHARDS, RedisStore  # noqa: E402

MakeStore = Callable[..., RedisStore]


def _prefix() -> str:
    return f"test:{new_task_id()}:"


@pytest.fixture
def cluster_prefix(redis_cluster: LocalCluster) -> Iterator[str]:
    prefix = _prefix()
    yield prefix
    redis_cluster.delete_prefix(prefix)


@pytest.fixture
def make_cluster_store(redis_cluster: LocalCluster, cluster_prefix: str) -> Iterator[MakeStore]:
    """Another "host" on the cluster: its own RedisCluster client, from the URL."""
    stores: list[RedisStore] = []

    def make(**options: object) -> RedisStore:
        stores.append(RedisStore(redis_cluster.url, prefix=cluster_prefix, **options))  # type: ignore[arg-type]
        return stores[-1]

    yield make
    for store in stores:
        store.close()


class TestClusterStore(StoreContract):
    """The whole shared contract on Redis Cluster."""

    @pytest.fixture
    def store(self, make_cluster_store: MakeStore) -> RedisStore:
        return make_cluster_store()


class TestSentinelStore(StoreContract):
    """The whole shared contract through Sentinel (first sentinel in the URL is dead)."""

    @pytest.fixture
    def store(self, redis_sentinel: LocalSentinel) -> Iterator[RedisStore]:
        prefix = _prefix()
        store = RedisStore(redis_sentinel.url, prefix=prefix)
        yield store
        store.close()
        client = redis.Redis(port=redis_sentinel.master.port)
        for key in client.scan_iter(match=prefix + "*"):
            client.unlink(key)
        client.close()


# -- the cluster rules ---------------------------------------------------------------------


def test_every_key_of_a_task_shares_one_slot_and_tasks_spread_over_nodes(
    make_cluster_store: MakeStore, redis_cluster: LocalCluster, cluster_prefix: str
) -> None:
    store = make_cluster_store(chunk_size=16)  # many chunks: body and upload keys exist
    ids = []
    for n in range(24):
        record = running(store)
        store.set_progress(record.id, 0.5, "half")
        if n % 2:
            assert store.finish(record.id, "200 OK", [], body_of(b"b" * 100), time.time() + HOUR)
        ids.append(record.id)
    client = RedisCluster.from_url(redis_cluster.url.replace("redis+cluster", "redis"))
    try:
        slots: dict[str, set[int]] = defaultdict(set)
        nodes: set[str] = set()
        for key in redis_cluster.keys_under(cluster_prefix):
            name = key.decode()[len(cluster_prefix) :]
            tag = name[name.index("{") + 1 : name.index("}")]
            slot = client.keyslot(key)
            slots[tag].add(slot)
            nodes.add(client.nodes_manager.get_node_from_slot(slot).name)
    finally:
        client.close()
    assert set(ids) <= set(slots)  # every task left keys, tagged with its id
    assert all(len(found) == 1 for found in slots.values()), slots  # one slot per tag
    assert len(nodes) == 3  # and the tasks (and index shards) spread over all three nodes
    assert len([tag for tag in slots if tag.isdigit()]) <= INDEX_SHARDS


def test_long_poll_on_the_cluster_wakes_every_waiter(make_cluster_store: MakeStore) -> None:
    hosts = [make_cluster_store() for _ in range(3)]
    record = running(hosts[0])

    def finish(host: RedisStore) -> bool:
        return host.finish(record.id, "200 OK", [], body_of(b"ok"), time.time() + HOUR)

    woke, finished_at = long_polls_on(hosts, record, 6, finish)
    assert len(woke) == 6 and all(state is TaskState.DONE for _, state in woke)
    assert max(at for at, _ in woke) - finished_at < 0.5


def test_purge_on_the_cluster_counts_across_shards_and_leaves_no_task_keys(
    make_cluster_store: MakeStore, redis_cluster: LocalCluster, cluster_prefix: str
) -> None:
    store = make_cluster_store(chunk_size=8)
    records = [running(store) for _ in range(40)]
    for record in records[:20]:
        store.finish(record.id, "200 OK", [], body_of(b"x" * 50), time.time() + 60)
    assert store.purge() == 0
    assert store.purge(now=time.time() + 120) == 20  # the finished ones only
    assert store.purge(now=time.time() + 30 + STALE_RETENTION + 5) == 20  # then the stale
    kinds = {
        k.decode()[len(cluster_prefix) :].split(":")[0]
        for k in redis_cluster.keys_under(cluster_prefix)
    }
    assert kinds <= {"done", "index"}
    assert store.purge(now=time.time() + 10 * HOUR) == 0


def test_a_large_body_round_trips_on_the_cluster(make_cluster_store: MakeStore) -> None:
    store = make_cluster_store(chunk_size=64 * 1024)
    data = bytes(range(251)) * 4000  # ~1 MiB, 16 chunks
    record = running(store)
    assert store.finish(record.id, "200 OK", [], body_of(data, 1 << 16), time.time() + HOUR)
    assert read_all(store, record.id) == data


def test_a_ready_cluster_client_is_accepted(
    redis_cluster: LocalCluster, cluster_prefix: str
) -> None:
    client = RedisCluster(host="127.0.0.1", port=redis_cluster.ports[1], socket_timeout=0.4)
    store = RedisStore(client, prefix=cluster_prefix)
    record = running(store)
    started = time.monotonic()
    got = store.wait(record.id, 1.0)  # blocks in slices shorter than its 0.4 s timeout
    assert got is not None and got.state is TaskState.RUNNING
    assert 0.9 <= time.monotonic() - started < 3
    store.close()
    assert client.ping()  # a client handed in is not closed by the store
    client.close()


# -- URLs ----------------------------------------------------------------------------------


def test_open_store_opens_cluster_and_sentinel_urls(
    redis_cluster: LocalCluster, redis_sentinel: LocalSentinel
) -> None:
    cluster = open_store(redis_cluster.url)
    sentinel = open_store(redis_sentinel.url)
    try:
        assert isinstance(cluster, RedisStore) and isinstance(cluster._redis, RedisCluster)
        assert isinstance(sentinel, RedisStore) and sentinel.shared
        for store in (cluster, sentinel):
            record = running(store)  # type: ignore[arg-type]
            assert store.finish(record.id, "200 OK", [], body_of(b"hi"), time.time() + 60)
            assert store.wait(record.id, 1).state is TaskState.DONE  # type: ignore[union-attr]
            assert store.cancel(record.id)
    finally:
        cluster.close()
        sentinel.close()


def test_config_open_store_and_the_connector_agree_on_schemes() -> None:
    assert set(REDIS_SCHEMES) == set(redis_connect.SCHEMES)
    assert set(REDIS_SCHEMES) <= set(config._STORE_SCHEMES)
    for url in ("redis+cluster://n:6379/0", "redis+sentinel://a:26379,b:26379/m/0"):
        assert config.parse_option("store", url) == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis+cluster://127.0.0.1:6379/3", "database 0 only"),
        ("redis+cluster:///0", "no cluster node"),
        ("redis+sentinel://127.0.0.1:26379", "MASTER_NAME"),
        ("redis+sentinel://127.0.0.1:26379/m/0/extra", "MASTER_NAME"),
        ("redis+sentinel://127.0.0.1:x/m/0", "bad sentinel address"),
        ("redis+sentinel://127.0.0.1:26379/m/zero", "must be a number"),
        ("redis+sentinel://127.0.0.1:26379/m/0?colour=red", "unknown Sentinel option"),
        ("mongodb://127.0.0.1/x", "not a Redis store URL"),
    ],
)
def test_bad_urls_are_configuration_errors(url: str, reason: str) -> None:
    with pytest.raises(ConfigurationError, match=reason):
        RedisStore.from_url(url)


def test_sentinel_url_options_reach_redis_py() -> None:
    connect, cluster = redis_connect.connector(
        "rediss+sentinel://:pw%21@h1:1,[::1]:2,h3/name/4?sentinel_password=sp&sentinel_ssl=1",
        socket_timeout=1.5,
    )
    client = connect()  # Sentinel clients connect lazily: nothing is contacted here
    kwargs = client.get_connection_kwargs()
    assert not cluster
    assert (kwargs["password"], kwargs["db"], kwargs["socket_timeout"]) == ("pw!", 4, 1.5)
    assert client.connection_pool.connection_class.__name__ == "SentinelManagedSSLConnection"
    sentinels = client.connection_pool.sentinel_manager.sentinels
    addresses = [s.get_connection_kwargs()["host"] for s in sentinels]
    assert addresses == ["h1", "::1", "h3"]
    assert [s.get_connection_kwargs()["port"] for s in sentinels] == [1, 2, 26379]
    assert all(s.get_connection_kwargs()["password"] == "sp" for s in sentinels)
    assert {s.connection_pool.connection_class.__name__ for s in sentinels} == {"SSLConnection"}


def test_concurrent_master_discovery_never_misses_the_live_sentinel(
    redis_sentinel: LocalSentinel,
) -> None:
    # redis-py's discover_master() moves the sentinel that answered to the front of its list
    # while other threads walk it; with the dead sentinel first, threads discovering at once
    # (a gunicorn worker's first requests) could try the dead one twice and raise
    # MasterNotFoundError (a 503). Each round puts the dead one first again.
    store = RedisStore(redis_sentinel.url, prefix=_prefix())
    sentinel = store._redis.connection_pool.sentinel_manager
    port = lambda s: s.get_connection_kwargs()["port"]  # noqa: E731
    dead_first = sorted(sentinel.sentinels, key=lambda s: port(s) != redis_sentinel.dead_port)
    threads_count, rounds = 8, 40
    barrier = threading.Barrier(threads_count, timeout=30)
    errors: list[BaseException] = []

    def discover(n: int) -> None:
        for _ in range(rounds):
            if n == 0:
                sentinel.sentinels[:] = dead_first
            barrier.wait()
            try:
                assert sentinel.discover_master(MASTER_NAME)[1] == redis_sentinel.master.port
            except BaseException as exc:
                errors.append(exc)
            barrier.wait()

    threads = [threading.Thread(target=discover, args=(n,)) for n in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    store.close()
    assert errors == []


# -- a cluster that dies -------------------------------------------------------------------


def test_dead_cluster_fails_fast_with_store_unavailable(tmp_path: Path) -> None:
    """Every method: StoreUnavailable (a 503) within seconds, never a redis-py exception
    (RedisClusterException is not a RedisError) and never a hang. A private cluster."""
    cluster = LocalCluster(tmp_path)
    try:
        cluster.start()
        store = RedisStore(cluster.url, prefix="t:")
        record = running(store)
        store.secret()
        store.wait(record.id, 0.01)  # the long-poll client exists too
        cluster.stop()
        for name, call in each_method(store, record.id).items():
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                call()
            assert time.monotonic() - started < 3, name
        store.close()
    finally:
        cluster.stop()


def test_every_script_touches_only_the_keys_it_is_given() -> None:
    """Redis Cluster's rule, checked on the text: each redis.call's key is one of the KEYS
    variables (task, done, body, upload), never a name built inside the script."""
    import re

    from wsgi_deferred.stores.redis_lua import SCRIPTS

    declared = {"task", "done", "body", "upload"}
    calls = 0
    for name, text in SCRIPTS.items():
        assert re.search(r"\.\.\s*'[^']*[{}:]", text) is None, name  # no key concatenation
        for command, key in re.findall(r"redis\.call\('(\w+)',\s*([\w\[\]]+)", text):
            calls += 1
            assert key in declared, f"{name}: {command} {key}"
        for binding in re.findall(r"local (\w+) = KEYS\[\d\]", text):
            assert binding in declared
    assert calls > 30  # the check saw the scripts' calls


def test_purge_walks_past_a_full_batch(
    make_cluster_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    purge_past_a_full_batch(make_cluster_store(), monkeypatch)
