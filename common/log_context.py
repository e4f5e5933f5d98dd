"""What a log line concerns: the request, job, tenant, bulk run, batch and worker, bound where the work enters a process
and added to every record logged under it, so the code's plain `logging.getLogger(__name__)` calls carry them.

Context variables, not thread-locals: a Flask request, a Celery task, a bulk chunk and a batch each bind theirs on the
thread that runs them, and whatever that thread logs meanwhile carries them. Standard library only: the batcher, which
runs where only torch, transformers and Pillow are (bench/), binds a batch's fields too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar, Token

# The fields, in the order a plain line shows them. `job_ids`/`bulk_ids`: the jobs and bulk runs whose images a batch
# holds, on the batch's own lines (a list, left out when longer than BATCH_IDS_LISTED).
FIELDS = ("request_id", "tenant", "job_id", "bulk_id", "batch_id", "job_ids", "bulk_ids", "worker")
# A batch of 256 single-image jobs would make every batch line a few kilobytes: past this, only the batch id.
BATCH_IDS_LISTED = 16

Value = str | list[str]
_bound: ContextVar[Mapping[str, Value]] = ContextVar("captioner_log_context", default={})  # noqa: B039 - never mutated
# Fields of the whole process (the worker's name), on every line it logs.
_process: dict[str, Value] = {}


def current() -> Mapping[str, Value]:
    """The fields bound here now."""
    return _bound.get()


def bind(**fields: Value | None) -> Token[Mapping[str, Value]]:
    """Add fields to this context (None leaves a field as it is); `reset` the token to undo it."""
    return _bound.set({**_bound.get(), **{k: v for k, v in fields.items() if v is not None}})


def reset(token: Token[Mapping[str, Value]]) -> None:
    _bound.reset(token)


@contextmanager
def bound(**fields: Value | None) -> Iterator[None]:
    """These fields on every line logged in the block, on this thread (and on what it starts with the context)."""
    token = bind(**fields)
    try:
        yield
    finally:
        _bound.reset(token)


def set_process_fields(**fields: str) -> None:
    """Fields of every line this process logs, such as the worker's name."""
    _process.update(fields)


def batch_fields(batch_id: str, members: Sequence[Mapping[str, Value]]) -> dict[str, Value]:
    """A batch's fields from the contexts its items were submitted in: its id, and the jobs and bulk runs its images
    belong to, while they are few enough to list."""
    fields: dict[str, Value] = {"batch_id": batch_id}
    for single, plural in (("job_id", "job_ids"), ("bulk_id", "bulk_ids")):
        ids = sorted({str(m[single]) for m in members if single in m})
        if 0 < len(ids) <= BATCH_IDS_LISTED:
            fields[plural] = ids
    return fields


class ContextFilter(logging.Filter):
    """Adds the bound fields to each record it sees (on the handler, so third-party loggers' records get them too); a
    field the call gave itself (`extra=`) is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        for fields in (_bound.get(), _process):
            for name, value in fields.items():
                if not hasattr(record, name):
                    setattr(record, name, value)
        return True
