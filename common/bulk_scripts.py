"""The Lua scripts behind common/bulkstore.py: every change to a bulk job or its work queue is one of them.

Keys are described in common/bulkstore.py. Each script runs atomically in Redis, so concurrent workers, an item
run twice and a cancel racing the end all leave one consistent record.
"""

from __future__ import annotations

from common.lifecycle import END_UNLESS_ENDED_LUA, TERMINAL_LUA
from common.schemas import LOCAL_TENANT
from common.usage import COUNT_LUA
from common.webhooks import EMIT_LUA

READY_KEY = "captioner:bulk:ready"
LEASES_KEY = "captioner:bulk:leases"
OWNERS_KEY = "captioner:bulk:owners"
ATTEMPTS_KEY = "captioner:bulk:attempts"
# A careful run's object in hand (worker/bulk/careful.py): item -> the object's part of the chunk.
IN_HAND_KEY = "captioner:bulk:in-hand"
RECORD_PREFIX = "captioner:bulk:"
# The service's latest measured bulk throughput (images/s), for dry-run estimates.
RATE_KEY = "captioner:bulk:images-per-second"

# Shared Lua: queue an item with a lease; release an item that is done.
_QUEUE_LUA = f"""
local function queue(item, until_)
  redis.call('LPUSH', '{READY_KEY}', item)
  redis.call('ZADD', '{LEASES_KEY}', until_, item)
end
local function release(item)
  redis.call('ZREM', '{LEASES_KEY}', item)
  redis.call('HDEL', '{OWNERS_KEY}', item)
  redis.call('HDEL', '{ATTEMPTS_KEY}', item)
  redis.call('HDEL', '{IN_HAND_KEY}', item)
end
"""

# KEYS: record, chunks. ARGV: id, n, chunk JSON, cursor, object count, now, lease.
# 1 added; 0 a duplicate planner's (chunk n exists); -1 no such job; -2 the job has ended.
ADD_CHUNK = f"""
{_QUEUE_LUA}
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if {TERMINAL_LUA} then return -2 end
local n = tonumber(ARGV[2])
if tonumber(redis.call('HGET', KEYS[1], 'n_chunks')) ~= n then return 0 end
redis.call('HSET', KEYS[2], n, ARGV[3])
redis.call('HSET', KEYS[1], 'n_chunks', n + 1, 'cursor', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'discovered', tonumber(ARGV[5]))
redis.call('HINCRBY', KEYS[1], 'queued_objects', tonumber(ARGV[5]))
queue('chunk|' .. ARGV[1] .. '|' .. n, tonumber(ARGV[6]) + tonumber(ARGV[7]))
return 1
"""

# KEYS: record. ARGV: id, listing done (1/0), now, lease, window, token. Ends one planning step (of the
# worker holding it): finish the listing, plan again at once while the window has room, or wait for chunks.
END_PLAN_STEP = f"""
{_QUEUE_LUA}
local item = 'plan|' .. ARGV[1]
if redis.call('HGET', '{OWNERS_KEY}', item) ~= ARGV[6] then return 0 end
release(item)
local status = redis.call('HGET', KEYS[1], 'status')
if (not status) or {TERMINAL_LUA} then return 0 end
local n_chunks = tonumber(redis.call('HGET', KEYS[1], 'n_chunks'))
local done = tonumber(redis.call('HGET', KEYS[1], 'n_chunks_done'))
local until_ = tonumber(ARGV[3]) + tonumber(ARGV[4])
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], 'listing_done', 1, 'planning', 0)
  if done >= n_chunks then queue('final|' .. ARGV[1], until_) end
elseif n_chunks - done < tonumber(ARGV[5]) then
  queue(item, until_)
else
  redis.call('HSET', KEYS[1], 'planning', 0)
end
return 1
"""

