"""Captured requests and retries for :class:`~wsgi_deferred.stores.redis.RedisStore`
(docs/execution.md): the delivery gate (the ``deliver`` script) and the captured requests.

``P req:{ID}`` is a list: the request's variables (JSON), then its body in ``chunk_size``
pieces; it is uploaded under a temporary name in the same hash slot and RENAMEd, so a reader
never sees half a request. ``P retry`` (a sorted set: id -> when saved) is the sweeper's hint;
every command on it touches that one key, so it works on Redis Cluster too.
"""

from __future__ import annotations

import contextlib
import io
import secrets
import time
from collections.abc import Callable
from typing import Any, BinaryIO

import redis

from ..buffers import COPY_CHUNK, SpooledBody
from ..task import TaskRecord
from .base import ORPHAN_GRACE, REQUEST_TTL, STALE_RETENTION
from .redis_calls import ChunkReader
from .redis_calls import unavailable as _unavailable

__all__ = ["RedisRequests"]


class RedisRequests:
    """Mixed into RedisStore, which provides the attributes and helpers below."""

    prefix: str
    chunk_size: int
    #: Where the next retry_candidates() page starts (per process; see there).
    _retry_offset: int = 0
    _redis: redis.Redis
    _run: Callable[..., Any]
    _key: Callable[[str, str], str]
    _lower: Callable[[str, float], Any]
    _record_from: Callable[[str, list[bytes]], TaskRecord]

    def get(self, task_id: str) -> TaskRecord | None:  # pragma: no cover - RedisStore's
        raise NotImplementedError

    def deliver(self, task_id: str, lease_expires: float) -> TaskRecord | None:
        lease = float(lease_expires)
        before = self._lower(task_id, lease + STALE_RETENTION)  # the purge index (redis.py)
        flat = self._run("deliver", task_id, repr(lease), before=before)
        return self._record_from(task_id, flat) if flat else None

    def save_request(self, task_id: str, meta: bytes, body: SpooledBody) -> None:
        key = self._key("req", task_id)
        temp = f"{key}:{secrets.token_hex(8)}"
        with _unavailable():
            try:
                pipe = self._redis.pipeline(transaction=False)
                pipe.rpush(temp, bytes(meta))
                pipe.expire(temp, int(REQUEST_TTL))
                pipe.execute()
                for chunk in body.iter_chunks(self.chunk_size):
                    self._redis.rpush(temp, chunk)
                # Two calls, not a pipeline: redis-py's cluster pipeline refuses RENAME, and
                # the retry hint lives in another slot than the request.
                self._redis.rename(temp, key)
                self._redis.zadd(self.prefix + "retry", {task_id: time.time()})
            except BaseException:
                with contextlib.suppress(redis.RedisError):
                    self._redis.unlink(temp)
                raise

    def load_request(self, task_id: str) -> tuple[bytes, BinaryIO] | None:
        key = self._key("req", task_id)
        with _unavailable():
            pipe = self._redis.pipeline(transaction=False)
            pipe.llen(key)
            pipe.lindex(key, 0)
            count, meta = pipe.execute()
        if not count or meta is None:
            return None
        reader = ChunkReader(self._redis, key, int(count), what="captured request")
        return bytes(meta), io.BufferedReader(reader, buffer_size=COPY_CHUNK)

    def delete_request(self, task_id: str) -> None:
        with _unavailable():
            pipe = self._redis.pipeline(transaction=False)
            pipe.unlink(self._key("req", task_id))
            pipe.zrem(self.prefix + "retry", task_id)
            pipe.execute()

    def retry_candidates(self, limit: int) -> list[str]:
        if limit <= 0:
            return []
        # A page at a rotating offset, so that with more than *limit* kept requests every
        # one is looked at in turn (a backlog of healthy ones cannot hide a dead runner's).
        start = self._retry_offset
        settled = time.time() - ORPHAN_GRACE
        with _unavailable():
            page = self._redis.zrange(
                self.prefix + "retry", start, start + limit - 1, withscores=True
            )
            self._retry_offset = 0 if len(page) < limit else start + limit
            found = []
            for raw, saved in page:  # type: ignore[union-attr]
                task_id = raw.decode()
                record = self.get(task_id)
                if record is None and saved >= settled:
                    continue  # saved just before its record is created (runner.attach)
                if record is None or record.state.is_final:
                    self.delete_request(task_id)  # ended without its runner telling us
                elif record.requeued or record.lease_ran_out():
                    found.append(task_id)
        return found
