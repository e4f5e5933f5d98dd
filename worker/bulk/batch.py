"""A batch (OpenAI's Batch API, common/batches.py) on the bulk lane: its planning step validates the input file and
queues chunks of its lines, a bounded window at a time; a chunk captions its lines in the background lane and writes
their output and error lines in one file each; the final step joins them into the batch's output and error files.

Every line ends in exactly one of the two files, once: a chunk's files are written whole under its index and
recorded once (common/bulkstore.py), the final step's files have ids fixed by the batch, and when a batch ends early
(cancelled, expired, failed) the final step lists each line no chunk answered in the error file.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from common.batch_input import BatchLine, BatchLineError, BatchLineFailed, InputValidator, parse_line
from common.batches import BatchChunk, BatchChunkFiles, BatchRecord, BatchStore, line_ids, output_file_id
from common.bulk_schemas import BulkStatus
from common.bulkstore import WorkItem
from common.files import FileNotFound, FileStore, content_key
from common.image_strings import RemoteImage
from common.openai_answers import Captioned, chat_completion, openai_error, response_object
from common.openai_requests import ResponseRequest
from common.outbound import OutboundPolicy, fetch_bytes
from common.settings import Settings
from common.storage import ObjectStorage
from common.usage import ModelWork
from worker.bulk.careful import Careful
from worker.bulk.chunks import ChunkDeps, start_captions, wait_caption
from worker.bulk.planner import JobEnded, Lease, LeaseLost
from worker.jobs.batches import BatchKey

log = logging.getLogger(__name__)

# A request that failed with one of these failed on the service's side (its image crashed the model, or a worker):
# status 500, as OpenAI answers a server error; any other failure is the request's own (400).
_SERVER_FAILURES = ("inference_failed", "internal_error", "image_killed_workers")
# How a line no chunk answered is listed in the error file, by the code the batch ended with (none: cancelled).
_UNANSWERED = {
    "batch_expired": ("batch_expired", "The batch expired before this request ran."),
    "bulk_failed": ("batch_failed", "The batch failed before this request ran; see its errors."),
    None: ("batch_cancelled", "The batch was cancelled before this request ran."),
}


@dataclass(frozen=True)
class BatchDeps:
    batches: BatchStore
    files: FileStore
    storage: ObjectStorage  # the service's bucket: input files, chunks' output, the batch's files
    chunks: ChunkDeps
    settings: Settings
    chunk_size: int


class BatchWork:
    """Runs a batch's work items (plan, chunk, final) for the bulk lane's runner."""

    def __init__(self, deps: BatchDeps) -> None:
        self._deps = deps
        self._store = deps.chunks.store
        self._policy = OutboundPolicy.from_settings(deps.settings)

    def run(self, item: WorkItem, lease: Lease, careful: Careful | None = None) -> None:
        """Run one of a batch's work items; a chunk carefully when given how (worker/bulk/careful.py)."""
        record = self._deps.batches.record(item.bulk_id)
        if record is None:
            self._store.drop(item)
            return
        if item.kind != "final" and not record.status.is_terminal() and record.expired(time.time()):
            self._deps.batches.expire(item.bulk_id)  # its final step writes what it finished
            self._store.drop(item)
            return
        if item.kind == "plan":
            self._plan(record, item, lease)
        elif item.kind == "chunk":
            raw = self._store.raw_chunk(item.bulk_id, item.chunk)
            if raw is None or record.status.is_terminal():
                self._store.drop(item)
                return
            files, work = self._run_chunk(record, BatchChunk.model_validate_json(raw), lease, careful)
            self._store.complete_chunk(item.bulk_id, files, files.captioned + files.failed, work)
        elif item.kind == "final":
            self._finish(record)
            self._store.drop(item)
        else:
            log.error("unknown batch work item %s", item)
            self._store.drop(item)

    # Planning: validate the file once, then queue its chunks a window at a time.

    def _plan(self, record: BatchRecord, item: WorkItem, lease: Lease) -> None:
        if record.status.is_terminal():
            self._store.drop(item)
            return
        if not record.validated:
            if not self._validate(record, lease):
                self._store.drop(item)
                return
            found = self._deps.batches.record(record.batch_id)
            if found is None:
                raise JobEnded("gone")
            record = found
        room = self._store.window - (record.n_chunks - record.n_chunks_done)
        index = record.n_chunks
        while index < len(record.chunk_starts) and room > 0:
            requests = min(self._deps.chunk_size, record.total - index * self._deps.chunk_size)
            added = self._store.add_raw_chunk(
                record.batch_id, index, record.chunk(index).model_dump_json(), str(index), requests)
            if added == 0:
                raise LeaseLost(f"chunk {index} of {record.batch_id} was queued by another planning step")
            if added < 0:
                raise JobEnded("gone or ended")
            index, room = index + 1, room - 1
            lease.keep()
        self._store.end_plan_step(record.batch_id, lease.token, listing_done=index >= len(record.chunk_starts))

    def _validate(self, record: BatchRecord, lease: Lease) -> bool:
        """Check every line as its synchronous endpoint would; record where chunks start, or fail the batch."""
        file_id = record.request.input_file_id
        try:
            size = self._deps.files.get(file_id, tenant=record.tenant).bytes
        except FileNotFound:
            self._deps.batches.fail_validation(record.batch_id, [BatchLineError(
                code="invalid_input_file", message=f"The input file {file_id!r} no longer exists.")])
            return False
        validator = InputValidator(record.request.endpoint, self._deps.settings)
        starts: list[tuple[int, int]] = []
        for number, (offset, raw) in enumerate(self._deps.storage.lines(content_key(file_id)), start=1):
            # A chunk starts at every chunk_size-th request: the first, then the (chunk_size + 1)-th, ...
            if validator.check(raw, number) and (validator.requests - 1) % self._deps.chunk_size == 0:
                starts.append((offset, number))
            if validator.full:
                break
            if number % 200 == 0:
                lease.keep()
        errors = validator.finish()
        if errors:
            self._deps.batches.fail_validation(record.batch_id, errors)
            return False
        self._deps.batches.validated(record.batch_id, validator.requests, starts, size)
        log.info("batch %s: %d requests in %d chunks", record.batch_id, validator.requests, len(starts))
        return True

    # A chunk: its lines captioned, their answers written.

    def _run_chunk(
        self, record: BatchRecord, chunk: BatchChunk, lease: Lease, careful: Careful | None
    ) -> tuple[BatchChunkFiles, ModelWork]:
        batch_id, index = record.batch_id, lease.item.chunk
        lines = list(self._lines(record, chunk))
        parsed: list[BatchLine | BatchLineFailed] = []
        for number, raw in lines:
            try:
                parsed.append(parse_line(raw, number, record.request.endpoint, self._deps.settings))
            except BatchLineFailed as exc:  # the settings changed since validation: this line alone fails
                parsed.append(exc)
        asked = [line for line in parsed if isinstance(line, BatchLine)]
        futures = dict(zip(
            (line.line for line in asked),
            start_captions([(str(line.line), functools.partial(self._read, line), _key(line)) for line in asked],
                           lease, self._deps.chunks, careful),
            strict=True,
        ))
        output: list[str] = []
        errors: list[str] = []
        work = ModelWork()
        input_tokens = output_tokens = 0
        for numbered, line in zip(lines, parsed, strict=True):
            if isinstance(line, BatchLineFailed):
                failed = openai_error(line.error.code, line.error.message, 400, line.error.param)
                errors.append(_file_line(batch_id, numbered[0], _custom_id(numbered[1]), 400, {"error": failed}))
                continue
            caption, error = wait_caption(futures[line.line], lease, (len(output), len(errors), 0))
            if caption is None:
                failure = error.code if error else "internal_error"
                status = 500 if failure in _SERVER_FAILURES else 400
                errors.append(_file_line(batch_id, line.line, line.custom_id, status, {"error": openai_error(
                    failure, error.message if error else "The image failed for an unknown reason.", status, None)}))
                continue
            work += ModelWork(caption.new_tokens, futures[line.line].model_s)
            captioned = Captioned(
                job_id=line_ids(batch_id, line.line), created=int(time.time()), caption=caption.text,
                prompt_tokens=line.asked.prompt_tokens, completion_tokens=caption.new_tokens,
                truncated=caption.new_tokens >= line.asked.options.max_new_tokens)
            input_tokens, output_tokens = input_tokens + captioned.prompt_tokens, output_tokens + caption.new_tokens
            if isinstance(line.request, ResponseRequest):
                body = response_object(captioned, record.model, line.request)
            else:
                body = chat_completion(captioned, record.model)
            output.append(_file_line(batch_id, line.line, line.custom_id, 200, body))
        lease.keep(force=True)  # the batch may have been cancelled meanwhile: then write nothing
        files = BatchChunkFiles(
            index=index, first_key=str(lines[0][0]), last_key=str(lines[-1][0]),
            results_key=_part_key(batch_id, "output", index) if output else None,
            errors_key=_part_key(batch_id, "error", index) if errors else None,
            captioned=len(output), failed=len(errors), skipped=0,
            input_tokens=input_tokens, output_tokens=output_tokens,
        )
        for key, part in ((files.results_key, output), (files.errors_key, errors)):
            if key:
                self._deps.storage.put(key, "".join(part).encode(), "application/jsonl")
        return files, work

    def _lines(self, record: BatchRecord, chunk: BatchChunk) -> Iterator[tuple[int, bytes]]:
        """The chunk's lines that hold something, numbered as in the file."""
        key = content_key(record.request.input_file_id)
        for number, (_, raw) in enumerate(self._deps.storage.lines(key, chunk.start, chunk.end), start=chunk.line):
            if raw.strip():
                yield number, raw

    def _read(self, line: BatchLine) -> bytes:
        """The line's image: its data: URI's bytes, or fetched from its URL (on the fetch pool)."""
        image = line.asked.image
        if isinstance(image, RemoteImage):
            settings = self._deps.settings
            return fetch_bytes(image.url, settings.max_image_bytes, settings.fetch_timeout_seconds, self._policy)
        return image.data

    # The final step: the batch's output and error files.

    def _finish(self, record: BatchRecord) -> None:
        batches, batch_id = self._deps.batches, record.batch_id
        batches.finalizing(batch_id)
        while True:  # a chunk that passed its last lease check as the batch was cancelled may still record itself
            done = self._store.chunk_files(batch_id, BatchChunkFiles)
            output = b"".join(self._part(f.results_key) for f in done if f.results_key)
            errors = b"".join(self._part(f.errors_key) for f in done if f.errors_key)
            if record.status.is_terminal():
                errors += self._unanswered(record, {f.index for f in done})
            ids = [self._file(record, "output", output), self._file(record, "error", errors)]
            if len(self._store.chunk_files(batch_id, BatchChunkFiles)) == len(done):
                break
        batches.finalized(batch_id, ids[0], ids[1])
        if not record.status.is_terminal():
            self._store.end(batch_id, BulkStatus.SUCCEEDED, None, final_step=False)
        log.info("batch %s: %d lines answered, output %s, errors %s", batch_id,
                 sum(f.captioned for f in done), ids[0], ids[1])

    def _part(self, key: str) -> bytes:
        return self._deps.storage.get(key, max_bytes=self._deps.settings.max_file_bytes * 4)

    def _unanswered(self, record: BatchRecord, done: set[int]) -> bytes:
        """An error line for each request of the chunks that never finished, in the file's order."""
        code, message = _UNANSWERED.get(record.ended_by, _UNANSWERED[None])
        lines = []
        for index in range(len(record.chunk_starts)):
            if index in done:
                continue
            for number, raw in self._lines(record, record.chunk(index)):
                lines.append(_file_line(record.batch_id, number, _custom_id(raw), None,
                                        error={"code": code, "message": message}))
        return "".join(lines).encode()

    def _file(self, record: BatchRecord, which: Literal["output", "error"], content: bytes) -> str | None:
        if not content:
            return None
        file_id = output_file_id(record.batch_id, which)
        self._deps.files.create(record.tenant, f"{record.batch_id}_{which}.jsonl", "batch_output", content,
                                file_id=file_id)
        return file_id


def _key(line: BatchLine) -> BatchKey:
    return BatchKey.of(line.asked.prompt, line.asked.options.model_dump())


def _part_key(batch_id: str, which: str, index: int) -> str:
    return f"batches/{batch_id}/{which}/{index:06d}.jsonl"


def _file_line(
    batch_id: str, number: int, custom_id: str | None, status: int | None, body: dict[str, Any] | None = None, *,
    error: dict[str, str] | None = None,
) -> str:
    """A line of the output or error file, as OpenAI's Batch API writes one: the request's response (`status` and
    `body`), or none and the batch's own `error` (a request the batch never ran)."""
    ids = line_ids(batch_id, number)
    response = None if status is None else {"status_code": status, "request_id": f"req_{ids}", "body": body}
    return json.dumps({"id": f"batch_req_{ids}", "custom_id": custom_id, "response": response, "error": error}) + "\n"


def _custom_id(raw: bytes) -> str | None:
    """A validated line's custom_id (validation checked it is there)."""
    try:
        found = json.loads(raw).get("custom_id")
    except (ValueError, AttributeError, RecursionError):
        return None
    return found if isinstance(found, str) else None
