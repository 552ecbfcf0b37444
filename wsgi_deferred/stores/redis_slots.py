"""Per-client admission slots in :class:`~wsgi_deferred.stores.redis.RedisStore` (see
:mod:`wsgi_deferred.admission` and docs/security.md, "Limits").

``P slots:{CLIENT}``: a sorted set, pending task id -> slot expiry, one key per client (its
own hash slot, so the script declares the one key it touches and runs on Redis Cluster).
The key's TTL follows its latest expiry, so a client that went away leaves nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import redis

from .redis_calls import unavailable as _unavailable

__all__ = ["RedisSlots"]


class RedisSlots:
    """Mixed into RedisStore, which provides the attributes below (redis_calls.py)."""

    prefix: str
    _redis: redis.Redis
    _cluster: bool
    _scripts: dict[str, Any]
    _queue: Callable[..., Any]
    _execute: Callable[..., list[Any]]

    _ACQUIRE_SLOT = """
local key, now, id = KEYS[1], tonumber(ARGV[1]), ARGV[2]
local limit, expires = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. ARGV[1])
if not redis.call('ZSCORE', key, id) and redis.call('ZCARD', key) >= limit then
  return 0
end
redis.call('ZADD', key, expires, id)
local ttl = math.ceil((expires - now) * 1000) + 1000
if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
return 1
"""
    _acquire_slot: redis.commands.core.Script | None = None
    # Renewal only ever lengthens: the slot's expiry (ZADD GT) and the key's TTL. A client's
    # slots share one key, and a slot taken for a queued lease must outlive a renewal of
    # one of its siblings by the lease_timeout of a running task.
    _RENEW_SLOT = """
local key, id, expires, ttl = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
if not redis.call('ZSCORE', key, id) then return 0 end
redis.call('ZADD', key, 'GT', expires, id)
if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
return 1
"""

    def _slots_key(self, client: str) -> str:
        return f"{self.prefix}slots:{{{client}}}"

    def acquire_slot(self, client: str, task_id: str, limit: int, expires: float) -> bool:
        if self._acquire_slot is None:
            self._acquire_slot = self._redis.register_script(self._ACQUIRE_SLOT)
        args = [repr(time.time()), task_id, int(limit), repr(float(expires))]
        with _unavailable():
            return bool(self._acquire_slot([self._slots_key(client)], args))

    def release_slot(self, client: str, task_id: str) -> None:
        with _unavailable():
            self._redis.zrem(self._slots_key(client), task_id)

    def renew_slots(self, slots: Iterable[tuple[str, str]], expires: float) -> None:
        pairs = list(slots)
        if not pairs:
            return
        if "renew_slot" not in self._scripts:
            self._scripts["renew_slot"] = self._redis.register_script(self._RENEW_SLOT)
        ttl = max(1000, int((expires - time.time()) * 1000) + 1000)
        calls = [
            ([self._slots_key(c)], [task_id, repr(float(expires)), ttl]) for c, task_id in pairs
        ]
        with _unavailable():
            if self._cluster:  # scripts cannot share a pipeline across slots there
                for keys, args in calls:
                    self._scripts["renew_slot"](keys, args)
                return
            pipe = self._redis.pipeline(transaction=False)  # one round trip for all of them
            queued = [self._queue(pipe, "renew_slot", keys, args) for keys, args in calls]
            self._execute(pipe, queued)

    def client_slots(self, client: str) -> int:
        with _unavailable():
            return int(self._redis.zcount(self._slots_key(client), time.time(), "+inf"))
