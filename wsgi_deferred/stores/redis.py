"""The Redis store: ``redis://host:6379/0`` (also ``rediss://`` and ``unix://``).

For several hosts behind a load balancer: any host's status URL serves any host's task.
State changes are Lua scripts (atomic on the server), expiry is Redis TTLs, and long
polling blocks in Redis, so a waiter on one host wakes as soon as another host finishes.

Usage::

    from wsgi_deferred import DeferredMiddleware
    from wsgi_deferred.stores.redis import RedisStore

    store = RedisStore("redis://redis.internal:6379/0", prefix="myapp:deferred:")
    app = DeferredMiddleware(app, routes=["POST /render/<id>"], store=store)

Key layout (``P`` is the prefix, ``ID`` the task id; ``{ID}`` is a hash tag)::

    P task:{ID}           hash: one field per TaskRecord field (absent = None), plus
                          ``body`` (upload token) and ``chunks`` (body chunk count)
    P body:{ID}:<token>   list: the body in ``chunk_size`` pieces; one token per finish attempt
    P done:{ID}           list holding one token, pushed when the task ends or vanishes: the
                          record as a JSON array of field/value pairs, or "" once it is gone
    P index               sorted set: id -> when purge() may remove it (same time as its TTL)
    P secret              the shared key behind ``bind`` hashes

Long polls: every end transition (and every deletion) leaves one token in ``done:{ID}``;
waiters ``BLMOVE`` that list onto itself, a rotation that never consumes the token, so every
waiter on every host wakes at once (Redis serves its blocked clients one after another), and
the token it hands them is the record itself, so waking costs no further read.

Round trips: one script per call; ``finish`` of a body of at most one chunk carries it in
the script (else: a state check, one per chunk, the script); ``open_body`` returns the first
chunk with the state check, so a one-chunk body is served in one round trip too.

Needs Redis >= 6.2 (BLMOVE), redis-py >= 5.3 (per-call read timeouts), and standalone Redis
or one primary: the scripts touch keys they compute, which Redis Cluster does not allow.
"""

from __future__ import annotations

import contextlib
import io
import json
import secrets
import time
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..buffers import COPY_CHUNK, SpooledBody
from ..errors import ConfigurationError, StoreUnavailable
from ..task import TaskRecord, TaskState
from .base import STALE_RETENTION, Store
from .redis_lua import PURGE_SCRIPT, SCRIPTS
from .redis_requests import RedisRequests

__all__ = ["CHUNK_SIZE", "DEFAULT_PREFIX", "RedisStore"]

DEFAULT_PREFIX = "wsgi_deferred:"
#: Bytes per body chunk (one Redis list element). Not 512 KiB: Redis adds a few bytes of
#: header to each element, which would push exactly 512 KiB into jemalloc's next size class
#: (640 KiB) and cost 1.26 bytes of memory per body byte; 64 bytes less keeps it at 1.00.
CHUNK_SIZE = 512 * 1024 - 64
#: Seconds to connect / to wait for a reply; short, so a dead Redis fails fast (503).
CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 2.0
#: Seconds a pooled connection may sit idle before it is PINGed on checkout.
HEALTH_CHECK_INTERVAL = 10
#: Longest single BLMOVE inside wait(), in seconds: bounds how long a silently dropped
#: connection (no FIN from a vanished host) can go unnoticed during a long poll.
BLOCK_SLICE = 5.0
#: TTL of a record that has no lease at all, so that nothing leaks forever.
UNLEASED_TTL = 24 * 3600.0
PURGE_BATCH = 500

_FLOATS = ("created", "started", "finished", "progress", "lease_expires", "expires")
_TEXTS = ("message", "owner", "label", "status")


