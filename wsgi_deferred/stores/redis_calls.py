"""How :class:`~wsgi_deferred.stores.redis.RedisStore` talks to Redis: its two clients (one
for commands, one for long polls), the per-task scripts with their keys, and the index
commands sent beside them (one round trip on a standalone server or Sentinel, two on a
cluster). The key rules these follow are in the comment block of ``redis.py``.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import redis
from redis.exceptions import NoScriptError, RedisClusterException

from ..errors import ConfigurationError, StoreUnavailable
from .redis_connect import connector
from .redis_lua import SCRIPTS

__all__ = ["BLOCK_SLICE", "INDEX_SHARDS", "MIN_BLOCK", "Before", "RedisCalls", "unavailable"]

#: Seconds a pooled connection may sit idle before it is PINGed on checkout.
HEALTH_CHECK_INTERVAL = 10
#: Longest single BLMOVE inside wait(), in seconds: bounds how long a silently dropped
#: connection (no FIN from a vanished host) can go unnoticed during a long poll.
BLOCK_SLICE = 5.0
#: Shortest BLMOVE, in seconds (0 would mean "block forever").
MIN_BLOCK = 0.01
#: Sorted sets the purge index is spread over: on a cluster they land on different slots
#: (and nodes), so no single key takes every task's write.
INDEX_SHARDS = 16

#: Queues index commands on a pipeline, sent ahead of a script (`RedisCalls._run`).
Before = Callable[[Any], object]


class RedisCalls:
    """The Redis side of RedisStore: clients, keys, scripts (a base class, no store rules)."""

    prefix: str
    socket_timeout: float

    def _open(
        self,
        client_or_url: redis.Redis | redis.RedisCluster | str,
        socket_timeout: float,
        connect_timeout: float,
        client_options: dict[str, object],
    ) -> None:
        self.socket_timeout = socket_timeout
        self._owns_client = isinstance(client_or_url, str)
        self._connect: Callable[..., Any] | None = None
        self._long_poll: Any = None
        self._lock = threading.Lock()
        if isinstance(client_or_url, str):
            options: dict[str, object] = {
                "socket_timeout": socket_timeout,
                "socket_connect_timeout": connect_timeout,
                "health_check_interval": HEALTH_CHECK_INTERVAL,
                **client_options,
            }
            self._connect, self._cluster = connector(client_or_url, **options)
            self._redis: Any = self._connect()
            self._block_slice = BLOCK_SLICE
        else:
            self._redis = self._long_poll = client_or_url
            self._cluster = isinstance(client_or_url, redis.RedisCluster)
            # Its own socket timeout bounds every read: block for less, leaving the reply
            # time to arrive (None: no timeout at all).
            timeout = client_or_url.get_connection_kwargs().get("socket_timeout")
            slice_ = BLOCK_SLICE if timeout is None else timeout - min(timeout / 2, 1.0)
            self._block_slice = max(MIN_BLOCK, min(BLOCK_SLICE, slice_))
        if self._redis.get_encoder().decode_responses:
            raise ConfigurationError("RedisStore needs a client with decode_responses=False")
        self._scripts = {name: self._redis.register_script(text) for name, text in SCRIPTS.items()}

    def _key(self, kind: str, task_id: str) -> str:
        return f"{self.prefix}{kind}:{{{task_id}}}"

    def _keys(self, task_id: str) -> list[str]:
        """KEYS[1..3] of every per-task script: one task's keys, one hash slot."""
        return [self._key("task", task_id), self._key("done", task_id), self._key("body", task_id)]

    def _shard(self, number: int) -> str:
        return f"{self.prefix}index:{{{number}}}"

    def _index(self, task_id: str) -> str:
        return self._shard(zlib.crc32(task_id.encode()) % INDEX_SHARDS)

    def _run(
        self,
        name: str,
        task_id: str,
        *args: object,
        before: Before | None = None,
        keys: Iterable[str] = (),
        now: float | None = None,
        pipe: Any = None,
    ) -> Any:
        """Run script *name* on one task: KEYS are the task's (`_keys`) plus *keys* (of the
        same task), ARGV[1] is *now* (default: the time) and ARGV[2..] are *args*. *before*
        queues index commands on a pipeline, sent with the script in one round trip (two on
        a cluster), ahead of it: the index may name a task that is not (yet) there, never
        miss one that is. *pipe*: queue the script on that (standalone) pipeline instead."""
        call = self._scripts[name]
        argv = [repr(time.time() if now is None else now), *args]
        all_keys = [*self._keys(task_id), *keys]
        with unavailable():
            if pipe is not None:
                return call(all_keys, argv, client=pipe)
            if before is None:
                return call(all_keys, argv)
            batch = self._redis.pipeline(transaction=False)
            before(batch)
            if self._cluster:
                batch.execute()
                return call(all_keys, argv)
            return self._execute(batch, [self._queue(batch, name, all_keys, argv)])[-1]

    def _queue(self, pipe: Any, name: str, keys: list[str], argv: list[Any]) -> Any:
        """Queue script *name* on *pipe* as a bare EVALSHA; returns what `_execute` needs.
        (Not ``Script(..., client=pipe)``: that costs a SCRIPT EXISTS round trip per call.)"""
        pipe.evalsha(self._scripts[name].sha, len(keys), *keys, *argv)
        return name, keys, argv

    def _execute(self, pipe: Any, calls: list[Any]) -> list[Any]:
        """Send *pipe*, whose last commands are *calls* (`_queue`); their results. A script
        the server does not know (restarted, flushed) did not run: load it and run it."""
        results = pipe.execute(raise_on_error=False)
        out = results[len(results) - len(calls) :]
        for n, (name, keys, argv) in enumerate(calls):
            if isinstance(out[n], NoScriptError):
                out[n] = self._scripts[name](keys, argv)  # loads it, then runs it
        for result in (*results[: len(results) - len(calls)], *out):
            if isinstance(result, Exception):
                raise result
        return out

    def _lower(self, task_id: str, at: float) -> Before:
        """Lower the task's index entry to *at* if it is later (scores stay lower bounds)."""
        key = self._index(task_id)
        return lambda pipe: pipe.zadd(key, {task_id: at}, xx=True, lt=True)

    def _blmove_token(self, task_id: str, seconds: float) -> bytes | None:
        """Block until the task's wake-up token exists (or *seconds* pass), leaving it there;
        return it (None at the timeout). A server that dies closes the socket, so the read
        fails at once rather than at the socket timeout."""
        key = self._key("done", task_id)
        with unavailable():
            client = self._blocking()
            return client.blmove(key, key, round(seconds, 3), "RIGHT", "LEFT")  # type: ignore[no-any-return]

    def _blocking(self) -> Any:
        """The long-poll client: made on first use, with a socket timeout that outlasts
        the longest block (so a long poll never trips the short one of other calls)."""
        if self._long_poll is None:
            with self._lock:
                if self._long_poll is None and self._connect is not None:
                    timeout = BLOCK_SLICE + self.socket_timeout
                    self._long_poll = self._connect(socket_timeout=timeout)
        return self._long_poll

    def _close_clients(self) -> None:
        if self._owns_client:  # a client handed in belongs to whoever made it
            self._redis.close()
            with self._lock:
                long_poll, self._long_poll = self._long_poll, None
            if long_poll is not None:
                long_poll.close()


