"""A tenant's records, newest first, a page at a time: one sorted set per tenant and kind of record (jobs, bulk
jobs), scored by creation time, trimmed as records expire. Shared by the job and bulk stores."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar, cast

import redis

from common.errors import InvalidRequest, JobNotFound

T = TypeVar("T")

MAX_PAGE = 100


@dataclass(frozen=True)
class Page(Generic[T]):
    data: list[T]
    next_cursor: str | None  # give it back as ?cursor= for the next page; None on the last page


def index_key(kind: str, tenant: str) -> str:
    """The tenant's index of `kind` records; a script that deletes a record takes it out of here."""
    return f"captioner:tenant:{tenant}:{kind}"


def add_to_index(
    pipe: redis.client.Pipeline, kind: str, tenant: str, record_id: str, *, created: float, ttl_s: int
) -> None:
    """Index a new record (in the caller's pipeline); entries older than the records' lifetime go."""
    key = index_key(kind, tenant)
    pipe.zadd(key, {record_id: created})
    pipe.zremrangebyscore(key, "-inf", created - ttl_s)
    pipe.expire(key, ttl_s)


def page(
    client: redis.Redis, kind: str, tenant: str, limit: int, cursor: str | None, *, load: Callable[[str], T]
) -> Page[T]:
    """Up to `limit` of the tenant's records after `cursor`, newest first, each read by `load(id)`; a record that
    expired since it was indexed (JobNotFound) is dropped from the index and the page."""
    ids, more = page_ids(client, kind, tenant, limit, cursor)
    found = []
    for record_id in ids:
        try:
            found.append(load(record_id))
        except JobNotFound:
            client.zrem(index_key(kind, tenant), record_id)
    return Page(found, ids[-1] if more and ids else None)


def page_ids(client: redis.Redis, kind: str, tenant: str, limit: int, cursor: str | None) -> tuple[list[str], bool]:
    """Up to `limit` ids after `cursor` (the last id of the page before), newest first, and whether more follow."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}.")
    key = index_key(kind, tenant)
    start = 0
    if cursor:
        rank = cast(int | None, client.zrevrank(key, cursor))
        if rank is None:
            raise InvalidRequest("The cursor is not one this list gave, or its record has expired; start again.")
        start = rank + 1
    ids = cast(list[str], client.zrevrange(key, start, start + limit))
    return ids[:limit], len(ids) > limit