# KEYS: record, chunks, files, partial. ARGV: id, n, files JSON, captioned, failed, skipped, objects, now,
# lease, window, then for usage (common/usage.py): its day, when that expires, tokens generated, model
# microseconds. Records a chunk's outcome, and counts its usage, once; queues the final step after the last
# chunk, or more planning when the window has drained to half. Returns the job's tenant when it recorded the
# outcome, 0 when the outcome was recorded before.
COMPLETE_CHUNK = f"""
{_QUEUE_LUA}
{COUNT_LUA}
local item = 'chunk|' .. ARGV[1] .. '|' .. ARGV[2]
if redis.call('HSETNX', KEYS[3], ARGV[2], ARGV[3]) == 0 then release(item) return 0 end
release(item)
local tenant = redis.call('HGET', KEYS[1], 'tenant') or '{LOCAL_TENANT}'
count_usage(tenant, ARGV[11], ARGV[12], 'bulk', ARGV[4], ARGV[5], ARGV[13], ARGV[14])
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[4], ARGV[2])
local done = redis.call('HINCRBY', KEYS[1], 'n_chunks_done', 1)
redis.call('HINCRBY', KEYS[1], 'captioned', tonumber(ARGV[4]))
redis.call('HINCRBY', KEYS[1], 'failed', tonumber(ARGV[5]))
redis.call('HINCRBY', KEYS[1], 'skipped', tonumber(ARGV[6]))
redis.call('HINCRBY', KEYS[1], 'queued_objects', -tonumber(ARGV[7]))
local status = redis.call('HGET', KEYS[1], 'status')
if {TERMINAL_LUA} then return tenant end
local n_chunks = tonumber(redis.call('HGET', KEYS[1], 'n_chunks'))
local until_ = tonumber(ARGV[8]) + tonumber(ARGV[9])
if redis.call('HGET', KEYS[1], 'listing_done') == '1' then
  if done >= n_chunks then queue('final|' .. ARGV[1], until_) end
elseif redis.call('HGET', KEYS[1], 'planning') == '0' and n_chunks - done <= tonumber(ARGV[10]) / 2 then
  redis.call('HSET', KEYS[1], 'planning', 1)
  queue('plan|' .. ARGV[1], until_)
end
return tenant
"""

# KEYS: record, deaths. ARGV: item, token, now, lease. Takes an item unless another worker holds it or it is done.
# Returns {attempts so far (0: not taken), status, workers that died holding it (a chunk's; see REAP)}.
CLAIM = f"""
if not redis.call('ZSCORE', '{LEASES_KEY}', ARGV[1]) then return {{0, 'gone', 0}} end
if redis.call('HEXISTS', '{OWNERS_KEY}', ARGV[1]) == 1 then return {{0, 'held', 0}} end
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  redis.call('ZREM', '{LEASES_KEY}', ARGV[1])
  return {{0, 'gone', 0}}
end
redis.call('HSET', '{OWNERS_KEY}', ARGV[1], ARGV[2])
redis.call('HDEL', '{IN_HAND_KEY}', ARGV[1])
redis.call('ZADD', '{LEASES_KEY}', tonumber(ARGV[3]) + tonumber(ARGV[4]), ARGV[1])
if status == 'queued' and string.sub(ARGV[1], 1, 5) == 'plan|' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[3])
  status = 'running'
end
local deaths = 0
if string.sub(ARGV[1], 1, 6) == 'chunk|' then
  deaths = tonumber(redis.call('HGET', KEYS[2], string.match(ARGV[1], '(%d+)$')) or '0')
end
return {{redis.call('HINCRBY', '{ATTEMPTS_KEY}', ARGV[1], 1), status, deaths}}
"""

# KEYS: record, partial. ARGV: item, token, now, lease, chunk index, progress ('' for none).
# Extends a held lease; returns the job's status, or 'lost' when the item is no longer ours.
RENEW = f"""
if redis.call('HGET', '{OWNERS_KEY}', ARGV[1]) ~= ARGV[2] then return 'lost' end
redis.call('ZADD', '{LEASES_KEY}', tonumber(ARGV[3]) + tonumber(ARGV[4]), ARGV[1])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[2], ARGV[5], ARGV[6]) end
return redis.call('HGET', KEYS[1], 'status') or 'gone'
"""

# KEYS: record. ARGV: item, token, now, lease, part ('' for none). A careful run names the object in its hand (its
# part of the chunk), renewing the lease: if the lease runs out while one is named, REAP blames that object alone.
# Returns as RENEW does.
HOLD = f"""
if redis.call('HGET', '{OWNERS_KEY}', ARGV[1]) ~= ARGV[2] then return 'lost' end
redis.call('ZADD', '{LEASES_KEY}', tonumber(ARGV[3]) + tonumber(ARGV[4]), ARGV[1])
if ARGV[5] == '' then
  redis.call('HDEL', '{IN_HAND_KEY}', ARGV[1])
else
  redis.call('HSET', '{IN_HAND_KEY}', ARGV[1], ARGV[5])
end
return redis.call('HGET', KEYS[1], 'status') or 'gone'
"""

