"""Idempotency keys for submissions (POST /v1/jobs, POST /v1/bulk), with the semantics Stripe documents: the same
key and the same request from the same tenant give the original job again; the same key with another request is
refused; of two concurrent requests with one key, one creates the job and the other answers with it.

One Redis string per (tenant, key), ``captioner:idempotency:{tenant}:{key}``, holding "pending|fingerprint" while
the first request runs and "done|fingerprint|status|id" once it has answered; it expires after
CAPTIONER_IDEMPOTENCY_TTL_SECONDS (a "pending" one sooner: PENDING_TTL_S). Keys of different tenants live apart, so
they never collide.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import cast

import redis

from common.errors import IdempotencyKeyInUse, IdempotencyKeyReused
from common.redis_client import redis_client

_PREFIX = "captioner:idempotency:"
# How long a repeat waits for the first request with its key to answer before it is told to come back.
WAIT_FOR_FIRST_S = 10.0
# How long a key stays claimed by a first request that never answered (its API process died, or Redis went away
# before the request could give the key up): longer than any submission takes, ?wait=30 included.
PENDING_TTL_S = 300
_POLL_S = 0.05


@dataclass(frozen=True)
class Replay:
    """The answer the first request with a key gave: its job (or bulk job) id and its status code."""

    record_id: str
    status_code: int


class IdempotencyStore:
    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self._redis = client
        self._ttl_s = ttl_s

    @classmethod
    def from_url(cls, url: str, ttl_s: int) -> IdempotencyStore:
        return cls(redis_client(url), ttl_s)

    def begin(self, tenant: str, key: str, fingerprint: str) -> Replay | None:
        """None: this request is the first with the key, and goes on (then `complete` or `abandon`). A Replay:
        the first one answered already, with the same request. IdempotencyKeyReused for another request;
        IdempotencyKeyInUse when the first is still running after WAIT_FOR_FIRST_S."""
        name, pending_s = _name(tenant, key), min(self._ttl_s, PENDING_TTL_S)
        if self._redis.set(name, f"pending|{fingerprint}", nx=True, ex=pending_s):
            return None
        deadline = time.monotonic() + WAIT_FOR_FIRST_S
        while True:
            value = cast(str | None, self._redis.get(name))
            if value is None:  # the first request failed and gave the key up: this one takes it
                if self._redis.set(name, f"pending|{fingerprint}", nx=True, ex=pending_s):
                    return None
                continue
            state, stored, *answer = value.split("|")
            if stored != fingerprint:
                raise IdempotencyKeyReused(
                    "This Idempotency-Key was used with another request; use a new key for a new request."
                )
            if state == "done":
                status_code, record_id = answer
                return Replay(record_id, int(status_code))
            if time.monotonic() >= deadline:
                raise IdempotencyKeyInUse("A request with this Idempotency-Key is still running; try again shortly.")
            time.sleep(_POLL_S)

    def complete(self, tenant: str, key: str, fingerprint: str, record_id: str, status_code: int) -> None:
        """Record the first request's answer, for repeats to give again."""
        self._redis.set(_name(tenant, key), f"done|{fingerprint}|{status_code}|{record_id}", ex=self._ttl_s)

    def abandon(self, tenant: str, key: str) -> None:
        """The first request failed before it made anything: the key is free for a retry."""
        self._redis.delete(_name(tenant, key))


def _name(tenant: str, key: str) -> str:
    return f"{_PREFIX}{tenant}:{key}"
