"""The Lua scripts behind :class:`~wsgi_deferred.stores.redis.RedisStore`.

Every state change of a task is one script, so it is atomic across processes and hosts: two
claimers get one winner, a cancel racing a finish leaves either a result or nothing. Each
per-task script starts with a shared prelude that applies the store rules first (an expired
record is dropped, an unfinished one whose lease ran out becomes ``lost``).

Redis Cluster rules (https://redis.io/docs/latest/operate/oss_and_stack/reference/cluster-spec/):
a script receives every key it touches in KEYS, and all of them share one hash slot. So
every script here touches the keys of ONE task only, all named ``<prefix><kind>:{<id>}``,
and the caller passes them (``RedisStore._keys``); nothing cross-task (the purge index, the
shared secret) is ever touched inside a script.
"""

from __future__ import annotations

import json

from .base import RETRY_WINDOW, STALE_RETENTION

__all__ = ["LOST_MESSAGE", "NOTIFY_TTL", "SCRIPTS"]

#: Seconds the wake-up token of an ended task lives; it only has to outlive the short gap
#: between a waiter's read and its BLMOVE.
NOTIFY_TTL = 60.0
LOST_MESSAGE = "the process running this task stopped renewing its lease"

# Constants every script sees (Lua has no access to Python's).
_CONSTANTS = (
    f"local STALE, NOTIFY_MS = {STALE_RETENTION!r}, {int(NOTIFY_TTL * 1000)}\n"
    f"local LOST = {json.dumps(LOST_MESSAGE)}\n"
    f"local RETRY_WINDOW = {RETRY_WINDOW!r}\n"
)

# Shared head of every per-task script. KEYS: task, done, body (all one task's, one slot);
# ARGV[1]: now. live() applies the store rules before any transition: an expired record is
# dropped, an unfinished one whose lease ran out becomes `lost` (persisted, so every host
# agrees).
_PRELUDE = """
local task, done, body = KEYS[1], KEYS[2], KEYS[3]
local now = tonumber(ARGV[1])
local function notify()  -- one token that waiters rotate with BLMOVE: the record, or ''
  local rec = redis.call('HGETALL', task)
  redis.call('DEL', done)
  redis.call('RPUSH', done, #rec > 0 and cjson.encode(rec) or '')
  redis.call('PEXPIRE', done, NOTIFY_MS)
end
local function drop()
  redis.call('UNLINK', body, task)
  notify()
end
local function keep_until(at)  -- record and body end at `at`; purge() reads `purge_at`
  local ms = math.floor(at * 1000)
  redis.call('HSET', task, 'purge_at', string.format('%.17g', at))
  redis.call('PEXPIREAT', task, ms)
  redis.call('PEXPIREAT', body, ms)
end
local function leased_until(lease)
  local at = lease + STALE
  local expires = tonumber(redis.call('HGET', task, 'expires'))
  if expires and expires < at then at = expires end
  keep_until(at)
end
local function live()
  local f = redis.call('HMGET', task, 'state', 'lease_expires', 'expires', 'attempts',
                       'max_attempts')
  local state = f[1]
  if not state then return false end
  if f[3] and tonumber(f[3]) < now then drop() return false end
  local most = tonumber(f[5] or '1')
  if state == 'running' and f[2] and tonumber(f[2]) < now and most > 1
     and tonumber(f[4] or '0') < most then  -- its runner died; a retry rule: queue it again
    redis.call('HSET', task, 'state', 'queued', 'lease_expires',
               string.format('%.17g', now + RETRY_WINDOW))
    leased_until(now + RETRY_WINDOW)
    return 'queued'
  end
  if (state == 'queued' or state == 'running') and f[2] and tonumber(f[2]) < now then
    redis.call('HSET', task, 'state', 'lost', 'finished', ARGV[1], 'message', LOST,
               'expires', string.format('%.17g', now + STALE))
    keep_until(now + STALE)
    notify()
    return 'lost'
  end
  return state
end
local function unfinished(state) return state == 'queued' or state == 'running' end
"""

