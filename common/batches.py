"""OpenAI's Batch API on the bulk lane: a batch is a record of the bulk lane (common/bulkstore.py) of kind `batch`,
whose chunks are stretches of lines of its input file rather than listed S3 objects. The lane's leases, retries,
cancellation and usage serve it unchanged; this module holds what is a batch's own: the request, the batch object
OpenAI's SDK reads, and the fields the worker records as it validates, runs and finalizes it (worker/bulk/batch.py).

A batch's fields, beside the lane's (common/bulkstore.py):
- ``request``                   the BatchCreate, JSON
- ``model``                     the served model's id, fixed at creation
- ``validated_at``, ``total``   when the file was found good, and its requests
- ``chunk_starts``, ``input_end`` where each chunk's lines start in the file ([byte, line] pairs, JSON), and its end
- ``batch_errors``              the bad lines of a file that failed validation (JSON)
- ``finalizing_at``, ``finalized_at``, ``output_file_id``, ``error_file_id``   the final step's
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal, cast

import redis
from pydantic import BaseModel, ConfigDict, Field, field_validator

from common.batch_input import BatchLineError
from common.bulk_schemas import BulkStatus, ChunkFiles
from common.bulkstore import BulkStore, record_key
from common.errors import CaptionerError, Conflict, JobNotFound
from common.lifecycle import TERMINAL_LUA
from common.listing import Page, page
from common.openai_objects import OpenAIList
from common.schemas import LOCAL_TENANT, ErrorBody

BATCH_KIND = "batch"
# OpenAI's one completion window: a batch not done within it expires, keeping what it finished.
COMPLETION_WINDOW_S = 24 * 3600
ENDPOINTS = ("/v1/chat/completions", "/v1/responses")


class BatchExpired(CaptionerError):
    code = "batch_expired"


class BatchNotCancellable(Conflict):
    code = "batch_not_cancellable"


class BatchCreate(BaseModel):
    """The body of POST /v1/batches; any other parameter is refused by name."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1, max_length=128)
    endpoint: Literal["/v1/chat/completions", "/v1/responses"]
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = None

    @field_validator("metadata")
    @classmethod
    def _as_openai_bounds_it(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and (len(value) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in value.items())):
            raise ValueError("at most 16 pairs, keys of up to 64 characters and values of up to 512")
        return value


class BatchChunk(BaseModel):
    """A chunk of a batch: the lines of the input file from byte `start` up to `end`, the first being `line`."""

    line: int
    start: int
    end: int


class BatchChunkFiles(ChunkFiles):
    """What a batch's chunk wrote, and the tokens of its requests (the batch's usage)."""

    input_tokens: int = 0
    output_tokens: int = 0


class BatchRequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchLineError]


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class BatchUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


BatchStatusName = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
]


class BatchObject(BaseModel):
    """A batch as OpenAI's Batch API describes one."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str = "24h"
    status: BatchStatusName
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: BatchRequestCounts
    usage: BatchUsage
    metadata: dict[str, str] | None = None


class BatchList(OpenAIList[BatchObject]):
    """What GET /v1/batches answers."""


@dataclass(frozen=True)
class BatchRecord:
    """What the worker acts on."""

    batch_id: str
    tenant: str
    request: BatchCreate
    model: str
    status: BulkStatus
    created_at: float
    validated: bool
    total: int
    chunk_starts: list[tuple[int, int]]  # each chunk's first byte and first line
    input_end: int
    n_chunks: int
    n_chunks_done: int
    ended_by: str | None  # the error code the batch ended with (batch_expired, bulk_failed), if any

    def expired(self, now: float) -> bool:
        return now > self.created_at + COMPLETION_WINDOW_S

    def chunk(self, index: int) -> BatchChunk:
        start, line = self.chunk_starts[index]
        end = self.chunk_starts[index + 1][0] if index + 1 < len(self.chunk_starts) else self.input_end
        return BatchChunk(line=line, start=start, end=end)


def output_file_id(batch_id: str, which: Literal["output", "error"]) -> str:
    """The id of a batch's output or error file, fixed by the batch: a final step run twice writes the same file."""
    return "file-" + hashlib.sha256(f"{batch_id}:{which}".encode()).hexdigest()[:24]