@contextlib.contextmanager
def unavailable() -> Iterator[None]:
    """Turn every redis-py error into the one exception the middleware knows (503).
    RedisClusterException ("cannot be connected", slot not covered) is not a RedisError."""
    try:
        yield
    except (redis.RedisError, RedisClusterException) as exc:
        raise StoreUnavailable(f"Redis store unavailable: {exc}") from exc


class ChunkReader(io.RawIOBase):
    """Reads list *key* from element 1 to *count* - 1 (element 0 is *first*, already read),
    one LINDEX at a time: one chunk in memory, never the whole body (a result body, or a
    captured request whose element 0 is its variables)."""

    def __init__(
        self, client: redis.Redis, key: str, count: int, first: bytes = b"", what: str = "body"
    ) -> None:
        self._client, self._key, self._count, self._what = client, key, count, what
        self._next, self._view = 1, memoryview(first)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._view:
            if self._next >= self._count:
                return 0
            with unavailable():
                chunk = self._client.lindex(self._key, self._next)
            if chunk is None:  # deleted or expired mid-read: never a silent truncation
                raise StoreUnavailable(f"the {self._what} was deleted while it was being read")
            self._next, self._view = self._next + 1, memoryview(chunk)  # type: ignore[arg-type]
        n = min(len(buffer), len(self._view))
        buffer[:n], self._view = self._view[:n], self._view[n:]
        return n