class RedisStore(RedisRequests, Store):
    """Tasks in Redis, shared by every process and host that uses the same *prefix*."""

    shared = True

    def __init__(
        self,
        client_or_url: redis.Redis | str,
        *,
        prefix: str = DEFAULT_PREFIX,
        socket_timeout: float = SOCKET_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        chunk_size: int = CHUNK_SIZE,
        **client_options: object,
    ) -> None:
        if chunk_size <= 0:
            raise ConfigurationError("chunk_size must be positive")
        self.prefix, self.chunk_size = prefix, chunk_size
        self.socket_timeout = socket_timeout  # also the margin a long poll's reply gets
        self._owns_client = isinstance(client_or_url, str)
        if isinstance(client_or_url, str):
            options: dict[str, object] = {
                "socket_timeout": socket_timeout,
                "socket_connect_timeout": connect_timeout,
                "health_check_interval": HEALTH_CHECK_INTERVAL,
                # No retries: a dead Redis must fail fast, and a blind retry of an RPUSH or
                # a script whose reply was lost would apply it twice. The pool replaces
                # connections the server closed by itself when it hands them out.
                "retry": Retry(NoBackoff(), 0),
                **client_options,
            }
            self._redis: redis.Redis = redis.Redis.from_url(client_or_url, **options)
        else:
            self._redis = client_or_url
        if self._redis.connection_pool.get_encoder().decode_responses:
            raise ConfigurationError("RedisStore needs a client with decode_responses=False")
        register = self._redis.register_script
        self._scripts = {name: register(text) for name, text in SCRIPTS.items()}
        self._purge = register(PURGE_SCRIPT)

    @classmethod
    def from_url(cls, url: str, **options: object) -> RedisStore:
        """The store for a ``redis://``, ``rediss://`` or ``unix://`` *url*."""
        return cls(url, **options)  # type: ignore[arg-type]

    # -- plumbing --------------------------------------------------------------------------

    def _key(self, kind: str, task_id: str) -> str:
        return f"{self.prefix}{kind}:{{{task_id}}}"

    def _run(self, name: str, task_id: str, *args: object, pipe: object = None) -> object:
        keys = [self._key("task", task_id), self._key("done", task_id), self.prefix + "index"]
        head = [repr(time.time()), task_id, self._key("body", task_id) + ":"]
        with _unavailable():
            return self._scripts[name](keys, [*head, *args], client=pipe)  # type: ignore[arg-type]

    def _read(self, task_id: str) -> dict[str, bytes] | None:
        flat: list[bytes] | None = self._run("read", task_id)  # type: ignore[assignment]
        return _fields(flat) if flat else None

    # -- creating and running --------------------------------------------------------------

    def create(self, record: TaskRecord) -> None:
        # Until when Redis keeps it: as purge() would, or a day for an unleased record.
        deadline = time.time() + UNLEASED_TTL
        if record.lease_expires is not None:
            deadline = record.lease_expires + STALE_RETENTION
        if record.expires is not None:
            deadline = min(deadline, record.expires)
        fields = [item for pair in _encode(record).items() for item in pair]
        if not self._run("create", record.id, repr(deadline), *fields):
            raise ValueError(f"task {record.id} already exists")

    def claim(self, task_id: str, lease_expires: float) -> bool:
        return bool(self._run("claim", task_id, repr(float(lease_expires))))

    def renew(self, task_ids: Iterable[str], lease_expires: float) -> set[str]:
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return set()
        pipe = self._redis.pipeline(transaction=False)  # one round trip for all of them
        for task_id in ids:
            self._run("renew", task_id, repr(float(lease_expires)), pipe=pipe)
        with _unavailable():
            results = pipe.execute()
        return {task_id for task_id, ok in zip(ids, results, strict=True) if ok}

    def set_progress(self, task_id: str, progress: float | None, message: str | None) -> None:
        self._run("progress", task_id, *_optional(progress), *_optional(message))

    # -- ending ----------------------------------------------------------------------------

    def finish(
        self,
        task_id: str,
        status: str,
        headers: list[tuple[str, str]],
        body: SpooledBody,
        expires: float,
    ) -> bool:
        try:
            # A fresh key per attempt: chunks of a finish that loses the race (the script
            # then deletes them) or dies halfway (the TTL does) never mix with a winner's.
            token = secrets.token_hex(8)
            head = (status, json.dumps([list(h) for h in headers]), body.size, repr(float(expires)))
            if body.size <= self.chunk_size:  # one round trip: the script stores it
                data = b"".join(body.iter_chunks(self.chunk_size))
                inline = (token, 1, *head, data) if data else (token, 0, *head)
                return bool(self._run("finish", task_id, *inline))
            current = self._read(task_id)  # early exit: don't upload a body bound to be refused
            if current is None or current["state"] not in (b"queued", b"running"):
                return False
            body_key = f"{self._key('body', task_id)}:{token}"
            chunks = 0
            with _unavailable():
                for chunk in body.iter_chunks(self.chunk_size):
                    pipe = self._redis.pipeline(transaction=False)
                    pipe.rpush(body_key, chunk)
                    if not chunks:
                        pipe.expire(body_key, int(STALE_RETENTION))
                    pipe.execute()
                    chunks += 1
            return bool(self._run("finish", task_id, token, chunks, *head))
        finally:
            body.discard()

    def fail(self, task_id: str, state: str, message: str | None, expires: float) -> bool:
        args = (TaskState(state).value, *_optional(message), repr(float(expires)))
        return bool(self._run("fail", task_id, *args))

    def cancel(self, task_id: str) -> bool:
        return bool(self._run("cancel", task_id))

    # -- reading ---------------------------------------------------------------------------

    def get(self, task_id: str) -> TaskRecord | None:
        fields = self._read(task_id)
        return None if fields is None else _decode(task_id, fields)

    def open_body(self, task_id: str) -> BinaryIO | None:
        found = self._run("open", task_id)
        if not found:  # not done, or its body expired or was deleted
            return None
        count, token, first = found  # type: ignore[misc]
        if count <= 1:
            return io.BytesIO(first)
        key = f"{self._key('body', task_id)}:{token.decode()}"
        raw = _ChunkReader(self._redis, key, count, first)
        return io.BufferedReader(raw, buffer_size=COPY_CHUNK)

    def wait(self, task_id: str, timeout: float) -> TaskRecord | None:
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            record = self.get(task_id)
            remaining = deadline - time.monotonic()
            if record is None or record.state.is_final or remaining <= 0:
                return record
            block = min(remaining, BLOCK_SLICE)
            if record.lease_expires is not None:
                # Wake just after the lease would run out, so `lost` is reported on time.
                block = min(block, record.lease_expires - time.time() + 0.005)
            token = self._blmove_token(task_id, max(block, 0.01))  # 0 would mean "forever"
            if token == b"":  # deleted, expired or purged
                return None
            if token and token.startswith(b"["):  # the record as it ended: no read needed
                with contextlib.suppress(ValueError):  # not one of ours: read it again
                    record = _decode(task_id, _fields([v.encode() for v in json.loads(token)]))
                    return None if record.expires and record.expires < time.time() else record

    def _blmove_token(self, task_id: str, seconds: float) -> bytes | None:
        """Block until the task's wake-up token exists (or *seconds* pass), leaving it there;
        return it (None at the timeout).

        Runs on a pooled connection with a per-call read timeout longer than the block, so
        a long poll never trips the short socket timeout, while a server that dies closes
        the socket and the read fails at once."""
        key, pool = self._key("done", task_id), self._redis.connection_pool
        with _unavailable():
            conn = pool.get_connection()
            try:
                conn.send_command("BLMOVE", key, key, "RIGHT", "LEFT", round(seconds, 3))
                return conn.read_response(timeout=seconds + self.socket_timeout)  # type: ignore[no-any-return]
            finally:
                pool.release(conn)

    # -- housekeeping ----------------------------------------------------------------------

    def purge(self, now: float | None = None) -> int:
        # Redis TTLs do the real work; the index finds what is due before its TTL fires
        # (a caller asking with a later `now`).
        args = [repr(time.time() if now is None else now), self.prefix, PURGE_BATCH]
        removed = 0
        with _unavailable():
            while True:
                seen, gone = self._purge([self.prefix + "index"], args)
                removed += int(gone)
                if int(seen) < PURGE_BATCH:
                    return removed

    def secret(self) -> bytes:
        # Not cached: should Redis lose its data, every host must move to the same new key.
        key = self.prefix + "secret"
        with _unavailable():
            value = self._redis.get(key)
            if value is None:
                self._redis.set(key, secrets.token_bytes(32), nx=True)
                value = self._redis.get(key)
        if not value:
            raise StoreUnavailable("the Redis store lost its shared secret while creating it")
        return bytes(value)  # type: ignore[arg-type]

    def close(self) -> None:
        if self._owns_client:  # a client handed in belongs to whoever made it
            self._redis.close()

    def _record_from(self, task_id: str, flat: list[bytes]) -> TaskRecord:
        """A record from a script's HGETALL reply (used by ``redis_requests.py``)."""
        return _decode(task_id, _fields(flat))