def line_ids(batch_id: str, line: int) -> str:
    """The id a batch's request carries in its output (its answer's id, and the line's): the same on a rerun."""
    return hashlib.sha256(f"{batch_id}:{line}".encode()).hexdigest()[:24]


class BatchStore:
    """Batches over the bulk lane's records. Safe to share between threads."""

    def __init__(self, client: redis.Redis, bulk: BulkStore) -> None:
        self._redis = client
        self._bulk = bulk
        self._validated = client.register_script(_VALIDATED)

    # The API's side.

    def create(self, request: BatchCreate, *, tenant: str, model: str, request_id: str | None = None) -> BatchObject:
        batch_id = "batch_" + secrets.token_hex(12)
        self._bulk.create_record(batch_id, BATCH_KIND, {"request": request.model_dump_json(), "model": model},
                                 tenant=tenant, request_id=request_id)
        return self.get(batch_id, tenant=tenant)

    def get(self, batch_id: str, *, tenant: str) -> BatchObject:
        """The tenant's batch; another tenant's is not found, exactly as one that never existed."""
        base = record_key(batch_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(base)
        pipe.hvals(f"{base}:partial")
        pipe.hvals(f"{base}:files")
        record, partials, files = cast(tuple[dict[str, str], list[str], list[str]], pipe.execute())
        if not record or record.get("kind") != BATCH_KIND or record.get("tenant", LOCAL_TENANT) != tenant:
            raise JobNotFound(f"No batch with id {batch_id!r}.")
        return _batch_object(batch_id, record, partials, [BatchChunkFiles.model_validate_json(f) for f in files])

    def page(self, tenant: str, limit: int, after: str | None) -> Page[BatchObject]:
        """The tenant's batches, newest first, a page at a time after the batch `after`."""
        return page(self._redis, BATCH_KIND, tenant, limit, after, load=lambda i: self.get(i, tenant=tenant))

    def cancel(self, batch_id: str, *, tenant: str) -> BatchObject:
        """Stop the batch: requests already answered stay, the rest go to its error file as cancelled (once the final
        step has written its files, it is `cancelled`). Cancelling a cancelled batch changes nothing."""
        found = self.get(batch_id, tenant=tenant)
        if found.status in ("completed", "failed", "expired"):
            raise BatchNotCancellable(f"The batch is {found.status}; only a batch still running can be cancelled.")
        self._bulk.end(batch_id, BulkStatus.CANCELED, None)
        return self.get(batch_id, tenant=tenant)

    # The worker's side.

    def record(self, batch_id: str) -> BatchRecord | None:
        raw = cast(dict[str, str], self._redis.hgetall(record_key(batch_id)))
        if not raw or raw.get("kind") != BATCH_KIND:
            return None
        error = raw.get("error")
        return BatchRecord(
            batch_id=batch_id, tenant=raw.get("tenant", LOCAL_TENANT),
            request=BatchCreate.model_validate_json(raw["request"]), model=raw["model"],
            status=BulkStatus(raw["status"]), created_at=float(raw["created_at"]), validated="validated_at" in raw,
            total=int(raw.get("total", 0)),
            chunk_starts=[(start, line) for start, line in json.loads(raw.get("chunk_starts", "[]"))],
            input_end=int(raw.get("input_end", 0)), n_chunks=int(raw["n_chunks"]),
            n_chunks_done=int(raw["n_chunks_done"]),
            ended_by=ErrorBody.model_validate_json(error).code if error else None,
        )

    def validated(self, batch_id: str, total: int, chunk_starts: list[tuple[int, int]], input_end: int) -> None:
        """The file is good: its requests and where its chunks start, recorded once (a rerun finds them set), and
        only while the batch runs: a batch cancelled meanwhile has had its final step, which listed no lines."""
        self._validated(keys=[record_key(batch_id)],
                        args=[repr(time.time()), total, json.dumps(chunk_starts), input_end])

    def fail_validation(self, batch_id: str, errors: list[BatchLineError]) -> None:
        """The file is bad: the batch fails with its bad lines, and nothing runs."""
        self._redis.hset(record_key(batch_id), "batch_errors",
                         json.dumps([e.model_dump() for e in errors]))
        first = errors[0].message if errors else "The input file is not valid."
        self._bulk.end(batch_id, BulkStatus.FAILED, ErrorBody(code="invalid_input_file", message=first),
                       final_step=False)

    def expire(self, batch_id: str) -> None:
        """Past its completion window: the batch ends, and its final step writes what it finished."""
        self._bulk.end(batch_id, BulkStatus.CANCELED, ErrorBody.of(BatchExpired(
            "The batch did not finish within its 24-hour completion window.")))

    def finalizing(self, batch_id: str) -> None:
        self._redis.hsetnx(record_key(batch_id), "finalizing_at", repr(time.time()))

    def finalized(self, batch_id: str, output_id: str | None, error_id: str | None) -> None:
        """The files are written: record them (then the batch shows as ended)."""
        fields: dict[Any, str] = {"finalized_at": repr(time.time())}
        fields |= {"output_file_id": output_id} if output_id else {}
        fields |= {"error_file_id": error_id} if error_id else {}
        self._redis.hset(record_key(batch_id), mapping=fields)


# KEYS: record. ARGV: now, total, chunk starts, input end.
_VALIDATED = f"""
local status = redis.call('HGET', KEYS[1], 'status')
if (not status) or {TERMINAL_LUA} or redis.call('HEXISTS', KEYS[1], 'validated_at') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'validated_at', ARGV[1], 'total', ARGV[2], 'chunk_starts', ARGV[3], 'input_end', ARGV[4])
return 1
"""


def _status(record: dict[str, str], finalized: bool) -> BatchStatusName:
    """OpenAI's status of a record of the bulk lane's: an ended batch shows as ended once its files are written."""
    status = BulkStatus(record["status"])
    error = record.get("error") or ""
    expired = bool(error) and ErrorBody.model_validate_json(error).code == BatchExpired.code
    if status is BulkStatus.FAILED:
        return "failed"
    if status is BulkStatus.CANCELED:
        if expired:
            return "expired" if finalized else "finalizing"
        return "cancelled" if finalized else "cancelling"
    if status.is_terminal():
        return "completed"
    if "validated_at" not in record:
        return "validating"
    if record["listing_done"] == "1" and int(record["n_chunks_done"]) >= int(record["n_chunks"]):
        return "finalizing"
    return "in_progress"


def _batch_object(batch_id: str, record: dict[str, str], partials: list[str], files: list[BatchChunkFiles]
                  ) -> BatchObject:
    request = BatchCreate.model_validate_json(record["request"])

    def at(name: str) -> int | None:
        return int(float(record[name])) if record.get(name) else None

    status = _status(record, "finalized_at" in record)
    ended = at("completed_at")
    completed, failed = int(record["captioned"]), int(record["failed"])
    for raw in partials:  # chunks in progress report their counts as they go
        counts = [int(v) for v in raw.split()]
        completed, failed = completed + counts[0], failed + counts[1]
    input_tokens = sum(f.input_tokens for f in files)
    output_tokens = sum(f.output_tokens for f in files)
    errors = record.get("batch_errors")
    created = cast(int, at("created_at"))
    return BatchObject(
        id=batch_id, endpoint=request.endpoint, model=record["model"], input_file_id=request.input_file_id,
        status=status, metadata=request.metadata,
        errors=BatchErrors(data=[BatchLineError.model_validate(e) for e in json.loads(errors)]) if errors else None,
        output_file_id=record.get("output_file_id"), error_file_id=record.get("error_file_id"),
        created_at=created, expires_at=created + COMPLETION_WINDOW_S, in_progress_at=at("validated_at"),
        finalizing_at=at("finalizing_at"),
        completed_at=ended if status == "completed" else None,
        failed_at=ended if status == "failed" else None,
        expired_at=ended if status == "expired" else None,
        cancelling_at=ended if status in ("cancelling", "cancelled") else None,
        cancelled_at=at("finalized_at") if status == "cancelled" else None,
        request_counts=BatchRequestCounts(total=int(record.get("total", 0)), completed=completed, failed=failed),
        usage=BatchUsage(input_tokens=input_tokens, output_tokens=output_tokens,
                         total_tokens=input_tokens + output_tokens),
    )
