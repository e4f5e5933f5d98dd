"""Admission of interactive work: the images one API key may have in flight (queued or running), and the images
the whole service may have waiting, checked before anything of a job is stored or queued.

Layout in Redis:
- ``captioner:inflight:{owner}``  hash: job id -> "images|admitted at", each job of one key not yet ended, and
                                  ``_images``: their sum, what a check reads
- ``captioner:backlog``           the images of every admitted interactive job not yet ended

A job is admitted (`admit`) before its images are stored; the script that ends it releases it (RELEASE_LUA, part
of common/jobstore.py's end step), and so does `release` when its submission fails after admission. A job that
vanished without ending (its record expired) is forgotten the next time its key is over its cap, so a lost job
cannot hold a key's slots for ever. Bulk work is not admitted here: it waits in its own lane.
"""

from __future__ import annotations

import time
from typing import Literal, cast

import redis

from common.redis_client import redis_client

BACKLOG_KEY = "captioner:backlog"
_INFLIGHT_PREFIX = "captioner:inflight:"
_JOB_PREFIX = "captioner:job:"
# A job admitted this recently may not have its record yet (its images are being stored): never forgotten.
_GRACE_S = 120

# The field of an owner's hash that holds the sum of its jobs' images, so that a check reads one number.
_TOTAL = "_images"

# KEYS: the owner's hash, the backlog. ARGV: job id, images, cap ('' none), max backlog ('' none), now.
_ADMIT = f"""
local images = tonumber(ARGV[2])
local backlog = tonumber(redis.call('GET', KEYS[2]) or '0')
if ARGV[4] ~= '' and backlog + images > tonumber(ARGV[4]) then return 'backlog' end
if ARGV[3] ~= '' then
  local cap = tonumber(ARGV[3])
  local held = tonumber(redis.call('HGET', KEYS[1], '{_TOTAL}') or '0')
  if held + images > cap then
    -- Over the cap: forget the jobs that vanished without ending (past the grace), then look again.
    local entries = redis.call('HGETALL', KEYS[1])
    for i = 1, #entries, 2 do
      if entries[i] ~= '{_TOTAL}' then
        local count, admitted = string.match(entries[i + 1], '^(%d+)|(.+)$')
        if tonumber(ARGV[5]) - tonumber(admitted) > {_GRACE_S}
            and redis.call('EXISTS', '{_JOB_PREFIX}' .. entries[i]) == 0 then
          redis.call('HDEL', KEYS[1], entries[i])
          held = held - tonumber(count)
          redis.call('HINCRBY', KEYS[1], '{_TOTAL}', -tonumber(count))
          redis.call('DECRBY', KEYS[2], tonumber(count))
        end
      end
    end
    if held + images > cap then return 'in_flight' end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. ARGV[5])
redis.call('HINCRBY', KEYS[1], '{_TOTAL}', images)
redis.call('INCRBY', KEYS[2], images)
return 'ok'
"""

# Releases job `job_id` of `owner_key` (locals, in the including script) if it is still counted.
_RELEASE_BODY = f"""
local entry = redis.call('HGET', owner_key, job_id)
if entry then
  local count = tonumber(string.match(entry, '^(%d+)'))
  redis.call('HDEL', owner_key, job_id)
  redis.call('HINCRBY', owner_key, '{_TOTAL}', -count)
  redis.call('DECRBY', '{BACKLOG_KEY}', count)
end
"""

# What the script that ends a job does to release its admission (with locals job_key and job_id).
RELEASE_LUA = f"""
local owner = redis.call('HGET', job_key, 'owner')
if owner then
  local owner_key = '{_INFLIGHT_PREFIX}' .. owner
  {_RELEASE_BODY}
end
"""

# KEYS: the owner's hash. ARGV: job id. Releases a job whose submission failed after admission.
_RELEASE = f"""
local owner_key, job_id = KEYS[1], ARGV[1]
{_RELEASE_BODY}
"""

Verdict = Literal["ok", "in_flight", "backlog"]


class Admission:
    """Admits and releases interactive jobs. `owner` is the API key's id (the open mode's: its tenant)."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._admit = client.register_script(_ADMIT)
        self._release = client.register_script(_RELEASE)

    @classmethod
    def from_url(cls, url: str) -> Admission:
        return cls(redis_client(url))

    def admit(self, owner: str, job_id: str, images: int, cap: int | None, max_backlog: int | None) -> Verdict:
        """Count the job's images against the owner's cap and the service's backlog, unless that would pass
        either: then nothing is counted, and the verdict says which."""
        verdict = self._admit(
            keys=[_INFLIGHT_PREFIX + owner, BACKLOG_KEY],
            args=[job_id, images, "" if cap is None else cap, "" if max_backlog is None else max_backlog,
                  repr(time.time())],
        )
        return cast(Verdict, verdict)

    def release(self, owner: str, job_id: str) -> None:
        """Uncount a job that will not run (its submission failed after admission); again is harmless."""
        self._release(keys=[_INFLIGHT_PREFIX + owner], args=[job_id])

    def in_flight(self, owner: str) -> int:
        """The owner's images in flight, as counted now."""
        return int(cast(str | None, self._redis.hget(_INFLIGHT_PREFIX + owner, _TOTAL)) or 0)

    def backlog(self) -> int:
        return int(cast(str | None, self._redis.get(BACKLOG_KEY)) or 0)
