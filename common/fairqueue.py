"""Interactive jobs wait per tenant, and workers take them from the tenants in turn.

The broker's queue is first come, first served: a tenant with hundreds of small jobs queued would hold every
worker thread, and another tenant's job would wait behind all of them before the batcher could share a batch out
(worker/jobs/batching.py). So a job's task waits here, in its tenant's list, and the message the API sends
through Celery names no job: it is a turn. A worker given a turn takes the next job of the tenant served least
recently, so a tenant's backlog waits behind other tenants' jobs one at a time, not all at once.

A turn's job is recorded under the turn's id (Celery's task id, the same on every redelivery), in the step that
takes it, so a turn redelivered after its worker died runs the same job again: at-least-once, as before, and
tasks are idempotent by job and image. The step also records which worker holds the turn: a worker whose report
(common/workers.py, renewed every few seconds) has expired is dead, and any worker's reaper sends its turns again
at once (`reclaim`), rather than waiting out the broker's visibility timeout; a worker that is merely slow keeps
its report, and its turns. Every job sends one turn; a turn that finds its tenant's next job ended
(canceled, or failed to queue) takes the next one, so no turn is spent on an ended job, and a turn that finds
nothing left (its job was taken by a redelivered one) does nothing.

Layout:
- ``captioner:fair:tenants``        sorted set: tenant with jobs waiting -> when it was last served
- ``captioner:fair:jobs:{tenant}``  list: the tenant's waiting tasks (CaptionTask JSON), oldest first
- ``captioner:fair:turn:{turn id}`` the task a turn took, until its worker is done with it
- ``captioner:fair:holders``        hash: turn id -> the worker running it
"""

from __future__ import annotations

import time
from typing import cast

import redis

from common.lifecycle import TERMINAL_LUA
from common.schemas import CaptionTask
from common.workers import report_key

_TENANTS = "captioner:fair:tenants"
_JOBS_PREFIX = "captioner:fair:jobs:"
_TURN_PREFIX = "captioner:fair:turn:"
_HOLDERS = "captioner:fair:holders"
_JOB_PREFIX = "captioner:job:"

# KEYS: the turn. ARGV: now, ttl, turn id, worker. The turn's task (its own, if it took one before), or nil when
# none is left; the worker is recorded as the turn's holder.
_TAKE = f"""
local taken = redis.call('GET', KEYS[1])
if taken then
  redis.call('HSET', '{_HOLDERS}', ARGV[3], ARGV[4])
  return taken
end
while true do
  local first = redis.call('ZRANGE', '{_TENANTS}', 0, 0)
  if #first == 0 then return false end
  local jobs_key = '{_JOBS_PREFIX}' .. first[1]
  local task = redis.call('LPOP', jobs_key)
  if redis.call('LLEN', jobs_key) == 0 then
    redis.call('ZREM', '{_TENANTS}', first[1])
  else
    redis.call('ZADD', '{_TENANTS}', ARGV[1], first[1])
  end
  if task then
    local status = redis.call('HGET', '{_JOB_PREFIX}' .. cjson.decode(task)['job_id'], 'status')
    if status and not {TERMINAL_LUA} then
      redis.call('SET', KEYS[1], task, 'EX', ARGV[2])
      redis.call('HSET', '{_HOLDERS}', ARGV[3], ARGV[4])
      return task
    end
  end
end
"""


# The turns whose holder's report has expired, each forgotten as held (so one reaper sends it again, once); a turn
# whose job is done with (its key gone) is only forgotten.
_RECLAIM = f"""
local held = redis.call('HGETALL', '{_HOLDERS}')
local dead = {{}}
for i = 1, #held, 2 do
  if redis.call('EXISTS', '{report_key("")}' .. held[i + 1]) == 0 then
    redis.call('HDEL', '{_HOLDERS}', held[i])
    if redis.call('EXISTS', '{_TURN_PREFIX}' .. held[i]) == 1 then table.insert(dead, held[i]) end
  end
end
return dead
"""


class FairQueue:
    """Where interactive jobs wait for a worker. Safe to share between threads."""

    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self._redis = client
        self._ttl = ttl_seconds
        self._take = client.register_script(_TAKE)
        self._reclaim = client.register_script(_RECLAIM)

    @classmethod
    def from_url(cls, url: str, ttl_seconds: int) -> FairQueue:
        return cls(redis.Redis.from_url(url, decode_responses=True), ttl_seconds)

    def push(self, tenant: str, task: CaptionTask, pipe: redis.client.Pipeline | None = None) -> None:
        """Queue a job's task in its tenant's list (on `pipe`, to run with the caller's other commands, such as
        the job store's creating the job); the caller then sends one turn through Celery."""
        target = pipe if pipe is not None else self._redis.pipeline()
        target.rpush(_JOBS_PREFIX + tenant, task.model_dump_json())
        target.expire(_JOBS_PREFIX + tenant, self._ttl)
        # A tenant with nothing waiting enters with score 0, before every tenant served already: one turn, then
        # it takes its place by when it was served, as every other.
        target.zadd(_TENANTS, {tenant: 0}, nx=True)
        if pipe is None:
            target.execute()

    def take(self, turn: str, worker: str) -> CaptionTask | None:
        """The task this turn runs on `worker`: the one it took before, if it is a redelivery, else the next one in
        turn; None when nothing is waiting."""
        raw = cast(str | None, self._take(
            keys=[_TURN_PREFIX + turn], args=[repr(time.time()), self._ttl, turn, worker]))
        return CaptionTask.model_validate_json(raw) if raw else None

    def done(self, turn: str) -> None:
        """The turn's job is done with (ended, or given up): a redelivery of the turn takes a new one."""
        pipe = self._redis.pipeline()
        pipe.delete(_TURN_PREFIX + turn)
        pipe.hdel(_HOLDERS, turn)
        pipe.execute()

    def reclaim(self) -> list[str]:
        """The turns held by workers that are dead (their reports expired), for the caller to send again; each is
        returned to one caller only."""
        return cast(list[str], self._reclaim())

    def waiting(self, tenant: str) -> list[CaptionTask]:
        """The tenant's tasks not yet taken, oldest first."""
        raw = cast(list[str], self._redis.lrange(_JOBS_PREFIX + tenant, 0, -1))
        return [CaptionTask.model_validate_json(task) for task in raw]
