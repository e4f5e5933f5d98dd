"""Interactive jobs wait per tenant, and workers take them from the tenants in turn.

The broker's queue is first come, first served: a tenant with hundreds of small jobs queued would hold every
worker thread, and another tenant's job would wait behind all of them before the batcher could share a batch out
(worker/jobs/batching.py). So a job's task waits here, in its tenant's list, and the message the API sends
through Celery names no job: it is a turn. A worker given a turn takes the next job of the tenant served least
recently, so a tenant's backlog waits behind other tenants' jobs one at a time, not all at once.

A turn's job is recorded under the turn's id (Celery's task id, the same on every redelivery), in the step that
takes it, so a turn redelivered after its worker died runs the same job again: at-least-once, as before, and
tasks are idempotent by job and image. Every job sends one turn; a turn that finds its tenant's next job ended
(canceled, or failed to queue) takes the next one, so no turn is spent on an ended job, and a turn that finds
nothing left (its job was taken by a redelivered one) does nothing.

The step also records which worker holds the turn: a worker whose report (common/workers.py, renewed several
times within CAPTIONER_WORKER_SILENCE_SECONDS) has expired is dead, and any worker's reaper sends its turns again at
once (`reclaim`), rather than waiting out the broker's visibility timeout; a worker that is merely slow keeps its
report, and its turns.

A job held by a worker that died is blamed (its `deaths` counted), and fails once it reaches CAPTIONER_MAX_ATTEMPTS:
one of its images may crash the worker every time. A job one death short of that runs alone on its next worker, one
such job at a time, with the worker's `suspect` key naming it (worker/jobs/tasks.py): when that worker dies too, only
the job it names is blamed, so the jobs that merely shared a worker or a batch with a poisonous one end well.

Layout:
- ``captioner:fair:tenants``        sorted set: tenant with jobs waiting -> when it was last served
- ``captioner:fair:jobs:{tenant}``  list: the tenant's waiting tasks (CaptionTask JSON), oldest first
- ``captioner:fair:turn:{turn id}`` the task a turn took, until its worker is done with it
- ``captioner:fair:holders``        hash: turn id -> the worker running it
- ``captioner:fair:suspect:{worker}`` the turn of the blamed job the worker runs alone now, while it runs
- ``captioner:fair:workers``        set: the workers consuming turns
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

import redis

from common.lifecycle import TERMINAL_LUA
from common.redis_client import redis_client
from common.schemas import CaptionTask
from common.workers import report_key

_TENANTS = "captioner:fair:tenants"
_JOBS_PREFIX = "captioner:fair:jobs:"
_TURN_PREFIX = "captioner:fair:turn:"
_HOLDERS = "captioner:fair:holders"
_SUSPECT_PREFIX = "captioner:fair:suspect:"
_WORKERS = "captioner:fair:workers"
# Spare turns sent at most per reclaim: a dead worker held at most its prefetch of messages (its threads' number).
MAX_SPARE_TURNS = 1024
_JOB_PREFIX = "captioner:job:"

# KEYS: the turn. ARGV: now, ttl, turn id, worker. {the turn's task (its own, if it took one before), the times a
# worker died holding its job}, or nil when none is left; the worker is recorded as the turn's holder.
_TAKE = f"""
local function deaths(task)
  return tonumber(redis.call('HGET', '{_JOB_PREFIX}' .. cjson.decode(task)['job_id'], 'deaths') or '0')
end
local taken = redis.call('GET', KEYS[1])
if taken then
  redis.call('HSET', '{_HOLDERS}', ARGV[3], ARGV[4])
  return {{taken, deaths(taken)}}
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
      return {{task, deaths(task)}}
    end
  end
end
"""


# ARGV: the most deaths a job may cost, the most spare turns to send, "1" to count spare turns even with no worker
# dead (after a Redis outage, which may have lost turns on their way to a worker). Finds the dead workers (those known
# or holding a turn whose report has expired) and forgets them, so one reaper handles each, once. Returns {turns to
# send again, turns whose job has cost too many workers, spare turns to send}. A dead worker's jobs are blamed (their
# deaths counted), all of them, or only the one its suspect key names; a turn whose job is done with is only
# forgotten. A dead worker may also have held messages it had not started (the broker's prefetch): they come back only
# after the visibility timeout, so as many spare turns as jobs are waiting go out now (a spare turn that finds none
# does nothing).
_RECLAIM = f"""
local function alive(worker) return redis.call('EXISTS', '{report_key("")}' .. worker) == 1 end
local held = redis.call('HGETALL', '{_HOLDERS}')
local dead, any_dead = {{}}, false
for _, worker in ipairs(redis.call('SMEMBERS', '{_WORKERS}')) do
  if not alive(worker) then
    redis.call('SREM', '{_WORKERS}', worker)
    dead[worker], any_dead = {{}}, true
  end
end
for i = 1, #held, 2 do
  local turn, worker = held[i], held[i + 1]
  if not alive(worker) then
    redis.call('HDEL', '{_HOLDERS}', turn)
    any_dead = true
    if redis.call('EXISTS', '{_TURN_PREFIX}' .. turn) == 1 then
      dead[worker] = dead[worker] or {{}}
      table.insert(dead[worker], turn)
    end
  end
