"""The Redis store: ``redis://host:6379/0`` (also ``rediss://`` and ``unix://``), Redis
Cluster (``redis+cluster://node:6379/0``) and Sentinel
(``redis+sentinel://s1:26379,s2:26379/MASTER_NAME/0``); see :mod:`.redis_connect`.

For several hosts behind a load balancer: any host's status URL serves any host's task.
State changes are Lua scripts (atomic on the server), expiry is Redis TTLs, and long
polling blocks in Redis, so a waiter on one host wakes as soon as another host finishes.

Usage::

    from wsgi_deferred import DeferredMiddleware
    from wsgi_deferred.stores.redis import RedisStore

    store = RedisStore("redis://redis.internal:6379/0", prefix="myapp:deferred:")
    app = DeferredMiddleware(app, routes=["POST /render/<id>"], store=store)

Key layout (``P`` is the prefix, ``ID`` the task id; ``{...}`` is a hash tag)::

    P task:{ID}             hash: one field per TaskRecord field (absent = None), plus
                            ``body`` (set once a body is stored), ``chunks`` (its chunk
                            count) and ``purge_at`` (when purge() may remove the task)
    P body:{ID}             list: the body in ``chunk_size`` pieces
    P upload:{ID}:<token>   list: chunks of one finish attempt, renamed to ``body`` by the
                            finish that wins (deleted by one that loses, or by its TTL)
    P done:{ID}             list holding one token, pushed when the task ends or vanishes: the
                            record as a JSON array of field/value pairs, or "" once it is gone
    P index:{N}             sorted set, N = crc32(ID) % INDEX_SHARDS: id -> a lower bound of
                            its ``purge_at``, so purge() finds what is due
    P secret                the shared key behind ``bind`` hashes
    P slots:{CLIENT}        sorted set: pending task id -> slot expiry, per client (admission)

Long polls: every end transition (and every deletion) leaves one token in ``done:{ID}``;
waiters ``BLMOVE`` that list onto itself, a rotation that never consumes the token, so every
waiter on every host wakes at once (Redis serves its blocked clients one after another), and
the token it hands them is the record itself, so waking costs no further read. The BLMOVE
runs on a second client whose socket timeout outlasts the block (public redis-py API; a
client handed in is used with blocks shorter than its own socket timeout instead).

Round trips (standalone, Sentinel): one per call; ``finish`` of a body of at most one chunk
carries it in the script (else: a state check, one per chunk, the script); ``open_body``
returns the first chunk with the state check; ``cancel`` of a finished task takes a second to
drop its index entry. On Redis Cluster, calls that also move an index entry (create, claim,
finish, fail, cancel) take two, and ``renew`` one per task: redis-py does not pipeline
EVALSHA on a cluster.

Needs Redis >= 6.2 (BLMOVE, ZADD GT/LT) and redis-py >= 5.3.
"""

from __future__ import annotations

import contextlib
import io
import json
import secrets
import time
from collections.abc import Collection, Iterable
from typing import Any, BinaryIO

import redis

from ..buffers import COPY_CHUNK, SpooledBody
from ..errors import ConfigurationError, StoreUnavailable
from ..task import TaskRecord, TaskState, is_task_id
from .base import DEFAULT_LIST_LIMIT, LIST_SCAN_MAX, STALE_RETENTION, Store, listed
from .redis_calls import INDEX_SHARDS, MIN_BLOCK, ChunkReader, RedisCalls
from .redis_calls import unavailable as _unavailable
from .redis_records import decode as _decode
from .redis_records import encode as _encode
from .redis_records import fields as _fields
from .redis_records import glob_escape as _glob_escape
from .redis_records import optional as _optional
from .redis_requests import RedisRequests
from .redis_slots import RedisSlots

__all__ = ["CHUNK_SIZE", "DEFAULT_PREFIX", "INDEX_SHARDS", "RedisStore"]