_SCRIPTS = {
    "read": "if not live() then return false end return redis.call('HGETALL', task)",
    # Returns {chunk count, first chunk} of a done task's body, or false; {chunk count, '',
    # upload token} for a body stored by an earlier version (key `body:{ID}:<token>`,
    # which the caller reads itself: this script may touch only the keys it was given).
    "open": """
if live() ~= 'done' then return false end
local f = redis.call('HMGET', task, 'chunks', 'body')
if not f[2] then return false end
if f[2] ~= '1' then return {tonumber(f[1]), '', f[2]} end
if f[1] == '0' then return {0, ''} end
local first = redis.call('LINDEX', body, 0)
return first and {tonumber(f[1]), first}""",
    # ARGV[2]: purge deadline; ARGV[3..]: field/value pairs.
    "create": """
if redis.call('EXISTS', task) == 1 then return 0 end
redis.call('HSET', task, unpack(ARGV, 3))
keep_until(tonumber(ARGV[2]))
return 1""",
    "claim": """
if live() ~= 'queued' then return 0 end
redis.call('HSET', task, 'state', 'running', 'started', ARGV[1], 'lease_expires', ARGV[2])
redis.call('HINCRBY', task, 'attempts', 1)
leased_until(tonumber(ARGV[2]))
return 1""",
    # The delivery gate (docs/execution.md, "Execution tier"): claim, and hand back the record.
    "deliver": """
if live() ~= 'queued' then return false end
redis.call('HSET', task, 'state', 'running', 'started', ARGV[1], 'lease_expires', ARGV[2])
redis.call('HINCRBY', task, 'attempts', 1)
leased_until(tonumber(ARGV[2]))
return redis.call('HGETALL', task)""",
    # A task re-queued for another runner (its lease lapsed, a retry rule) is not renewed:
    # its first runner, late but alive, must not keep it from the retry, nor run beside it.
    "renew": """
local state = live()
if not unfinished(state) then return 0 end
if state == 'queued' and tonumber(redis.call('HGET', task, 'attempts') or '0') > 0 then
  return 0
end
redis.call('HSET', task, 'lease_expires', ARGV[2])
leased_until(tonumber(ARGV[2]))
return 1""",
    # ARGV[2..5]: has progress, progress, has message, message.
    "progress": """
if not unfinished(live()) then return 0 end
if ARGV[2] == '1' then redis.call('HSET', task, 'progress', ARGV[3])
else redis.call('HDEL', task, 'progress') end
if ARGV[4] == '1' then redis.call('HSET', task, 'message', ARGV[5])
else redis.call('HDEL', task, 'message') end
return 1""",
    # KEYS[4]: this attempt's upload list (chunks sent before the script; renamed to the
    # body when this attempt wins, deleted when it loses). ARGV[2..7]: chunk count, status,
    # headers JSON, body size, expires, and the body itself when it is one chunk (inline).
    "finish": """
local upload = KEYS[4]
if not unfinished(live()) or (ARGV[2] ~= '0' and not ARGV[7]
                              and redis.call('EXISTS', upload) == 0) then
  redis.call('UNLINK', upload)  -- lost the race (or the upload expired): its chunks go too
  return 0
end
redis.call('UNLINK', body)
if ARGV[7] then redis.call('RPUSH', body, ARGV[7])
elseif ARGV[2] ~= '0' then redis.call('RENAME', upload, body) end
redis.call('HSET', task, 'state', 'done', 'finished', ARGV[1], 'body', '1',
           'chunks', ARGV[2], 'status', ARGV[3], 'headers', ARGV[4], 'body_size', ARGV[5],
           'expires', ARGV[6])
keep_until(tonumber(ARGV[6]))
notify()
return 1""",
    # ARGV[2..5]: end state, has message, message, expires.
    "fail": """
if not unfinished(live()) then return 0 end
redis.call('HSET', task, 'state', ARGV[2], 'finished', ARGV[1], 'expires', ARGV[5])
if ARGV[3] == '1' then redis.call('HSET', task, 'message', ARGV[4])
else redis.call('HDEL', task, 'message') end
keep_until(tonumber(ARGV[5]))
notify()
return 1""",
    "cancel": """
local state = live()
if not state or state == 'cancelled' then return 0 end
if unfinished(state) then
  redis.call('HSET', task, 'state', 'cancelled', 'finished', ARGV[1],
             'expires', string.format('%.17g', now + STALE))
  keep_until(now + STALE)
  notify()
else
  drop()
  return 2  -- deleted: the caller drops its index entry too
end
return 1""",
    # purge() of one task the index named: -1 when there is nothing (left) to purge, so the
    # index entry goes; 1 when it was due and is removed; else its real deadline, which the
    # caller writes back to the index (index scores are lower bounds, see RedisStore).
    "purge": """
local at = redis.call('HGET', task, 'purge_at')
if not at then return -1 end
if tonumber(at) < now then drop() return 1 end
return at""",
}

#: Full text of each per-task script (constants + prelude + body), by name.
SCRIPTS: dict[str, str] = {name: _CONSTANTS + _PRELUDE + body for name, body in _SCRIPTS.items()}
