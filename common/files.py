"""Files uploaded through the OpenAI-compatible Files API (purpose `batch`): the bytes in S3, the record in Redis,
both owned by the tenant that uploaded them; kept until deleted.

Layout:
- ``captioner:file:{id}``  hash: tenant, filename, purpose, bytes, created_at
- S3 ``files/{id}``        the content
- the tenant's index of files (common/listing.py), newest first
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import IO, cast

import redis
from pydantic import BaseModel

from common.errors import JobNotFound
from common.listing import Page, index_key, page
from common.storage import ObjectStorage

_INDEX = "files"


class FileObject(BaseModel):
    """A file as OpenAI's Files API describes one."""

    id: str
    object: str = "file"
    bytes: int
    created_at: int
    expires_at: int | None = None
    filename: str
    purpose: str
    status: str = "processed"
    status_details: str | None = None


def _record_key(file_id: str) -> str:
    return f"captioner:file:{file_id}"


def content_key(file_id: str) -> str:
    return f"files/{file_id}"


class FileNotFound(JobNotFound):
    """No such file for this caller: another tenant's answers as one that never existed."""


class FileStore:
    """Safe to share between threads."""

    def __init__(self, client: redis.Redis, storage: ObjectStorage) -> None:
        self._redis = client
        self._storage = storage

    def create(
        self, tenant: str, filename: str, purpose: str, data: bytes | IO[bytes], *, size: int | None = None,
        file_id: str | None = None,
    ) -> FileObject:
        """Store the content (bytes, or a stream of `size` bytes) first, then the record: a record never names content
        that is not there. A given `file_id` (a batch's output) is written over if it exists, so its writer may run
        twice."""
        file_id = file_id or "file-" + secrets.token_hex(12)
        now = time.time()
        if isinstance(data, bytes):
            self._storage.put(content_key(file_id), data, "application/jsonl")
            size = len(data)
        else:
            self._storage.put_stream(content_key(file_id), data, "application/jsonl")
        assert size is not None, "a stream's size is given"
        found = FileObject(id=file_id, bytes=size, created_at=int(now), filename=filename, purpose=purpose)
        pipe = self._redis.pipeline()
        pipe.hset(_record_key(file_id), mapping={"tenant": tenant, "filename": filename, "purpose": purpose,
                                                 "bytes": size, "created_at": int(now)})
        key = index_key(_INDEX, tenant)
        pipe.zadd(key, {file_id: now})
        pipe.execute()
        return found

    def get(self, file_id: str, *, tenant: str) -> FileObject:
        raw = cast(dict[str, str], self._redis.hgetall(_record_key(file_id)))
        if not raw or raw.get("tenant") != tenant:
            raise FileNotFound(f"No file with id {file_id!r}.")
        return FileObject(id=file_id, bytes=int(raw["bytes"]), created_at=int(raw["created_at"]),
                          filename=raw["filename"], purpose=raw["purpose"])

    def content(self, file_id: str, *, tenant: str) -> Iterator[bytes]:
        """The file's content in chunks: an output file may be larger than an answer should hold in memory."""
        self.get(file_id, tenant=tenant)
        return self._storage.stream(content_key(file_id))

    def page(self, tenant: str, limit: int, after: str | None) -> Page[FileObject]:
        """The tenant's files, newest first, a page at a time after the file `after`."""
        return page(self._redis, _INDEX, tenant, limit, after, load=lambda file_id: self.get(file_id, tenant=tenant))

    def delete(self, file_id: str, *, tenant: str) -> None:
        """The record first, then the content: a file is gone for its tenant as soon as the record is."""
        self.get(file_id, tenant=tenant)
        pipe = self._redis.pipeline()
        pipe.delete(_record_key(file_id))
        pipe.zrem(index_key(_INDEX, tenant), file_id)
        pipe.execute()
        self._storage.delete([content_key(file_id)])
