"""A real local Redis Cluster (three primaries) and a real Sentinel, for tests.

Use from a test module with::

    from redis_cluster import redis_cluster, redis_sentinel  # noqa: F401

* ``redis_cluster`` (session): :class:`LocalCluster`, three ``redis-server
  --cluster-enabled yes`` joined by ``redis-cli --cluster create``; ``.url`` is a
  ``redis+cluster://`` URL naming one node.
* ``redis_sentinel`` (session): :class:`LocalSentinel`, one master and one
  ``redis-server --sentinel`` watching it; ``.url`` is a ``redis+sentinel://`` URL that names
  a dead sentinel first (so the list form and the fallback are exercised every time).

Missing binaries skip, or fail under ``WSGI_DEFERRED_REQUIRE_REDIS=1`` (CI), as in
``redis_server.py``. Every process is stopped by its PID at the end of the session.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_server import RedisServerProcess, _glob_escape, free_port, require_or_skip

__all__ = ["LocalCluster", "LocalSentinel", "redis_cluster", "redis_sentinel"]

#: Seconds the cluster (or sentinel) gets to come up before the session fails.
START_TIMEOUT = 30.0
MASTER_NAME = "wdmaster"


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        require_or_skip(f"{name} is not installed")
    return str(path)


def _free_ports(count: int, avoid: list[int] = ()) -> list[int]:  # type: ignore[assignment]
    """*count* distinct free ports (free_port() twice may answer the same one)."""
    ports: list[int] = []
    for _ in range(100 * count):
        port = free_port()
        if port not in ports and port not in avoid:
            ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError("no free ports")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)


def _wait(check: object, what: str, log: Path, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except Exception:  # not up yet (refused, loading, cluster down)
            pass
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{what} did not come up in {timeout:.0f} s; {log}:\n{tail}")
        time.sleep(0.05)


class LocalCluster:
    """Three cluster-enabled primaries on free 127.0.0.1 ports, slots spread by redis-cli."""

    def __init__(self, directory: Path, nodes: int = 3) -> None:
        self.server, self.cli = _binary("redis-server"), _binary("redis-cli")
        self.directory = directory
        self.ports = _free_ports(nodes)
        self.bus_ports = _free_ports(nodes, avoid=self.ports)
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        import redis

        for port, bus in zip(self.ports, self.bus_ports, strict=True):
            args = [
                self.server, "--port", str(port), "--bind", "127.0.0.1",
                "--cluster-enabled", "yes", "--cluster-port", str(bus),
                "--cluster-config-file", str(self.directory / f"nodes-{port}.conf"),
                "--cluster-node-timeout", "5000", "--save", "", "--appendonly", "no",
                "--dir", str(self.directory), "--daemonize", "no",
                "--logfile", str(self.directory / f"redis-{port}.log"),
            ]  # fmt: skip
            self.processes.append(subprocess.Popen(args, stdin=subprocess.DEVNULL))
        clients = [redis.Redis(port=p, socket_timeout=1) for p in self.ports]
        try:
            for port, client in zip(self.ports, clients, strict=True):
                _wait(client.ping, f"cluster node {port}", self.directory / f"redis-{port}.log")
            create = [self.cli, "--cluster", "create"]
            create += [f"127.0.0.1:{p}" for p in self.ports]
            create += ["--cluster-replicas", "0", "--cluster-yes"]
            result = subprocess.run(create, capture_output=True, text=True, timeout=60)
            if result.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{result.stdout}")
            for port, client in zip(self.ports, clients, strict=True):
                _wait(
                    lambda c=client: c.cluster("info")["cluster_state"] == "ok",
                    f"cluster_state:ok on {port}",
                    self.directory / f"redis-{port}.log",
                )
        finally:
            for client in clients:
                client.close()

    def stop(self) -> None:
        for process in self.processes:
            _stop(process)
        self.processes = []

    def keys_under(self, prefix: str) -> list[bytes]:
        """Every key under *prefix* on every node (SCAN per node, never KEYS)."""
        import redis

        found: list[bytes] = []
        for port in self.ports:
            client = redis.Redis(port=port, socket_timeout=2)
            try:
                found += client.scan_iter(match=_glob_escape(prefix) + "*", count=1000)
            finally:
                client.close()
        return sorted(found)

    def delete_prefix(self, prefix: str) -> None:
        import redis

        for port in self.ports:
            client = redis.Redis(port=port, socket_timeout=2)
            try:
                for key in client.scan_iter(match=_glob_escape(prefix) + "*", count=1000):
                    client.unlink(key)  # one by one: keys on one node may span slots
            finally:
                client.close()


class LocalSentinel:
    """One master (a private redis-server) and one Sentinel monitoring it."""

    def __init__(self, directory: Path) -> None:
        self.server = _binary("redis-server")
        self.directory = directory
        self.master = RedisServerProcess(directory / "master")
        self.port = free_port()
        self.dead_port = free_port()  # nothing listens there: the client must move on
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.dead_port},127.0.0.1:{self.port}/{MASTER_NAME}/0"

    def start(self) -> None:
        import redis

        self.master.directory.mkdir(parents=True, exist_ok=True)
        self.master.start()
        config = self.directory / "sentinel.conf"  # Sentinel rewrites it: a file of its own
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\n"
            f"logfile {self.directory / 'sentinel.log'}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} 5000\n"
        )
        self.process = subprocess.Popen(
            [self.server, str(config), "--sentinel"], stdin=subprocess.DEVNULL
        )
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            _wait(
                lambda: (
                    int(client.sentinel_get_master_addr_by_name(MASTER_NAME)[1]) == self.master.port
                ),
                "Sentinel",
                self.directory / "sentinel.log",
            )
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None
        self.master.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    pytest.importorskip("redis")
    cluster = LocalCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSentinel]:
    pytest.importorskip("redis")
    sentinel = LocalSentinel(tmp_path_factory.mktemp("redis-sentinel"))
    try:
        sentinel.start()
        yield sentinel
    finally:
        sentinel.stop()
