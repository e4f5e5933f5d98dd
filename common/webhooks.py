"""Webhook deliveries in Redis: durable, leased, retried on a schedule, visible to the API.

Layout, per (job, event):
- ``captioner:webhook:{job}:{event}``           hash: id (the stable webhook-id), url, state, attempts, body,
                                                 tenant (whose secret signs it)
- ``captioner:webhook:{job}:{event}:attempts``  list: one WebhookAttempt JSON per try
- ``captioner:webhooks:due``                    sorted set: "{job}|{event}" scored by when it is due

A delivery is created by the same Lua script that moves its job (see EMIT_LUA and common/jobstore.py), so a
worker that dies right after finishing a job cannot lose the event, and a job cannot emit an event twice.
A dispatcher claims due deliveries with a lease (their score moves past the lease), so a dispatcher that
dies mid-delivery only delays it: another one claims it when the lease runs out, under the same webhook-id.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from typing import Any, cast

import redis

from common.redis_client import redis_client
from common.schemas import DeliveryState, WebhookAttempt, WebhookDelivery, WebhookEvent
from common.settings import Settings

DUE_KEY = "captioner:webhooks:due"
_PREFIX = "captioner:webhook:"

# A Lua function for the job scripts: create the delivery of `event` if the job subscribed to it.
# Expects `job_key`, `job_id`, `now` and `ttl` locals in the including script.
EMIT_LUA = f"""
local function emit(event)
  local events = redis.call('HGET', job_key, 'webhook_events')
  if (not events) or (not string.find(' ' .. events .. ' ', ' ' .. event .. ' ', 1, true)) then return end
  local key = '{_PREFIX}' .. job_id .. ':' .. event
  if redis.call('EXISTS', key) == 1 then return end
  redis.call('HSET', key, 'id', 'msg_' .. job_id .. '_' .. event, 'job_id', job_id, 'event', event,
    'url', redis.call('HGET', job_key, 'webhook_url'), 'state', 'pending', 'attempts', 0,
    'created_at', now, 'next_attempt_at', now, 'tenant', redis.call('HGET', job_key, 'tenant') or '')
  redis.call('EXPIRE', key, ttl)
  redis.call('ZADD', '{DUE_KEY}', now, job_id .. '|' .. event)
end
"""

# For a script that deletes a job: its deliveries, their attempts and any retry still due. Expects a `job_id` local.
FORGET_DELIVERIES_LUA = f"""
for _, event in ipairs({{{', '.join(repr(str(e)) for e in WebhookEvent if e.value.startswith('job.'))}}}) do
  local key = '{_PREFIX}' .. job_id .. ':' .. event
  redis.call('DEL', key, key .. ':attempts')
  redis.call('ZREM', '{DUE_KEY}', job_id .. '|' .. event)
end
"""

# KEYS: due. ARGV: now, lease seconds, limit. Claims due members (here deliveries) by pushing their score past the
# lease: the holder has them until then, and they come back to anyone if it dies.
CLAIM_DUE_LUA = """
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(members) do
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), member)
end
return members
"""

# KEYS: delivery, attempts, due. ARGV: member, attempt JSON, new state, next attempt time or '', ttl.
_RECORD_ATTEMPT = """
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'next_attempt_at', ARGV[4])
if ARGV[3] == 'pending' then
  redis.call('ZADD', KEYS[3], tonumber(ARGV[4]), ARGV[1])
else
  redis.call('ZREM', KEYS[3], ARGV[1])
end
return 1
"""

# KEYS: delivery, due. ARGV: member, now. Sends a finished delivery again, same id, with a fresh budget.
_REDELIVER = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return '' end
if state ~= 'pending' then
  redis.call('HSET', KEYS[1], 'state', 'pending', 'attempts', 0, 'next_attempt_at', ARGV[2])
  redis.call('ZADD', KEYS[2], tonumber(ARGV[2]), ARGV[1])
end
return 'pending'
"""


def delivery_key(job_id: str, event: WebhookEvent | str) -> str:
    return f"{_PREFIX}{job_id}:{event}"


def _time(raw: str | None) -> datetime | None:
    return datetime.fromtimestamp(float(raw), tz=UTC) if raw else None


