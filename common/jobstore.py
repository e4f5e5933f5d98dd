"""Job records in Redis: the source of truth for a job's status and results.

Layout, per job:
- ``captioner:job:{id}``          hash: status, timestamps, prompt, options, counters, error
- ``captioner:job:{id}:results``  hash: image index -> ImageResult JSON
- ``captioner:job:{id}:uploads``  hash: image index -> bytes of a small upload, deleted when the job ends
The record's ``s3_keys`` names the job's large uploads, in S3, queued for deletion when it ends (common/retention.py).

The scripts that move a job also create its webhook deliveries (common/webhooks.py), in the same step.

Every state change is one Lua script, so concurrent workers, a task delivered twice and a cancel racing a
finish all leave one consistent record: the first result for an image wins, and terminal states never change.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import redis
from redis.client import NEVER_DECODE

from common import metrics
from common.admission import RELEASE_LUA
from common.errors import AllImagesFailed, JobNotEnded, JobNotFound
from common.lifecycle import END_UNLESS_ENDED_LUA, TERMINAL_LUA
from common.listing import Page, add_to_index, index_key, page
from common.redis_client import redis_client
from common.retention import QUEUE_UPLOADS_LUA
from common.schemas import (
    LOCAL_TENANT,
    ErrorBody,
    GenerationOptions,
    ImageResult,
    Job,
    JobStatus,
    JobTimings,
    WebhookSubscription,
)
from common.usage import COUNT_LUA, DEFAULT_RETENTION_DAYS, ModelWork, UsageStamp, count_job
from common.webhooks import EMIT_LUA, FORGET_DELIVERIES_LUA

# Every job that ends is announced here (its id), so API processes can wake clients waiting on it.
ENDED_CHANNEL = "captioner:jobs:ended"
# What every script that ends a job does besides setting its status: free its uploads (Redis now, S3 by the
# sweeper) and its admission (common/admission.py), announce the end.
_ENDED_LUA = f"""
redis.call('DEL', job_key .. ':uploads')
{QUEUE_UPLOADS_LUA}
{RELEASE_LUA}
redis.call('PUBLISH', '{ENDED_CHANNEL}', job_id)
"""

# KEYS: job, results. ARGV: index, result JSON, 1 if captioned else 0, now, ttl, all-failed error JSON, job id,
# the worker's stage times (JSON) or '', then for usage (common/usage.py): its day, when that expires, tokens
# generated, model microseconds. Returns {written (1/0, -1 if no such job), status after the call, the job's tenant}.
_RECORD_RESULT = f"""
local job_key, job_id, now, ttl = KEYS[1], ARGV[7], ARGV[4], ARGV[5]
{EMIT_LUA}
{COUNT_LUA}
local status = redis.call('HGET', job_key, 'status')
if not status then return {{-1, ''}} end
if {TERMINAL_LUA} then return {{0, status}} end
if ARGV[8] ~= '' then redis.call('HSET', job_key, 'timings', ARGV[8]) end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return {{0, status}} end
redis.call('EXPIRE', KEYS[2], ttl)
local tenant = redis.call('HGET', job_key, 'tenant') or '{LOCAL_TENANT}'
count_usage(tenant, ARGV[9], ARGV[10], 'interactive', ARGV[3], 1 - tonumber(ARGV[3]), ARGV[11], ARGV[12])
local done = redis.call('HINCRBY', job_key, 'n_done', 1)
local n_ok = redis.call('HINCRBY', job_key, 'n_ok', tonumber(ARGV[3]))
if done >= tonumber(redis.call('HGET', job_key, 'num_images')) then
  if n_ok > 0 then
    status = 'succeeded'
  else
    status = 'failed'
    redis.call('HSET', job_key, 'error', ARGV[6])
  end
  redis.call('HSET', job_key, 'status', status, 'completed_at', now)
  emit('job.' .. status)
  {_ENDED_LUA}
end
return {{1, status, tenant}}
"""

# KEYS: job. ARGV: now, job id, ttl. Moves queued -> running and returns {'started', when it was created}; else the
# status as it is ('' if no such job).
_MARK_RUNNING = f"""
local job_key, now, job_id, ttl = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
{EMIT_LUA}
local status = redis.call('HGET', job_key, 'status')
if not status then return '' end
if status == 'queued' then
  redis.call('HSET', job_key, 'status', 'running', 'started_at', now)
  emit('job.started')
  return {{'started', redis.call('HGET', job_key, 'created_at') or now}}