DEFAULT_PREFIX = "wsgi_deferred:"
#: Bytes per body chunk (one Redis list element). Not 512 KiB: Redis adds a few bytes of
#: header to each element, which would push exactly 512 KiB into jemalloc's next size class
#: (640 KiB) and cost 1.26 bytes of memory per body byte; 64 bytes less keeps it at 1.00.
CHUNK_SIZE = 512 * 1024 - 64
#: Seconds to connect / to wait for a reply; short, so a dead Redis fails fast (503).
CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 2.0
#: TTL of a record that has no lease at all, so that nothing leaks forever.
UNLEASED_TTL = 24 * 3600.0
#: Index entries per purge step (one ZRANGEBYSCORE; one script each), and steps per shard
#: per purge() call: bounded work per command, and per call.
PURGE_BATCH = 500
PURGE_ROUNDS = 1000
#: Index entries due more than this many seconds ago are trimmed on create, so the index
#: stays bounded even if purge() is never called (Redis TTLs removed their records).
INDEX_GRACE = 60.0
#: Keys one SCAN call of list_tasks() asks for (a hint to Redis: one page of work).
LIST_SCAN_COUNT = 500

# ---- Key rules (Redis Cluster; read before adding keys or scripts) ------------------------
# * A task's keys are `<prefix><kind>:{<id>}[:more]`: the `{<id>}` hash tag puts all of them
#   in one slot. A key for many tasks (index, secret, counters) never has a task's tag.
# * A Lua script gets EVERY key it touches in KEYS (no key built inside the script), and all
#   of one script's keys share one slot: in practice, the keys of one task (`_keys()`).
#   redis-py's RedisCluster routes EVALSHA by its keys (refusing keys of several slots), and
#   the server refuses a key of another slot (CROSSSLOT).
# * Keys that span tasks are updated by plain commands beside the scripts (`before=` of
#   `RedisCalls._run`, redis_calls.py), so they may lag a script by a crash: make them
#   hints that a later per-task script checks (the index holds lower bounds that purge()
#   re-checks), never the truth.
#   Spread hot ones over several hash tags (`index:{N}`), never KEYS: SCAN or sharded sets.
# * Blocking commands: on one key, with a finite timeout, in a loop (`wait()`); on the
#   long-poll client (`_blocking()`), whose socket timeout outlasts the block.
# * EVALSHA cannot be pipelined on a cluster (redis-py refuses it): see `_run`, `renew`.
# ------------------------------------------------------------------------------------------


