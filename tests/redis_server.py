"""Redis fixtures for tests: the shared server, unique key prefixes, and a private
``redis-server`` that a test may kill and restart (fault injection).

Use from a test module with::

    from redis_server import redis_process, redis_prefix, redis_url  # noqa: F401

* ``redis_url`` (session): ``$REDIS_URL``, else ``redis://127.0.0.1:6379/0`` if it answers.
  When no server answers the tests are skipped, unless ``WSGI_DEFERRED_REQUIRE_REDIS=1``
  (set in CI), which turns the skip into a failure so Redis tests can never silently vanish.
* ``redis_prefix``: a key prefix unique to the test; its keys are deleted afterwards.
* ``redis_process``: a :class:`RedisServerProcess` of the test's own, on a free port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "RedisServerProcess",
    "delete_prefix",
    "keys_under",
    "redis_prefix",
    "redis_process",
    "redis_url",
    "require_or_skip",
]

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def require_or_skip(reason: str) -> None:
    """Skip with *reason*, or fail when CI demands that Redis tests run."""
    if os.environ.get("WSGI_DEFERRED_REQUIRE_REDIS") == "1":
        pytest.fail(f"{reason} (and WSGI_DEFERRED_REQUIRE_REDIS=1)", pytrace=False)
    pytest.skip(reason)


def _client(url: str) -> Any:
    try:
        import redis
    except ImportError:
        require_or_skip("redis-py is not installed (pip install wsgi_deferred[redis])")
    return redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)


def _answers(url: str) -> bool:
    client = _client(url)
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def keys_under(url: str, prefix: str) -> list[bytes]:
    """Every key whose name starts with *prefix* (SCAN, never KEYS)."""
    client = _client(url)
    try:
        return sorted(client.scan_iter(match=_glob_escape(prefix) + "*", count=1000))
    finally:
        client.close()


def delete_prefix(url: str, prefix: str) -> None:
    client = _client(url)
    try:
        keys = list(client.scan_iter(match=_glob_escape(prefix) + "*", count=1000))
        for start in range(0, len(keys), 500):
            client.unlink(*keys[start : start + 500])
    finally:
        client.close()


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("REDIS_URL") or DEFAULT_URL
    if not _answers(url):
        require_or_skip(f"no Redis server answers PING at {url} (set REDIS_URL)")
    return url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    prefix = f"test:{uuid.uuid4().hex}:"
    yield prefix
    delete_prefix(redis_url, prefix)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServerProcess:
    """A private ``redis-server`` on 127.0.0.1, without persistence, in *directory*."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            require_or_skip("redis-server is not installed")
        self.binary = str(binary)
        self.directory = Path(directory)
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start (again, on the same port) and wait until it answers PING."""
        if self.process is not None and self.process.poll() is None:
            return
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.directory),
            "--logfile", str(self.directory / "redis.log"), "--daemonize", "no",
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not _answers(self.url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start; see {self.directory}/redis.log")
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGKILL: the server dies the way a crashed host does, without a goodbye."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> RedisServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[RedisServerProcess]:
    with RedisServerProcess(tmp_path) as server:
        yield server