class RetrySchedule:
    """Exponential backoff with jitter: first, 4x, 16x ... capped, within a number of attempts."""

    def __init__(self, max_attempts: int, first_delay_s: float, max_delay_s: float, jitter: float = 0.2) -> None:
        self.max_attempts = max_attempts
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.jitter = jitter

    @classmethod
    def from_settings(cls, settings: Settings) -> RetrySchedule:
        return cls(settings.webhook_max_attempts, settings.webhook_first_retry_seconds,
                   settings.webhook_max_retry_seconds)

    def delay_after(self, attempts_made: int, rng: random.Random | None = None) -> float | None:
        """Seconds until the next attempt, or None when the budget is used up."""
        if attempts_made >= self.max_attempts:
            return None
        base = min(self.first_delay_s * 4.0 ** (attempts_made - 1), self.max_delay_s)
        spread: float = (rng or random).uniform(-self.jitter, self.jitter)
        return base * (1 + spread)


class DeliveryStore:
    """Deliveries of webhook events. Safe to share between threads."""

    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self._redis = client
        self._ttl = ttl_seconds
        self._claim = client.register_script(CLAIM_DUE_LUA)
        self._record_attempt = client.register_script(_RECORD_ATTEMPT)
        self._redeliver = client.register_script(_REDELIVER)

    @classmethod
    def from_url(cls, url: str, ttl_seconds: int) -> DeliveryStore:
        return cls(redis_client(url), ttl_seconds)

    def claim_due(self, limit: int, lease_s: float) -> list[tuple[str, WebhookEvent]]:
        """Take up to `limit` due deliveries for `lease_s` seconds."""
        members = cast(list[str], self._claim(keys=[DUE_KEY], args=[repr(time.time()), lease_s, limit]))
        claimed = []
        for member in members:
            job_id, event = member.split("|", 1)
            claimed.append((job_id, WebhookEvent(event)))
        return claimed

    def record(self, job_id: str, event: WebhookEvent) -> dict[str, str]:
        """The raw delivery hash ({} if it expired)."""
        return cast(dict[str, str], self._redis.hgetall(delivery_key(job_id, event)))

    def store_body_once(self, job_id: str, event: WebhookEvent, body: str) -> str:
        """Keep the first body built for a delivery, so every retry sends the same payload."""
        key = delivery_key(job_id, event)
        self._redis.hsetnx(key, "body", body)
        return cast(str, self._redis.hget(key, "body"))

    def record_attempt(
        self, job_id: str, event: WebhookEvent, attempt: WebhookAttempt, state: DeliveryState
    ) -> None:
        key = delivery_key(job_id, event)
        next_at = attempt.next_attempt_at.timestamp() if attempt.next_attempt_at else ""
        self._record_attempt(
            keys=[key, f"{key}:attempts", DUE_KEY],
            args=[f"{job_id}|{event}", attempt.model_dump_json(), state.value, repr(next_at) if next_at else "",
                  self._ttl],
        )

    def drop(self, job_id: str, event: WebhookEvent) -> None:
        """Forget a due entry whose delivery has expired."""
        self._redis.zrem(DUE_KEY, f"{job_id}|{event}")

    def list_for_job(self, job_id: str) -> list[WebhookDelivery]:
        """Every delivery of a job's events, in event order, with their attempts."""
        pipe = self._redis.pipeline(transaction=False)
        for event in WebhookEvent:
            pipe.hgetall(delivery_key(job_id, event))
            pipe.lrange(f"{delivery_key(job_id, event)}:attempts", 0, -1)
        replies: list[Any] = pipe.execute()
        deliveries = []
        for record, attempts in zip(replies[::2], replies[1::2], strict=True):
            if not record:
                continue
            deliveries.append(WebhookDelivery(
                id=record["id"], event=WebhookEvent(record["event"]), url=record["url"],
                state=DeliveryState(record["state"]), created_at=cast(datetime, _time(record["created_at"])),
                next_attempt_at=_time(record.get("next_attempt_at")),
                attempts=[WebhookAttempt.model_validate_json(a) for a in attempts],
            ))
        return deliveries

    def redeliver(self, job_id: str, event: WebhookEvent) -> bool:
        """Schedule an event again under its webhook-id; False if the job never had that delivery."""
        key = delivery_key(job_id, event)
        return bool(self._redeliver(keys=[key, DUE_KEY], args=[f"{job_id}|{event}", repr(time.time())]))