class RedisStore(RedisRequests, RedisSlots, RedisCalls, Store):
    """Tasks in Redis, shared by every process and host that uses the same *prefix*."""

    shared = True

    def __init__(
        self,
        client_or_url: redis.Redis | redis.RedisCluster | str,
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
        self._open(client_or_url, socket_timeout, connect_timeout, client_options)

    @classmethod
    def from_url(cls, url: str, **options: object) -> RedisStore:
        """The store for a Redis *url* (any scheme in :data:`.redis_connect.SCHEMES`)."""
        return cls(url, **options)  # type: ignore[arg-type]

    # -- plumbing (keys, scripts and clients: redis_calls.RedisCalls) ----------------------

    def _read(self, task_id: str) -> dict[str, bytes] | None:
        flat: list[bytes] | None = self._run("read", task_id)
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
        index = self._index(record.id)

        def before(pipe: Any) -> None:
            pipe.zadd(index, {record.id: deadline}, lt=True)
            pipe.zremrangebyscore(index, "-inf", time.time() - INDEX_GRACE)

        if not self._run("create", record.id, repr(deadline), *fields, before=before):
            raise ValueError(f"task {record.id} already exists")

    def claim(self, task_id: str, lease_expires: float) -> bool:
        lease = float(lease_expires)
        before = self._lower(task_id, lease + STALE_RETENTION)
        return bool(self._run("claim", task_id, repr(lease), before=before))

    def renew(self, task_ids: Iterable[str], lease_expires: float) -> set[str]:
        ids = list(dict.fromkeys(task_ids))
        if not ids:
            return set()
        lease, until = repr(float(lease_expires)), float(lease_expires) + STALE_RETENTION
        with _unavailable():
            pipe = self._redis.pipeline(transaction=False)  # one round trip for all of them
            for task_id in ids:  # raise the index entries with the leases (GT: never lower)
                pipe.zadd(self._index(task_id), {task_id: until}, xx=True, gt=True)
            if self._cluster:  # no EVALSHA in a cluster pipeline: one script at a time
                pipe.execute()
                results = [self._run("renew", task_id, lease) for task_id in ids]
            else:
                argv = [repr(time.time()), lease]
                calls = [self._queue(pipe, "renew", self._keys(i), argv) for i in ids]
                results = self._execute(pipe, calls)
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
            # A fresh upload key per attempt: chunks of a finish that loses the race (the
            # script then deletes them) or dies halfway (the TTL does) never mix with a
            # winner's, which the script renames to the body key.
            upload = f"{self._key('upload', task_id)}:{secrets.token_hex(8)}"
            head = (status, json.dumps([list(h) for h in headers]), body.size, repr(float(expires)))
            before = self._lower(task_id, float(expires))
            if body.size <= self.chunk_size:  # one round trip: the script stores it
                data = b"".join(body.iter_chunks(self.chunk_size))
                inline = (1, *head, data) if data else (0, *head)
                return bool(self._run("finish", task_id, *inline, keys=[upload], before=before))
            current = self._read(task_id)  # early exit: don't upload a body bound to be refused
            if current is None or current["state"] not in (b"queued", b"running"):
                return False
            chunks = 0
            with _unavailable():
                for chunk in body.iter_chunks(self.chunk_size):
                    pipe = self._redis.pipeline(transaction=False)
                    pipe.rpush(upload, chunk)
                    pipe.expire(upload, int(STALE_RETENTION))  # an hour after the last chunk
                    pipe.execute()
                    chunks += 1
            return bool(self._run("finish", task_id, chunks, *head, keys=[upload], before=before))
        finally:
            body.discard()

    def fail(self, task_id: str, state: str, message: str | None, expires: float) -> bool:
        args = (TaskState(state).value, *_optional(message), repr(float(expires)))
        return bool(self._run("fail", task_id, *args, before=self._lower(task_id, expires)))

    def cancel(self, task_id: str) -> bool:
        before = self._lower(task_id, time.time() + STALE_RETENTION)
        result = self._run("cancel", task_id, before=before)
        if result == 2:  # a finished task, deleted: its index entry goes too
            with _unavailable():
                self._redis.zrem(self._index(task_id), task_id)
        return bool(result)

    # -- reading ---------------------------------------------------------------------------

    def get(self, task_id: str) -> TaskRecord | None:
        fields = self._read(task_id)
        return None if fields is None else _decode(task_id, fields)

    def open_body(self, task_id: str) -> BinaryIO | None:
        found = self._run("open", task_id)
        if not found:  # not done, or its body expired or was deleted
            return None
        count, first, *legacy = found
        key = self._key("body", task_id)
        if legacy:  # stored by an earlier version: its body key carries the upload token
            key = f"{key}:{legacy[0].decode()}"
            with _unavailable():
                first = self._redis.lindex(key, 0) if count else b""
            if first is None:
                return None
        if count <= 1:
            return io.BytesIO(first)
        raw = ChunkReader(self._redis, key, count, first, what="result")
        return io.BufferedReader(raw, buffer_size=COPY_CHUNK)

    def wait(self, task_id: str, timeout: float) -> TaskRecord | None:
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            record = self.get(task_id)
            remaining = deadline - time.monotonic()
            if record is None or record.state.is_final or remaining <= 0:
                return record
            block = min(remaining, self._block_slice)
            if record.lease_expires is not None:
                # Wake just after the lease would run out, so `lost` is reported on time.
                block = min(block, record.lease_expires - time.time() + 0.005)
            token = self._blmove_token(task_id, max(block, MIN_BLOCK))
            if token == b"":  # deleted, expired or purged
                return None
            if token and token.startswith(b"["):  # the record as it ended: no read needed
                with contextlib.suppress(ValueError):  # not one of ours: read it again
                    record = _decode(task_id, _fields([v.encode() for v in json.loads(token)]))
                    return None if record.expires and record.expires < time.time() else record

    # -- housekeeping ----------------------------------------------------------------------

    def purge(self, now: float | None = None) -> int:
        # Redis TTLs do the real work; the index finds what is due before its TTL fires (a
        # caller asking with a later `now`). Its scores are lower bounds: each due entry is
        # checked by a per-task script, which removes the task or tells its real deadline.
        at = time.time() if now is None else now
        shards = [self._shard(n) for n in range(INDEX_SHARDS)]
        removed = 0
        with _unavailable():
            pipe = self._redis.pipeline(transaction=False)  # what is due, in every shard
            for shard in shards:
                pipe.zrangebyscore(shard, "-inf", f"({at!r}", 0, PURGE_BATCH)
            for shard, due in zip(shards, pipe.execute(), strict=True):
                for _ in range(PURGE_ROUNDS):
                    if not due:
                        break
                    removed += self._purge_batch(shard, [m.decode() for m in due], at)
                    if len(due) < PURGE_BATCH:
                        break
                    due = self._redis.zrangebyscore(shard, "-inf", f"({at!r}", 0, PURGE_BATCH)
        return removed

    def _purge_batch(self, shard: str, ids: list[str], at: float) -> int:
        """Check each due entry with its task's script; drop or re-score the entries."""
        results = self._purge_each(ids, at)
        pipe = self._redis.pipeline(transaction=False)
        pairs = list(zip(ids, results, strict=True))
        forget = [i for i, result in pairs if result in (-1, 1)]
        if forget:
            pipe.zrem(shard, *forget)
        later = {i: float(result) for i, result in pairs if isinstance(result, bytes)}
        if later:  # not due after all: its entry moves to its real deadline
            pipe.zadd(shard, later, xx=True)
        pipe.execute()
        return sum(1 for result in results if result == 1)

    def _purge_each(self, ids: list[str], at: float) -> list[Any]:
        if self._cluster:  # no EVALSHA in a cluster pipeline: one script at a time
            return [self._run("purge", task_id, now=at) for task_id in ids]
        pipe = self._redis.pipeline(transaction=False)
        calls = [self._queue(pipe, "purge", self._keys(i), [repr(at)]) for i in ids]
        return self._execute(pipe, calls)

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
        return bytes(value)

    def close(self) -> None:
        self._close_clients()

    # -- listing (Store.list_tasks) ------------------------------------------------------------

    def list_tasks(
        self, states: Collection[str] | None = None, limit: int = DEFAULT_LIST_LIMIT
    ) -> list[TaskRecord]:
        # SCAN, never KEYS: each call walks one page, so Redis serves others in between
        # (on a cluster, scan_iter walks every primary in turn). Records are read with the
        # "read" script (get()'s rules), a page of them per round trip where that is
        # possible: one pipeline on a standalone server, one call per task on a cluster,
        # whose scripts must not share a pipeline across slots.
        match = _glob_escape(f"{self.prefix}task:") + "{*}"
        start = len(f"{self.prefix}task:{{".encode())
        seen: set[str] = set()  # SCAN may return a key more than once
        page: list[str] = []
        records: list[TaskRecord] = []

        def read(ids: list[str]) -> None:
            if self._cluster:
                found = [self._run("read", task_id) for task_id in ids]
            else:
                pipe = self._redis.pipeline(transaction=False)
                calls = [self._queue(pipe, "read", self._keys(i), [repr(time.time())]) for i in ids]
                found = self._execute(pipe, calls)
            for task_id, flat in zip(ids, found, strict=True):
                if flat:
                    records.append(_decode(task_id, _fields(flat)))

        with _unavailable():
            for key in self._redis.scan_iter(match=match, count=LIST_SCAN_COUNT):
                task_id = key[start:-1].decode()
                if task_id in seen or not is_task_id(task_id):
                    continue
                seen.add(task_id)
                page.append(task_id)
                if len(page) >= LIST_SCAN_COUNT:
                    read(page)
                    page = []
                if len(seen) >= LIST_SCAN_MAX:
                    break
            if page:
                read(page)
        return listed(records, states, limit, time.time())

    def _record_from(self, task_id: str, flat: list[bytes]) -> TaskRecord:
        """A record from a script's HGETALL reply (used by ``redis_requests.py``)."""
        return _decode(task_id, _fields(flat))