end
return status
"""

# KEYS: job. ARGV: new terminal status, now, error JSON or '', job id, ttl. Ends a job unless it has ended: {the
# status} when this call ended it, else its status as a string ('' if no such job).
_FINISH = f"""
local job_key, now, job_id, ttl = KEYS[1], ARGV[2], ARGV[4], ARGV[5]
{EMIT_LUA}
{END_UNLESS_ENDED_LUA}
emit('job.' .. ARGV[1])
{_ENDED_LUA}
return {{ARGV[1]}}
"""

# KEYS: job, the tenant's index. ARGV: job id, tenant. Deletes an ended job of the tenant's with its results,
# uploads and webhook log. Returns {'deleted', its S3 keys or ''}, {''} if the tenant has no such job, or {the
# status} of a job that has not ended.
_DELETE = f"""
local job_key, job_id = KEYS[1], ARGV[1]
local status = redis.call('HGET', job_key, 'status')
if (not status) or (redis.call('HGET', job_key, 'tenant') or '{LOCAL_TENANT}') ~= ARGV[2] then return {{''}} end
if not {TERMINAL_LUA} then return {{status}} end
local s3_keys = redis.call('HGET', job_key, 's3_keys') or ''
redis.call('DEL', job_key, job_key .. ':results', job_key .. ':uploads')
{FORGET_DELIVERIES_LUA}
redis.call('ZREM', KEYS[2], job_id)
return {{'deleted', s3_keys}}
"""

_INDEX = "jobs"  # the tenant's index of jobs (common/listing.py)

ALL_IMAGES_FAILED = ErrorBody.of(AllImagesFailed("No image in this job could be captioned."))


def _job_key(job_id: str) -> str:
    return f"captioner:job:{job_id}"


def _results_key(job_id: str) -> str:
    return f"captioner:job:{job_id}:results"


def _uploads_key(job_id: str) -> str:
    return f"captioner:job:{job_id}:uploads"


def _to_datetime(raw: str | None) -> datetime | None:
    return datetime.fromtimestamp(float(raw), tz=UTC) if raw else None


class JobStore:
    """Creates, reads and advances job records. Safe to share between threads."""

    def __init__(
        self, client: redis.Redis, ttl_seconds: int, usage_retention_days: int = DEFAULT_RETENTION_DAYS
    ) -> None:
        self._redis = client
        self._ttl = ttl_seconds
        self._usage_retention_days = usage_retention_days
        self._record_result = client.register_script(_RECORD_RESULT)
        self._mark_running = client.register_script(_MARK_RUNNING)
        self._finish = client.register_script(_FINISH)
        self._delete = client.register_script(_DELETE)

    @classmethod
    def from_url(cls, url: str, ttl_seconds: int, usage_retention_days: int = DEFAULT_RETENTION_DAYS) -> JobStore:
        return cls(redis_client(url), ttl_seconds, usage_retention_days)

    def ping(self) -> bool:
        return bool(self._redis.ping())

    def create(
        self,
        job_id: str,
        num_images: int,
        prompt: str | None,
        options: GenerationOptions,
        webhook: WebhookSubscription | None = None,
        *,
        tenant: str,
        owner: str | None = None,
        uploads: Mapping[int, bytes] | None = None,
        s3_keys: Sequence[str] = (),
        enqueue: Callable[[redis.client.Pipeline], object] | None = None,
    ) -> Job:
        """Store a new queued job of `tenant`, with the bytes of its small uploads by image index, and return it.
        `owner`: whose admission the job holds (common/admission.py), released when it ends. `s3_keys`: its uploads
        in S3, deleted once it ends. `enqueue` adds the commands that queue the job (common/fairqueue.py) to the
        same transaction, so no job is stored without being queued, or queued without being stored.

        Record, uploads, the tenant's index and its usage are written in one transaction: a job is never seen
        without its images, and is counted once, on the day it was created."""
        now = time.time()
        fields: dict[Any, str | int] = {
            "tenant": tenant,
            "status": JobStatus.QUEUED.value,
            "created_at": repr(now),
            "prompt": json.dumps(prompt),
            "options": options.model_dump_json(),
            "num_images": num_images,
            "n_done": 0,
            "n_ok": 0,
        }
        if webhook is not None:
            fields |= {"webhook_url": webhook.url, "webhook_events": " ".join(webhook.events)}
        if owner is not None:
            fields["owner"] = owner
        if s3_keys:
            fields["s3_keys"] = " ".join(s3_keys)
        pipe = self._redis.pipeline()
        pipe.hset(_job_key(job_id), mapping=fields)
        pipe.expire(_job_key(job_id), self._ttl)
        if uploads:
            pipe.hset(_uploads_key(job_id), mapping=dict(uploads))  # type: ignore[arg-type]
            pipe.expire(_uploads_key(job_id), self._ttl)
        add_to_index(pipe, _INDEX, tenant, job_id, created=now, ttl_s=self._ttl)
        count_job(pipe, tenant, "interactive", now, self._usage_retention_days)
        if enqueue is not None:
            enqueue(pipe)
        pipe.execute()
        # What get() would read back, without the round trip (the API answers every submit with it).
        return Job(
            id=job_id, status=JobStatus.QUEUED, created_at=cast(datetime, _to_datetime(repr(now))), prompt=prompt,
            options=options, num_images=num_images, webhook=webhook, tenant=tenant,
        )

    def get(self, job_id: str, *, tenant: str | None) -> Job:
        """Read a job with the results recorded so far, ordered by image index. JobNotFound unless it is
        `tenant`'s (None: any tenant's, for the worker, which acts on queue messages rather than callers' ids).
        Another tenant's job is not found exactly as a job that never existed."""
        # No MULTI needed: the record is read first, and a job's last result is written in the same script
        # that ends it, so a terminal record is always read with all its results.
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(_job_key(job_id))
        pipe.hvals(_results_key(job_id))
        record, results = cast(tuple[dict[str, str], list[str]], pipe.execute())
        if not record or (tenant is not None and record.get("tenant", LOCAL_TENANT) != tenant):
            raise JobNotFound(f"No job with id {job_id!r}.")
        parsed = sorted((ImageResult.model_validate_json(r) for r in results), key=lambda r: r.index)
        error = record.get("error")
        return Job(
            id=job_id,
            status=JobStatus(record["status"]),
            created_at=cast(datetime, _to_datetime(record["created_at"])),
            started_at=_to_datetime(record.get("started_at")),
            completed_at=_to_datetime(record.get("completed_at")),
            prompt=json.loads(record["prompt"]),
            options=GenerationOptions.model_validate_json(record["options"]),
            num_images=int(record["num_images"]),
            results=parsed,
            error=ErrorBody.model_validate_json(error) if error else None,
            webhook=WebhookSubscription(url=record["webhook_url"], events=record["webhook_events"].split())
            if "webhook_url" in record
            else None,
            timings=_timings(record),
            tenant=record.get("tenant", LOCAL_TENANT),
        )

    def page(self, tenant: str, limit: int = 20, cursor: str | None = None) -> Page[Job]:
        """The tenant's jobs, newest first, a page at a time."""
        return page(self._redis, _INDEX, tenant, limit, cursor, load=lambda job_id: self.get(job_id, tenant=tenant))

    def cancel(self, job_id: str, *, tenant: str) -> Job:
        """Cancel the tenant's job unless it has ended (then it stays as it is); the job afterwards."""
        self.get(job_id, tenant=tenant)
        self.finish(job_id, JobStatus.CANCELED)
        return self.get(job_id, tenant=tenant)

    def delete(self, job_id: str, *, tenant: str) -> list[str]:
        """Delete the tenant's ended job with everything Redis keeps for it; the keys of its uploads in S3, for the
        caller to delete (queued for deletion since the job ended). JobNotFound as for get(); JobNotEnded while
        it is queued or running (cancel it first)."""
        outcome = cast(list[str], self._delete(keys=[_job_key(job_id), index_key(_INDEX, tenant)],
                                               args=[job_id, tenant]))
        if not outcome[0]:
            raise JobNotFound(f"No job with id {job_id!r}.")
        if outcome[0] != "deleted":
            raise JobNotEnded(f"The job is {outcome[0]}; cancel it before deleting it.")
        return outcome[1].split()

    def upload(self, job_id: str, index: int) -> bytes | None:
        """The bytes of a small upload kept with its job; None once the job has ended or expired."""
        # The client decodes replies to str; image bytes must come back as they went in.
        data = self._redis.execute_command(  # type: ignore[no-untyped-call]
            "HGET", _uploads_key(job_id), index, **{NEVER_DECODE: True}
        )
        return cast(bytes | None, data)

    def status(self, job_id: str) -> JobStatus | None:
        """Just the status (None: no such job): cheap enough to read at every wake-up."""
        raw = cast(str | None, self._redis.hget(_job_key(job_id), "status"))
        return JobStatus(raw) if raw else None

    def mark_running(self, job_id: str) -> JobStatus | None:
        """Move a queued job to running; return its status afterwards, or None if it does not exist."""
        return self.start(job_id)[0]

    def start(self, job_id: str) -> tuple[JobStatus | None, float | None]:
        """mark_running, also saying, when this call started the job (then it can have no results yet), how many
        seconds it waited queued; None when it did not start it."""
        now = time.time()
        status = self._mark_running(keys=[_job_key(job_id)], args=[repr(now), job_id, self._ttl])
        if isinstance(status, list):
            return JobStatus.RUNNING, max(0.0, now - float(status[1]))
        return (JobStatus(status) if status else None), None

    def finished_indices(self, job_id: str) -> set[int]:
        """Indices that already have a result: a redelivered task skips them."""
        return {int(i) for i in cast(list[str], self._redis.hkeys(_results_key(job_id)))}

    def record_result(
        self, job_id: str, result: ImageResult, timings: JobTimings | None = None, work: ModelWork | None = None
    ) -> tuple[bool, JobStatus | None]:
        """Record one image's outcome unless it has one already; finish the job with its last image.

        `timings`, the worker's stage times, are stored in the same step (before the job can end, so a client
        that sees the end sees them); so is the image's usage (common/usage.py), with `work`, what the model did
        for it, counted only by the call that writes the result. Returns whether this call wrote the result, and
        the job's status afterwards (None: no such job).
        """
        now = time.time()
        when = UsageStamp.at(now, self._usage_retention_days)
        work = work or ModelWork()
        written, status, *tenant = cast(
            list[Any],
            self._record_result(
                keys=[_job_key(job_id), _results_key(job_id)],
                args=[
                    result.index,
                    result.model_dump_json(),
                    1 if result.caption is not None else 0,
                    repr(now),
                    self._ttl,
                    ALL_IMAGES_FAILED.model_dump_json(),
                    job_id,
                    timings.model_dump_json(exclude_none=True) if timings else "",
                    when.day,
                    when.expire_at,
                    work.tokens_generated,
                    work.model_us,
                ],
            ),
        )
        if written == 1:
            captioned = result.caption is not None
            metrics.images_recorded("interactive", tenant[0], int(captioned), int(not captioned))
            if JobStatus(status).is_terminal():  # only a call that wrote a result can end the job
                metrics.job_ended(status)
        return written == 1, JobStatus(status) if status else None

    def finish(self, job_id: str, status: JobStatus, error: ErrorBody | None = None) -> JobStatus:
        """End a job (cancel it, or fail it whole) unless it has ended already; return its final status."""
        if not status.is_terminal():
            raise ValueError(f"{status} is not a terminal status")
        final = self._finish(
            keys=[_job_key(job_id)],
            args=[status.value, repr(time.time()), error.model_dump_json() if error else "", job_id, self._ttl],
        )
        if not final:
            raise JobNotFound(f"No job with id {job_id!r}.")
        if isinstance(final, list):  # this call ended it
            metrics.job_ended(final[0])
            return JobStatus(final[0])
        return JobStatus(final)


def _timings(record: dict[str, str]) -> JobTimings | None:
    """The worker's stage times plus those the record's timestamps give: queue wait, and recording."""
    if "started_at" not in record:
        return None
    timings = JobTimings.model_validate_json(record.get("timings") or "{}")
    started = float(record["started_at"])
    timings.queue_ms = round((started - float(record["created_at"])) * 1000, 2)
    if record.get("completed_at") and timings.model_ms is not None:
        worker_ms = (float(record["completed_at"]) - started) * 1000
        spent = (timings.fetch_decode_ms or 0) + (timings.batch_wait_ms or 0) + timings.model_ms
        timings.record_ms = round(max(0.0, worker_ms - spent), 2)
    return timings
