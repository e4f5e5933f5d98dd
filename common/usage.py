"""Usage per tenant and UTC day: jobs, images captioned and failed, new tokens generated and model time, with
interactive jobs and bulk runs apart.

Layout in Redis:
- ``captioner:usage:{tenant}:{YYYY-MM-DD}``  hash: "{lane}:{counter}" -> a whole number (model time in
                                             microseconds), expiring CAPTIONER_USAGE_RETENTION_DAYS after its day

Everything is counted by the step that records the work, in the same transaction or script, so nothing is counted
twice and counting costs no round trip of its own:
- a job or bulk run when it is created (JobStore.create, BulkStore.create): on the day it was created;
- an image when its first result is recorded (common/jobstore.py's record script: a task run twice records, and
  so counts, nothing the second time); a bulk chunk's images when the chunk's outcome is recorded, once
  (common/bulk_scripts.py COMPLETE_CHUNK): on the day they were recorded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal, cast

import redis
from pydantic import BaseModel, Field

from common.errors import InvalidRequest, ValidationFailed
from common.redis_client import redis_client

Lane = Literal["interactive", "bulk"]
LANES: tuple[Lane, ...] = ("interactive", "bulk")
_PREFIX = "captioner:usage:"
_DAY_S = 86_400
# How long a day's counts are kept, unless CAPTIONER_USAGE_RETENTION_DAYS says otherwise.
DEFAULT_RETENTION_DAYS = 400
# The longest range one report covers, and the default: the last 30 days, today included.
MAX_DAYS = 366
DEFAULT_DAYS = 30

# A Lua function for the scripts that record work: count it for a tenant's day, in one lane. Arguments: tenant,
# day (YYYY-MM-DD), when the day's counts expire (Unix time), lane, then the counts: images captioned, images
# failed, tokens generated, model microseconds.
COUNT_LUA = f"""
local function count_usage(tenant, day, expire_at, lane, captioned, failed, tokens, model_us)
  local key = '{_PREFIX}' .. tenant .. ':' .. day
  local counts = {{images_captioned = captioned, images_failed = failed, tokens_generated = tokens,
    model_us = model_us}}
  for _, name in ipairs({{'images_captioned', 'images_failed', 'tokens_generated', 'model_us'}}) do
    local n = tonumber(counts[name])
    if n ~= 0 then redis.call('HINCRBY', key, lane .. ':' .. name, n) end
  end
  redis.call('EXPIREAT', key, expire_at)
