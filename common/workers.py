"""Workers' own reports of whether they can caption, kept in Redis for operators (and later the API) to read.

A worker reports `ready` once its model is loaded, and renews the report while it runs; a worker whose device
failed reports `not_ready` with the reason before it exits (worker/health.py). A report that is not renewed
expires: a worker that vanished without a word simply drops out of the list.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, cast

import redis

from common.redis_client import redis_client

WorkerState = Literal["ready", "not_ready"]
_PREFIX = "captioner:worker:"


def report_key(name: str) -> str:
    """Where a worker's report is: while it exists, the worker is alive (common/fairqueue.py reclaims the jobs of
    workers whose report expired)."""
    return _PREFIX + name


@dataclass(frozen=True)
class WorkerReport:
    name: str
    state: WorkerState
    reason: str | None
    at: float  # Unix time of the report


class WorkerRegistry:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    @classmethod
    def from_url(cls, url: str) -> WorkerRegistry:
        return cls(redis_client(url))

    def report(self, name: str, state: WorkerState, ttl_s: float, reason: str | None = None) -> None:
        key = report_key(name)
        with self._redis.pipeline() as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping={"state": state, "reason": reason or "", "at": repr(time.time())})
            pipe.expire(key, max(1, round(ttl_s)))
            pipe.execute()

    def get(self, name: str) -> WorkerReport | None:
        raw = cast(dict[str, str], self._redis.hgetall(report_key(name)))
        if not raw:
            return None
        return WorkerReport(name, cast(WorkerState, raw["state"]), raw["reason"] or None, float(raw["at"]))

    def all(self) -> list[WorkerReport]:
        names = sorted(str(key)[len(_PREFIX):] for key in self._redis.scan_iter(match=_PREFIX + "*"))
        return [report for name in names if (report := self.get(name)) is not None]
