"""The Lua scripts behind :class:`~wsgi_deferred.stores.redis.RedisStore`.

Every state change of a task is one script, so it is atomic across processes and hosts: two
claimers get one winner, a cancel racing a finish leaves either a result or nothing. Each
per-task script starts with a shared prelude that applies the store rules first (an expired
record is dropped, an unfinished one whose lease ran out becomes ``lost``).
"""

from __future__ import annotations

import json

from .base import RETRY_WINDOW, STALE_RETENTION

__all__ = ["INDEX_GRACE", "LOST_MESSAGE", "NOTIFY_TTL", "PURGE_SCRIPT", "SCRIPTS"]

#: Seconds the wake-up token of an ended task lives; it only has to outlive the short gap
#: between a waiter's read and its BLMOVE.
NOTIFY_TTL = 60.0
#: Purge index entries whose keys Redis expired more than this many seconds ago are trimmed
#: on create, so the index stays bounded even if purge() is never called.
INDEX_GRACE = 60.0
LOST_MESSAGE = "the process running this task stopped renewing its lease"

# Constants every script sees (Lua has no access to Python's).
_CONSTANTS = (
    f"local STALE, NOTIFY_MS = {STALE_RETENTION!r}, {int(NOTIFY_TTL * 1000)}\n"
    f"local GRACE, LOST = {INDEX_GRACE!r}, {json.dumps(LOST_MESSAGE)}\n"
    f"local RETRY_WINDOW = {RETRY_WINDOW!r}\n"
)

# Shared head of every per-task script. KEYS: task, done, index; ARGV: now, id, body base.
# live() applies the store rules before any transition: an expired record is dropped, an
# unfinished one whose lease ran out becomes `lost` (persisted, so every host agrees).
_PRELUDE = """
local task, done, index = KEYS[1], KEYS[2], KEYS[3]
local now, id, body_base = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local function notify()  -- one token that waiters rotate with BLMOVE: the record, or ''
  local rec = redis.call('HGETALL', task)
  redis.call('DEL', done)
  redis.call('RPUSH', done, #rec > 0 and cjson.encode(rec) or '')
  redis.call('PEXPIRE', done, NOTIFY_MS)
end
local function body_key()
  local token = redis.call('HGET', task, 'body')
  return token and (body_base .. token)
end
local function drop()
  local body = body_key()
  if body then redis.call('UNLINK', body) end
  redis.call('UNLINK', task)
  redis.call('ZREM', index, id)
  notify()
end
local function keep_until(at)  -- record, body and purge index all end at `at`
  local ms = math.floor(at * 1000)
  redis.call('PEXPIREAT', task, ms)
  local body = body_key()
  if body then redis.call('PEXPIREAT', body, ms) end
  redis.call('ZADD', index, at, id)
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
               'expires', now + STALE)
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
    # Returns {chunk count, upload token, first chunk} of a done task's body, or false.
    "open": """
if live() ~= 'done' then return false end
local f = redis.call('HMGET', task, 'chunks', 'body')
if not f[2] then return false end
if f[1] == '0' then return {0, f[2], ''} end
local first = redis.call('LINDEX', body_base .. f[2], 0)
return first and {tonumber(f[1]), f[2], first}""",
    # ARGV[4]: purge deadline; ARGV[5..]: field/value pairs.
    "create": """
if redis.call('EXISTS', task) == 1 then return 0 end
redis.call('HSET', task, unpack(ARGV, 5))
keep_until(tonumber(ARGV[4]))
redis.call('ZREMRANGEBYSCORE', index, '-inf', now - GRACE)
return 1""",
    "claim": """
if live() ~= 'queued' then return 0 end
redis.call('HSET', task, 'state', 'running', 'started', ARGV[1], 'lease_expires', ARGV[4])
redis.call('HINCRBY', task, 'attempts', 1)
leased_until(tonumber(ARGV[4]))
return 1""",
    # The delivery gate (docs/execution.md, "Execution tier"): claim, and hand back the record.
    "deliver": """
if live() ~= 'queued' then return false end
redis.call('HSET', task, 'state', 'running', 'started', ARGV[1], 'lease_expires', ARGV[4])
redis.call('HINCRBY', task, 'attempts', 1)
leased_until(tonumber(ARGV[4]))
return redis.call('HGETALL', task)""",
    "renew": """
if not unfinished(live()) then return 0 end
redis.call('HSET', task, 'lease_expires', ARGV[4])
leased_until(tonumber(ARGV[4]))
return 1""",
    # ARGV[4..7]: has progress, progress, has message, message.
    "progress": """
if not unfinished(live()) then return 0 end
if ARGV[4] == '1' then redis.call('HSET', task, 'progress', ARGV[5])
else redis.call('HDEL', task, 'progress') end
if ARGV[6] == '1' then redis.call('HSET', task, 'message', ARGV[7])
else redis.call('HDEL', task, 'message') end
return 1""",
    # ARGV[4..10]: upload token, chunk count, status, headers JSON, body size, expires, and
    # the body itself when it is one chunk (sent inline, so nothing was uploaded before).
    "finish": """
if not unfinished(live()) then
  redis.call('UNLINK', body_base .. ARGV[4])  -- lost the race: its uploaded chunks go too
  return 0
end
redis.call('HSET', task, 'state', 'done', 'finished', ARGV[1], 'body', ARGV[4],
           'chunks', ARGV[5], 'status', ARGV[6], 'headers', ARGV[7], 'body_size', ARGV[8],
           'expires', ARGV[9])
if ARGV[10] then redis.call('RPUSH', body_base .. ARGV[4], ARGV[10]) end
keep_until(tonumber(ARGV[9]))
notify()
return 1""",
    # ARGV[4..7]: end state, has message, message, expires.
    "fail": """
if not unfinished(live()) then return 0 end
redis.call('HSET', task, 'state', ARGV[4], 'finished', ARGV[1], 'expires', ARGV[7])
if ARGV[5] == '1' then redis.call('HSET', task, 'message', ARGV[6])
else redis.call('HDEL', task, 'message') end
keep_until(tonumber(ARGV[7]))
notify()
return 1""",
    "cancel": """
local state = live()
if not state or state == 'cancelled' then return 0 end
if unfinished(state) then
  redis.call('HSET', task, 'state', 'cancelled', 'finished', ARGV[1], 'expires', now + STALE)
  keep_until(now + STALE)
  notify()
else
  drop()
end
return 1""",
}

# KEYS: index; ARGV: now, prefix, batch size. Returns {ids looked at, records removed}.
_PURGE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, ARGV[3])
local removed = 0
for _, id in ipairs(ids) do
  local task, done = ARGV[2] .. 'task:{' .. id .. '}', ARGV[2] .. 'done:{' .. id .. '}'
  local token = redis.call('HGET', task, 'body')
  if token then redis.call('UNLINK', ARGV[2] .. 'body:{' .. id .. '}:' .. token) end
  removed = removed + redis.call('UNLINK', task)
  redis.call('ZREM', KEYS[1], id)
  redis.call('DEL', done)
  redis.call('RPUSH', done, '')
  redis.call('PEXPIRE', done, NOTIFY_MS)
end
return {#ids, removed}
"""

#: Full text of each per-task script (constants + prelude + body), by name.
SCRIPTS: dict[str, str] = {name: _CONSTANTS + _PRELUDE + body for name, body in _SCRIPTS.items()}
PURGE_SCRIPT = _CONSTANTS + _PURGE
