"""Bulk jobs in Redis: the record, its chunks, and a leased work queue that survives dead workers.

The lane runs two kinds of record (its `kind` field): bulk jobs, which list an S3 prefix, and OpenAI-style batches
(common/batches.py), which read an input file; the queue, leases, chunk outcomes and the end serve both alike.

Layout, per bulk job:
- ``captioner:bulk:{id}``          hash: status, request, cursor (last key listed into a chunk), counters
- ``captioner:bulk:{id}:chunks``   hash: chunk index -> its objects (JSON), deleted once the chunk is done
- ``captioner:bulk:{id}:files``    hash: chunk index -> what the chunk wrote (ChunkFiles JSON)
- ``captioner:bulk:{id}:partial``  hash: chunk index -> "captioned failed skipped" of a chunk in progress
- ``captioner:bulk:{id}:deaths``   hash: chunk index -> workers that died holding it; ``{index}/{part}`` -> workers
  that died with that object of it in hand, in a careful run (worker/bulk/careful.py)

Shared by every bulk job:
- ``captioner:bulk:ready``   list of work items: ``plan|{id}``, ``chunk|{id}|{n}``, ``final|{id}``
- ``captioner:bulk:leases``  sorted set: every live item, scored by when its lease runs out
- ``captioner:bulk:owners``  hash: item -> token of the worker that holds it
- ``captioner:bulk:in-hand`` hash: item -> the object a careful run of that chunk has in hand

An item lives in `leases` from the moment it is queued until it is done. A worker claims it (owner, fresh
lease), renews the lease as it goes, and releases it in the same script that records its outcome. When a
lease runs out (the worker died, or the item waited long in the list), the reaper puts the item back on the
list unless it is there already, and forgets its owner; a chunk whose lease ran out in a worker's hands is blamed
for that worker's death (REAP in common/bulk_scripts.py), and runs carefully from then on (worker/bulk/careful.py).
Outcomes are recorded once per chunk index (HSETNX), so an item run twice changes nothing. Only a bounded window of
chunks is queued at a time: the listing resumes, by key, as chunks finish.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import redis

from common import metrics
from common.bulk_schemas import (
    BulkJob,
    BulkOutput,
    BulkProgress,
    BulkRequest,
    BulkStatus,
    ChunkFiles,
    DryRunReport,
    ObjectRef,
)
from common.bulk_scripts import (
    ABANDON,
    ADD_CHUNK,
    ATTEMPTS_KEY,
    CLAIM,
    COMPLETE_CHUNK,
    DRY_PROGRESS,
    END,
    END_PLAN_STEP,
    HOLD,
    IN_HAND_KEY,
    LEASES_KEY,
    OWNERS_KEY,
    RATE_KEY,
    READY_KEY,
    REAP,
    RECORD_PREFIX,
    RENEW,
)
from common.errors import JobNotFound
from common.listing import Page, add_to_index, page
from common.schemas import LOCAL_TENANT, ErrorBody
from common.settings import Settings
from common.usage import DEFAULT_RETENTION_DAYS, ModelWork, UsageStamp, count_job

F = TypeVar("F", bound=ChunkFiles)

# What a record of the bulk lane is: a bulk job; the kind also names the tenant's index of them (common/listing.py).
BULK_KIND = "bulk"


def record_key(bulk_id: str) -> str:
    return RECORD_PREFIX + bulk_id


def _keys(bulk_id: str) -> list[str]:
    base = record_key(bulk_id)
    return [base, f"{base}:chunks", f"{base}:files", f"{base}:partial", f"{base}:deaths"]


def _time(raw: str | None) -> datetime | None:
    return datetime.fromtimestamp(float(raw), tz=UTC) if raw else None


@dataclass(frozen=True)
class WorkItem:
    """One unit of bulk work: a planning step, a chunk, or the final step that writes the manifest."""

    kind: str  # "plan" | "chunk" | "final"
    bulk_id: str
    chunk: int = -1

    def __str__(self) -> str:
        return f"{self.kind}|{self.bulk_id}" + (f"|{self.chunk}" if self.kind == "chunk" else "")

    @classmethod
    def parse(cls, raw: str) -> WorkItem:
        kind, bulk_id, *rest = raw.split("|")
        return cls(kind, bulk_id, int(rest[0]) if rest else -1)


@dataclass(frozen=True)
class Claim:
    """A claimed item: its attempts including this one (0: another worker has it, or it is done), its job's status,
    and how many workers died holding it (a chunk's: then it runs carefully, worker/bulk/careful.py)."""

    attempts: int
    status: str
    deaths: int = 0


@dataclass(frozen=True)
class ChunkBlame:
    """What the workers that died holding a chunk are blamed on: the chunk as a whole (`deaths`, each a death every
    object of it has cost) and single objects, by their part of the chunk, that a careful run had in hand."""

    deaths: int
    parts: dict[str, int]

    def cost(self, part: str) -> int:
        """How many workers died with this object in hand, as far as anyone can tell."""
        return self.deaths + self.parts.get(part, 0)


@dataclass(frozen=True)
class BulkRecord:
    """The raw state a worker acts on (the API reads the BulkJob view)."""

    request: BulkRequest
    output: BulkOutput
    status: BulkStatus
    cursor: str
    n_chunks: int
    n_chunks_done: int
    listing_done: bool
    discovered: int
    prior_manifest: str
    model: str


class BulkStore:
    """Creates, reads and advances bulk jobs, and hands out their work. Safe to share between threads."""

    def __init__(
        self, client: redis.Redis, ttl_seconds: int, lease_s: float, window: int,
        usage_retention_days: int = DEFAULT_RETENTION_DAYS,
    ) -> None:
        self._redis = client
        self._ttl = ttl_seconds
        self._usage_retention_days = usage_retention_days
        self.lease_s = lease_s
        self.window = window
        self._add_chunk = client.register_script(ADD_CHUNK)
        self._end_plan_step = client.register_script(END_PLAN_STEP)
        self._complete_chunk = client.register_script(COMPLETE_CHUNK)
        self._claim = client.register_script(CLAIM)
        self._renew = client.register_script(RENEW)
        self._hold = client.register_script(HOLD)
        self._abandon = client.register_script(ABANDON)
        self._reap = client.register_script(REAP)
        self._dry_progress = client.register_script(DRY_PROGRESS)
        self._end = client.register_script(END)

    @classmethod
    def from_settings(cls, settings: Settings, client: redis.Redis) -> BulkStore:
        return cls(
            client, settings.job_ttl_seconds, settings.bulk_lease_seconds, settings.bulk_max_queued_chunks,
            settings.usage_retention_days,
        )

    # The API's side.

    def create(self, bulk_id: str, request: BulkRequest, *, tenant: str, request_id: str | None = None) -> BulkJob:
        """Store a queued bulk job of `tenant`, queue its first planning step and count it (common/usage.py), in
        one transaction."""
        fields: dict[str, str | int] = {
            "request": request.model_dump_json(), "output": request.resolved_output().model_dump_json(),
            "objects": 0, "bytes": 0, "matched_bytes": 0, "would_skip": 0,
        }
        if request.webhook is not None:
            fields |= {"webhook_url": request.webhook.url, "webhook_events": " ".join(request.webhook.events)}
        self.create_record(bulk_id, BULK_KIND, fields, tenant=tenant, request_id=request_id)
        return self.get(bulk_id, tenant=tenant)

    def create_record(
        self, bulk_id: str, kind: str, fields: dict[str, str | int], *, tenant: str, request_id: str | None = None
    ) -> None:
        """Store a queued record of this kind (a bulk job, or a batch: common/batches.py) with the lane's counters
        and the kind's own `fields`, queue its first planning step, index it for its tenant and count it as a bulk
        job of the tenant's usage, in one transaction. `request_id`: the X-Request-ID that made it, for the worker's
        log lines about it."""
        now = time.time()
        record: dict[Any, str | int] = {
            "kind": kind, "tenant": tenant, "status": BulkStatus.QUEUED.value, "created_at": repr(now),
            "cursor": "", "n_chunks": 0, "n_chunks_done": 0, "listing_done": 0, "planning": 1,
            "discovered": 0, "captioned": 0, "failed": 0, "skipped": 0, "queued_objects": 0, **fields,
            **({"request_id": request_id} if request_id else {}),
        }
        item = str(WorkItem("plan", bulk_id))
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(record_key(bulk_id), mapping=record)
        pipe.lpush(READY_KEY, item)
        pipe.zadd(LEASES_KEY, {item: now + self.lease_s})
        add_to_index(pipe, kind, tenant, bulk_id, created=now, ttl_s=self._ttl)
        count_job(pipe, tenant, "bulk", now, self._usage_retention_days)
        pipe.execute()

    def kind(self, bulk_id: str) -> str | None:
        """What the record is (BULK_KIND, or a batch's), or None when there is none."""
        return self.identity(bulk_id)[0]

    def identity(self, bulk_id: str) -> tuple[str | None, dict[str, str]]:
        """`kind`, and whose record it is, for log lines: its tenant and the request id that made it (where known)."""
        raw = cast(list[str | None], self._redis.hmget(record_key(bulk_id), ["kind", "status", "tenant", "request_id"]))
        whose = {name: value for name, value in zip(("tenant", "request_id"), raw[2:], strict=True) if value}
        return (None if raw[1] is None else raw[0] or BULK_KIND), whose

    def get(self, bulk_id: str, *, tenant: str | None) -> BulkJob:
        """The bulk job, or JobNotFound unless it is `tenant`'s (None: any tenant's, for the worker). Another
        tenant's bulk job is not found exactly as one that never existed."""
        keys = _keys(bulk_id)
        pipe = self._redis.pipeline(transaction=False)  # a read: counts may move on between the two
        pipe.hgetall(keys[0])
        pipe.hvals(keys[3])
        record, partials = cast(tuple[dict[str, str], list[str]], pipe.execute())
        if (not record or record.get("kind", BULK_KIND) != BULK_KIND
                or (tenant is not None and record.get("tenant", LOCAL_TENANT) != tenant)):
            raise JobNotFound(f"No bulk job with id {bulk_id!r}.")
        request = BulkRequest.model_validate_json(record["request"])
        error = record.get("error")
        return BulkJob(
            id=bulk_id, status=BulkStatus(record["status"]),
            created_at=cast(datetime, _time(record["created_at"])),
            started_at=_time(record.get("started_at")), completed_at=_time(record.get("completed_at")),
            source=request.source, output=BulkOutput.model_validate_json(record["output"]),
            prompt=request.prompt, options=request.options, incremental=request.incremental,
            dry_run=request.dry_run, progress=_progress(record, partials, request.dry_run),
            dry_run_report=self._dry_run_report(record) if request.dry_run else None,
            manifest_key=record.get("manifest_key"),
            error=ErrorBody.model_validate_json(error) if error else None, webhook=request.webhook,
            tenant=record.get("tenant", LOCAL_TENANT),
        )

    def page(self, tenant: str, limit: int = 20, cursor: str | None = None) -> Page[BulkJob]:
        """The tenant's bulk jobs, newest first, a page at a time."""
        return page(
            self._redis, BULK_KIND, tenant, limit, cursor, load=lambda bulk_id: self.get(bulk_id, tenant=tenant)
        )

    def cancel(self, bulk_id: str, *, tenant: str) -> BulkJob:
        """Stop the tenant's bulk job; chunks already written stay, and the manifest lists them."""
        self.get(bulk_id, tenant=tenant)
        self.end(bulk_id, BulkStatus.CANCELED, None)
        return self.get(bulk_id, tenant=tenant)

    # The worker's side: the work queue.

    def pop(self, timeout_s: float) -> WorkItem | None:
        popped = cast(list[str] | None, self._redis.brpop([READY_KEY], timeout=timeout_s))
        return WorkItem.parse(popped[1]) if popped else None

    def claim(self, item: WorkItem, token: str) -> Claim:
        """Take an item for this worker, with a fresh lease, unless another worker has it or it is done."""
        keys = _keys(item.bulk_id)
        attempts, status, deaths = cast(list[Any], self._claim(
            keys=[keys[0], keys[4]], args=[str(item), token, repr(time.time()), self.lease_s]
        ))
        return Claim(int(attempts), str(status), int(deaths))

    def renew(self, item: WorkItem, token: str, progress: tuple[int, int, int] | None = None) -> str:
        """Keep holding an item; returns the job status, or 'lost' when the item went to another worker."""
        keys = _keys(item.bulk_id)
        return cast(str, self._renew(
            keys=[keys[0], keys[3]],
            args=[str(item), token, repr(time.time()), self.lease_s, item.chunk,
                  " ".join(map(str, progress)) if progress else ""],
        ))

    def hold(self, item: WorkItem, token: str, part: str | None) -> str:
        """Name the object a careful run has in hand (None: none), renewing the lease; returns as renew does."""
        return cast(str, self._hold(
            keys=[record_key(item.bulk_id)], args=[str(item), token, repr(time.time()), self.lease_s, part or ""],
        ))

    def blame(self, bulk_id: str, index: int) -> ChunkBlame:
        """The deaths blamed on chunk `index` and on its objects (read for a careful run only)."""
        raw = cast(dict[str, str], self._redis.hgetall(_keys(bulk_id)[4]))
        prefix = f"{index}/"
        return ChunkBlame(
            int(raw.get(str(index), 0)),
            {field[len(prefix):]: int(value) for field, value in raw.items() if field.startswith(prefix)},
        )

    def abandon(self, item: WorkItem, token: str, *, retry_now: bool = False) -> None:
        """Give an item up: another worker takes it when its lease runs out, or at once with retry_now."""
        self._abandon(args=[str(item), token, repr(time.time()) if retry_now else ""])

    def reap(self, limit: int = 100) -> int:
        """Queue again the items whose lease ran out; returns how many."""
        return int(cast(int, self._reap(args=[repr(time.time()), self.lease_s, limit])))

    # The worker's side: planning.

    def record(self, bulk_id: str) -> BulkRecord | None:
        raw = cast(dict[str, str], self._redis.hgetall(record_key(bulk_id)))
        if not raw:
            return None
        return BulkRecord(
            request=BulkRequest.model_validate_json(raw["request"]),
            output=BulkOutput.model_validate_json(raw["output"]), status=BulkStatus(raw["status"]),
            cursor=raw["cursor"], n_chunks=int(raw["n_chunks"]), n_chunks_done=int(raw["n_chunks_done"]),
            listing_done=raw["listing_done"] == "1", discovered=int(raw["discovered"]),
            prior_manifest=raw.get("prior_manifest", ""),
            model=raw.get("model", ""),
        )

    def set_once(self, bulk_id: str, field: str, value: str) -> str:
        """Fix a value for the whole run (the model, the prior manifest) the first time; return the kept one."""
        self._redis.hsetnx(record_key(bulk_id), field, value)
        return cast(str, self._redis.hget(record_key(bulk_id), field))

    def add_chunk(self, bulk_id: str, index: int, objects: list[ObjectRef]) -> int:
        """Queue chunk `index` (1), or not: 0 when it exists already, negative when the job is gone or over."""
        payload = json.dumps([o.model_dump(mode="json") for o in objects])
        return self.add_raw_chunk(bulk_id, index, payload, objects[-1].key, len(objects))

    def add_raw_chunk(self, bulk_id: str, index: int, payload: str, cursor: str, count: int) -> int:
        """add_chunk for any kind of record: the chunk's `payload` as its kind reads it, the planning `cursor` after
        it, and how many images it holds."""
        return int(cast(int, self._add_chunk(
            keys=_keys(bulk_id)[:2], args=[bulk_id, index, payload, cursor, count, repr(time.time()), self.lease_s],
        )))

    def end_plan_step(self, bulk_id: str, token: str, listing_done: bool) -> None:
        self._end_plan_step(
            keys=[record_key(bulk_id)],
            args=[bulk_id, 1 if listing_done else 0, repr(time.time()), self.lease_s, self.window, token],
        )

    def dry_progress(self, bulk_id: str, expected_cursor: str, cursor: str, counts: DryRunReport) -> bool:
        return bool(self._dry_progress(
            keys=[record_key(bulk_id)],
            args=[expected_cursor, cursor, counts.objects, counts.bytes, counts.matched, counts.matched_bytes,
                  counts.would_skip],
        ))

    # The worker's side: chunks and the end.

    def chunk(self, bulk_id: str, index: int) -> list[ObjectRef] | None:
        raw = self.raw_chunk(bulk_id, index)
        return [ObjectRef.model_validate(o) for o in json.loads(raw)] if raw else None

    def raw_chunk(self, bulk_id: str, index: int) -> str | None:
        """A queued chunk's payload as add_raw_chunk stored it; None once it is done (or its job is gone)."""
        return cast(str | None, self._redis.hget(_keys(bulk_id)[1], str(index)))

    def complete_chunk(self, bulk_id: str, files: ChunkFiles, objects: int, work: ModelWork | None = None) -> bool:
        """Record a chunk's outcome, and count its images and `work` (what the model did for them) as the job's
        tenant's usage; False when it had been recorded already (the chunk ran twice), and nothing is counted."""
        now = time.time()
        when = UsageStamp.at(now, self._usage_retention_days)
        work = work or ModelWork()
        tenant = self._complete_chunk(
            keys=_keys(bulk_id),
            args=[bulk_id, files.index, files.model_dump_json(), files.captioned, files.failed, files.skipped,
                  objects, repr(now), self.lease_s, self.window, when.day, when.expire_at, work.tokens_generated,
                  work.model_us],
        )
        if tenant == 0:
            return False
        metrics.images_recorded("bulk", str(tenant), files.captioned, files.failed, files.skipped)
        return True

    def chunk_files(self, bulk_id: str, kind: type[F]) -> list[F]:
        """Every finished chunk's files, in chunk (and so key) order, as `kind` (a batch's carry more)."""
        raw = cast(dict[str, str], self._redis.hgetall(_keys(bulk_id)[2]))
        return sorted((kind.model_validate_json(v) for v in raw.values()), key=lambda f: f.index)

    def end(self, bulk_id: str, status: BulkStatus, error: ErrorBody | None, *, final_step: bool = True) -> BulkStatus:
        """End a job unless it has ended; queue the final step (the manifest) unless this is it."""
        final = self._end(
            keys=_keys(bulk_id),
            args=[status.value, repr(time.time()), error.model_dump_json() if error else "", bulk_id, self._ttl,
                  1 if final_step else 0, self.lease_s],
        )
        if not final:
            raise JobNotFound(f"No bulk job with id {bulk_id!r}.")
        return BulkStatus(final)

    def set_manifest(self, bulk_id: str, manifest_key: str) -> None:
        self._redis.hset(record_key(bulk_id), "manifest_key", manifest_key)

    def drop(self, item: WorkItem) -> None:
        """Forget an item for good: it is done, or its job is gone."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.zrem(LEASES_KEY, str(item))
        pipe.hdel(OWNERS_KEY, str(item))
        pipe.hdel(ATTEMPTS_KEY, str(item))
        pipe.hdel(IN_HAND_KEY, str(item))
        pipe.execute()

    def backlog_images(self) -> int:
        """Images of live bulk jobs queued in chunks not yet done (the ones in progress too): the bulk lane's backlog.
        Every live job has an item in the leases, so they name the jobs to read: a window of chunks per job, never
        a listing. Two round trips."""
        items = cast(list[str], self._redis.zrange(LEASES_KEY, 0, -1))
        pipe = self._redis.pipeline(transaction=False)
        for bulk_id in sorted({WorkItem.parse(item).bulk_id for item in items}):
            pipe.hmget(record_key(bulk_id), "status", "queued_objects")
        live = (BulkStatus.QUEUED.value, BulkStatus.RUNNING.value)
        return sum(int(queued or 0) for status, queued in pipe.execute() if status in live)

    def progress_due(self, bulk_id: str, interval_s: float) -> bool:
        """True at most once per interval per job, across all workers (bulk.progress throttling)."""
        if interval_s <= 0:
            return True
        key = f"{record_key(bulk_id)}:progress-sent"
        return bool(self._redis.set(key, "1", nx=True, px=int(interval_s * 1000)))

    def record_rate(self, images_per_second: float) -> None:
        self._redis.set(RATE_KEY, repr(images_per_second))

    def rate(self) -> float | None:
        raw = cast(str | None, self._redis.get(RATE_KEY))
        return float(raw) if raw else None

    def _dry_run_report(self, record: dict[str, str]) -> DryRunReport:
        matched, would_skip = int(record["discovered"]), int(record["would_skip"])
        rate = self.rate()
        return DryRunReport(
            objects=int(record["objects"]), bytes=int(record["bytes"]), matched=matched,
            matched_bytes=int(record["matched_bytes"]), would_skip=would_skip, to_caption=matched - would_skip,
            estimated_seconds=round((matched - would_skip) / rate, 1) if rate else None,
        )


def _progress(record: dict[str, str], partials: list[str], dry_run: bool) -> BulkProgress:
    """Counts of finished chunks plus what chunks in progress have reported; a rate and time left."""
    captioned, failed, skipped = (int(record[name]) for name in ("captioned", "failed", "skipped"))
    in_progress = [0, 0, 0]
    for raw in partials:
        for i, value in enumerate(raw.split()):
            in_progress[i] += int(value)
    captioned, failed, skipped = captioned + in_progress[0], failed + in_progress[1], skipped + in_progress[2]
    discovered = int(record["discovered"])
    in_flight = max(0, int(record["queued_objects"]) - sum(in_progress))
    rate = eta = None
    started = record.get("started_at")
    if started and not dry_run:
        end = float(record.get("completed_at") or time.time())
        if end > float(started) and captioned + failed:
            rate = round((captioned + failed) / (end - float(started)), 2)
            left = discovered - captioned - failed - skipped
            eta = round(left / rate, 1) if record["status"] in ("queued", "running") else 0.0
    return BulkProgress(
        discovered=discovered, captioned=captioned, failed=failed, skipped=skipped, in_flight=in_flight,
        listing_complete=record["listing_done"] == "1", images_per_second=rate, estimated_seconds_left=eta,
    )