end
local again, poisoned = {{}}, {{}}
for worker, turns in pairs(dead) do
  local suspect = redis.call('GET', '{_SUSPECT_PREFIX}' .. worker)
  redis.call('DEL', '{_SUSPECT_PREFIX}' .. worker)
  for _, turn in ipairs(turns) do
    local deaths = 0
    local job_key = '{_JOB_PREFIX}' .. cjson.decode(redis.call('GET', '{_TURN_PREFIX}' .. turn))['job_id']
    if ((not suspect) or suspect == turn) and redis.call('EXISTS', job_key) == 1 then
      deaths = redis.call('HINCRBY', job_key, 'deaths', 1)
    end
    if deaths >= tonumber(ARGV[1]) then table.insert(poisoned, turn) else table.insert(again, turn) end
  end
end
local spare = 0
if any_dead or ARGV[3] == '1' then
  for _, tenant in ipairs(redis.call('ZRANGE', '{_TENANTS}', 0, -1)) do
    spare = spare + redis.call('LLEN', '{_JOBS_PREFIX}' .. tenant)
  end
end
return {{again, poisoned, math.min(spare, tonumber(ARGV[2]))}}
"""


@dataclass(frozen=True)
class Taken:
    """The job a turn runs, and how many workers died holding it (0: it runs as any job does)."""

    task: CaptionTask
    deaths: int


@dataclass(frozen=True)
class Reclaimed:
    """The turns of dead workers: to send again, and those whose job is to fail (it cost too many workers); and how
    many spare turns to send, for the messages the dead workers had received and not started."""

    again: list[str]
    poisoned: list[str]
    spare: int = 0


class FairQueue:
    """Where interactive jobs wait for a worker. Safe to share between threads."""

    def __init__(self, client: redis.Redis, ttl_seconds: int, max_attempts: int = 3) -> None:
        self._redis = client
        self._ttl = ttl_seconds
        self.max_attempts = max_attempts
        self._take = client.register_script(_TAKE)
        self._reclaim = client.register_script(_RECLAIM)

    @classmethod
    def from_url(cls, url: str, ttl_seconds: int, max_attempts: int = 3) -> FairQueue:
        return cls(redis_client(url), ttl_seconds, max_attempts)

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

    def take(self, turn: str, worker: str) -> Taken | None:
        """The task this turn runs on `worker`: the one it took before, if it is a redelivery, else the next one in
        turn; None when nothing is waiting."""
        raw = cast(list[Any] | None, self._take(
            keys=[_TURN_PREFIX + turn], args=[repr(time.time()), self._ttl, turn, worker]))
        return Taken(CaptionTask.model_validate_json(raw[0]), int(raw[1])) if raw else None

    def task(self, turn: str) -> CaptionTask | None:
        """The task a turn took, while it holds it."""
        raw = cast(str | None, self._redis.get(_TURN_PREFIX + turn))
        return CaptionTask.model_validate_json(raw) if raw else None

    def suspect(self, worker: str, turn: str | None) -> None:
        """Name the blamed job's turn that `worker` runs alone now (None: it runs none)."""
        if turn is None:
            self._redis.delete(_SUSPECT_PREFIX + worker)
        else:
            self._redis.set(_SUSPECT_PREFIX + worker, turn, ex=self._ttl)

    def done(self, turn: str) -> None:
        """The turn's job is done with (ended, or given up): a redelivery of the turn takes a new one."""
        pipe = self._redis.pipeline()
        pipe.delete(_TURN_PREFIX + turn)
        pipe.hdel(_HOLDERS, turn)
        pipe.execute()

    def give_back(self, turn: str) -> None:
        """The turn's worker gives it back to the broker (failing or stopping, alive): it keeps its job, for whoever
        takes the turn next, and no reaper blames the job for it."""
        self._redis.hdel(_HOLDERS, turn)

    def reclaim(self, *, spare_anyway: bool = False) -> Reclaimed:
        """The turns held by workers that are dead (their reports expired), for the caller to send again or, for a job
        that has cost CAPTIONER_MAX_ATTEMPTS workers, to fail; each is returned to one caller only. Spare turns are
        counted when a worker is dead, or with `spare_anyway`."""
        again, poisoned, spare = cast(list[Any], self._reclaim(
            args=[self.max_attempts, MAX_SPARE_TURNS, "1" if spare_anyway else "0"]))
        return Reclaimed(again, poisoned, int(spare))

    def ping(self) -> None:
        """Raise unless Redis answers."""
        self._redis.ping()

    def join(self, worker: str) -> None:
        """`worker` consumes turns now: once its report expires, it is dead (see `reclaim`)."""
        self._redis.sadd(_WORKERS, worker)

    def leave(self, worker: str) -> None:
        """`worker` stopped cleanly: the broker has its unstarted messages back."""
        self._redis.srem(_WORKERS, worker)

    def workers(self) -> set[str]:
        """The workers consuming turns now (a dead one until a reclaim finds its report expired)."""
        return cast(set[str], self._redis.smembers(_WORKERS))

    def waiting(self, tenant: str) -> list[CaptionTask]:
        """The tenant's tasks not yet taken, oldest first."""
        raw = cast(list[str], self._redis.lrange(_JOBS_PREFIX + tenant, 0, -1))
        return [CaptionTask.model_validate_json(task) for task in raw]