end
"""


def usage_key(tenant: str, day: str) -> str:
    return f"{_PREFIX}{tenant}:{day}"


@dataclass(frozen=True)
class UsageStamp:
    """The UTC day that work recorded at `now` counts on, and when that day's counts expire."""

    day: str
    expire_at: int

    @classmethod
    def at(cls, now: float, retention_days: int) -> UsageStamp:
        start = int(now // _DAY_S) * _DAY_S
        return cls(time.strftime("%Y-%m-%d", time.gmtime(start)), start + (retention_days + 1) * _DAY_S)


def count_job(pipe: redis.client.Pipeline, tenant: str, lane: Lane, now: float, retention_days: int) -> None:
    """Count a job (or bulk run) in the transaction that creates it."""
    when = UsageStamp.at(now, retention_days)
    key = usage_key(tenant, when.day)
    pipe.hincrby(key, f"{lane}:jobs", 1)
    pipe.expireat(key, when.expire_at)


@dataclass(frozen=True)
class ModelWork:
    """What the model did for an image (or a bulk chunk's images): the tokens it generated, and its time. A batch's
    time is divided evenly among the images it captioned (worker/jobs/batching.py)."""

    tokens_generated: int = 0
    model_seconds: float = 0.0

    def __add__(self, other: ModelWork) -> ModelWork:
        return ModelWork(self.tokens_generated + other.tokens_generated, self.model_seconds + other.model_seconds)

    @property
    def model_us(self) -> int:
        return round(self.model_seconds * 1_000_000)


class UsageCounts(BaseModel):
    """One lane's counts for a day or a range."""

    jobs: int = 0
    images_captioned: int = 0
    images_failed: int = 0
    tokens_generated: int = 0
    model_seconds: float = 0.0

    def __add__(self, other: UsageCounts) -> UsageCounts:
        return UsageCounts(
            jobs=self.jobs + other.jobs, images_captioned=self.images_captioned + other.images_captioned,
            images_failed=self.images_failed + other.images_failed,
            tokens_generated=self.tokens_generated + other.tokens_generated,
            model_seconds=round(self.model_seconds + other.model_seconds, 6),
        )

    def is_empty(self) -> bool:
        return self == UsageCounts()


class LaneCounts(BaseModel):
    """Counts of interactive jobs and of bulk runs, apart."""

    interactive: UsageCounts = Field(default_factory=UsageCounts)
    bulk: UsageCounts = Field(default_factory=UsageCounts)


class DailyUsage(BaseModel):
    date: date
    interactive: UsageCounts = Field(default_factory=UsageCounts)
    bulk: UsageCounts = Field(default_factory=UsageCounts)


class UsageReport(BaseModel):
    """What GET /v1/usage answers: a tenant's usage for each UTC day from `start` to `end`, both included (days
    without usage show zeros), and the range's total."""

    tenant: str
    start: date
    end: date
    data: list[DailyUsage]
    total: LaneCounts


def parse_range(start: str | None, end: str | None, today: date | None = None) -> tuple[date, date]:
    """The range a report covers: `end` defaults to today (UTC), `start` to the 30 days ending at `end`.
    InvalidRequest for a date that is not YYYY-MM-DD; ValidationFailed for a range that ends before it starts or
    spans more than MAX_DAYS days."""
    last = _date("end", end) if end else (today or datetime.now(UTC).date())
    first = _date("start", start) if start else last - timedelta(days=DEFAULT_DAYS - 1)
    if last < first:
        raise ValidationFailed(f"end ({last}) is before start ({first}).")
    if (last - first).days + 1 > MAX_DAYS:
        raise ValidationFailed(f"The range covers {(last - first).days + 1} days; at most {MAX_DAYS} at a time.")
    return first, last


def _date(name: str, raw: str) -> date:
    try:
        if len(raw) != 10:
            raise ValueError(raw)
        return date.fromisoformat(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a date as YYYY-MM-DD, not {raw!r}.") from None


class UsageStore:
    """Reads the counts (the stores' scripts write them). Safe to share between threads."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    @classmethod
    def from_url(cls, url: str) -> UsageStore:
        return cls(redis_client(url))

    def report(self, tenant: str, start: date, end: date) -> UsageReport:
        """The tenant's usage on each day from start to end (both included), in one round trip."""
        days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
        pipe = self._redis.pipeline(transaction=False)
        for day in days:
            pipe.hgetall(usage_key(tenant, day.isoformat()))
        data = [DailyUsage(date=day, **_lanes(raw))
                for day, raw in zip(days, cast(list[dict[str, str]], pipe.execute()), strict=True)]
        total = LaneCounts()
        for daily in data:
            total = LaneCounts(interactive=total.interactive + daily.interactive, bulk=total.bulk + daily.bulk)
        return UsageReport(tenant=tenant, start=start, end=end, data=data, total=total)


def _lanes(raw: dict[str, str]) -> dict[str, Any]:
    """A day's hash as counts by lane."""
    lanes: dict[str, dict[str, Any]] = {lane: {} for lane in LANES}
    for field, value in raw.items():
        lane, _, name = field.partition(":")
        if lane not in lanes:
            continue
        if name == "model_us":
            lanes[lane]["model_seconds"] = int(value) / 1_000_000
        else:
            lanes[lane][name] = int(value)
    return {lane: UsageCounts(**counts) for lane, counts in lanes.items()}