# ARGV: item, token, now or ''. Gives a held item up: the reaper queues it again when its lease ends (or
# at once, when now is given: a worker shutting down).
ABANDON = f"""
if redis.call('HGET', '{OWNERS_KEY}', ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', '{OWNERS_KEY}', ARGV[1])
redis.call('HDEL', '{IN_HAND_KEY}', ARGV[1])
if ARGV[3] ~= '' and redis.call('ZSCORE', '{LEASES_KEY}', ARGV[1]) then
  redis.call('ZADD', '{LEASES_KEY}', tonumber(ARGV[3]), ARGV[1])
end
return 1
"""

# ARGV: now, lease, limit. Queues again every item whose lease ran out, unless it is still in the list. A chunk whose
# lease ran out while a worker held it (its holder died, or stalled for a whole lease) is blamed, in its job's
# `deaths` hash: the object a careful run named in its hand alone (field `{n}/{part}`), else, unless it was a careful
# run between two objects, the chunk (field `{n}`: a death every object of it has cost). A blamed death is not one of
# the chunk's attempts: poison is bounded per object (CAPTIONER_MAX_ATTEMPTS), attempts bound the other failures.
REAP = f"""
local function blame(item)
  local bulk_id, n = string.match(item, '^chunk|([^|]+)|(%d+)$')
  if not bulk_id then return end
  local status = redis.call('HGET', '{RECORD_PREFIX}' .. bulk_id, 'status')
  if (not status) or {TERMINAL_LUA} then return end
  local deaths_key = '{RECORD_PREFIX}' .. bulk_id .. ':deaths'
  local part = redis.call('HGET', '{IN_HAND_KEY}', item)
  if part then
    redis.call('HINCRBY', deaths_key, n .. '/' .. part, 1)
  elseif tonumber(redis.call('HGET', deaths_key, n) or '0') == 0 then
    redis.call('HINCRBY', deaths_key, n, 1)
  else
    return
  end
  redis.call('HINCRBY', '{ATTEMPTS_KEY}', item, -1)
end
local items = redis.call('ZRANGEBYSCORE', '{LEASES_KEY}', '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, item in ipairs(items) do
  redis.call('ZADD', '{LEASES_KEY}', tonumber(ARGV[1]) + tonumber(ARGV[2]), item)
  if redis.call('HEXISTS', '{OWNERS_KEY}', item) == 1 then blame(item) end
  redis.call('HDEL', '{OWNERS_KEY}', item)
  redis.call('HDEL', '{IN_HAND_KEY}', item)
  if not redis.call('LPOS', '{READY_KEY}', item) then redis.call('LPUSH', '{READY_KEY}', item) end
end
return #items
"""

# KEYS: record. ARGV: expected cursor, new cursor, objects, bytes, matched, matched bytes, would skip.
# A dry run's counts for one stretch of the listing, once (a duplicate step finds the cursor moved on).
DRY_PROGRESS = """
if redis.call('HGET', KEYS[1], 'cursor') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'cursor', ARGV[2])
local names = {'objects', 'bytes', 'discovered', 'matched_bytes', 'would_skip'}
for i, name in ipairs(names) do redis.call('HINCRBY', KEYS[1], name, tonumber(ARGV[i + 2])) end
return 1
"""

# KEYS: record, chunks, files, partial. ARGV: status, now, error JSON or '', id, ttl, queue final (1/0),
# lease. Ends a bulk job unless it has ended; returns the status afterwards.
END = f"""
local job_key, now, job_id, ttl = KEYS[1], ARGV[2], ARGV[4], ARGV[5]
{EMIT_LUA}
{_QUEUE_LUA}
{END_UNLESS_ENDED_LUA}
if ARGV[1] == 'canceled' then emit('bulk.canceled')
elseif ARGV[1] == 'failed' then emit('bulk.failed')
else emit('bulk.completed') end
if ARGV[6] == '1' then queue('final|' .. job_id, tonumber(now) + tonumber(ARGV[7])) end
for _, key in ipairs(KEYS) do redis.call('EXPIRE', key, ttl) end
return ARGV[1]
"""