class _ChunkReader(io.RawIOBase):
    """Reads a body list one chunk at a time (LINDEX), holding one chunk in memory."""

    def __init__(self, client: redis.Redis, key: str, count: int, first: bytes) -> None:
        self._client, self._key, self._count = client, key, count
        self._next, self._view = 1, memoryview(first)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._view:
            if self._next >= self._count:
                return 0
            with _unavailable():
                chunk = self._client.lindex(self._key, self._next)
            if chunk is None:  # deleted or expired mid-read: never a silent truncation
                raise StoreUnavailable("the result was deleted while it was being read")
            self._next, self._view = self._next + 1, memoryview(chunk)  # type: ignore[arg-type]
        n = min(len(buffer), len(self._view))
        buffer[:n], self._view = self._view[:n], self._view[n:]
        return n


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """Turn every redis-py error into the one exception the middleware knows (503)."""
    try:
        yield
    except redis.RedisError as exc:
        raise StoreUnavailable(f"Redis store unavailable: {exc}") from exc


def _optional(value: object) -> tuple[str, str]:
    """A (present, text) pair: a Lua script cannot tell None from "" otherwise."""
    if value is None:
        return ("0", "")
    return ("1", repr(float(value)) if isinstance(value, (int, float)) else str(value))


def _encode(record: TaskRecord) -> dict[str, str]:
    data = record.to_dict()
    data.pop("id")
    if data["headers"] is not None:
        data["headers"] = json.dumps(data["headers"])
    return {
        name: repr(float(value)) if name in _FLOATS else str(value)  # type: ignore[arg-type]
        for name, value in data.items()
        if value is not None
    }


def _fields(flat: list[bytes]) -> dict[str, bytes]:
    """HGETALL's flat name, value, name, value... list as a dict."""
    return {k.decode(): v for k, v in zip(flat[::2], flat[1::2], strict=True)}


def _decode(task_id: str, fields: dict[str, bytes]) -> TaskRecord:
    text = {name: value.decode() for name, value in fields.items()}
    data: dict[str, object] = {"id": task_id, "state": text["state"]}
    data.update({name: float(text[name]) if name in text else None for name in _FLOATS})
    data.update({name: text.get(name) for name in _TEXTS})
    data["headers"] = json.loads(text["headers"]) if "headers" in text else None
    data["body_size"] = int(text["body_size"]) if "body_size" in text else None
    data["attempts"] = int(text.get("attempts", "0"))
    data["max_attempts"] = int(text.get("max_attempts", "1"))
    return TaskRecord.from_dict(data)
