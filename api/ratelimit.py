"""Per-key request rate limits, with the `limits` package on the service's Redis: one sliding-window budget per
key for all of its /v1 requests, `429 rate_limited` past it, with `Retry-After` and `RateLimit-*` headers.

`limits` directly rather than Flask-Limiter around it: a request costs one Redis round trip (the hit) and no
per-request resolution of route and blueprint limits. The window's state is read only on a refusal, for its
headers; sending them on every answer would cost every request a second round trip.
"""

from __future__ import annotations

import time
from functools import cache
from typing import Any
from urllib.parse import quote

from flask import Flask, g, request
from limits import RateLimitItem, parse
from limits.storage import RedisSentinelStorage, StorageTypes, storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter
from redis.exceptions import RedisError

from common.errors import RateLimited
from common.redis_client import primary_credentials
from common.settings import Settings

_NAMESPACE = "captioner-ratelimit"


@cache
def _rate(text: str) -> RateLimitItem:
    return parse(text)


def init_app(app: Flask, settings: Settings) -> None:
    """Check every /v1 request against its caller's budget (after api/auth.py found the caller: register that
    first)."""
    limiter = SlidingWindowCounterRateLimiter(_storage(settings))

    def check() -> None:
        found = g.get("caller")
        if found is None or not request.path.startswith("/v1/"):
            return
        rate = _rate(found.limits.rate_limit or settings.default_rate_limit)
        try:
            if limiter.hit(rate, _NAMESPACE, found.owner):
                return
            window = limiter.get_window_stats(rate, _NAMESPACE, found.owner)
        except RedisError:
            return  # Redis away: the request meets the job store's own 503 if it needs Redis
        wait_s = max(1, int(window.reset_time - time.time() + 0.999))
        raise RateLimited(
            f"Too many requests: this key may make {rate}.", retry_after_s=wait_s,
            headers={"RateLimit-Limit": str(rate.amount), "RateLimit-Remaining": str(window.remaining),
                     "RateLimit-Reset": str(int(window.reset_time))},
        )

    app.before_request(check)


def _storage(settings: Settings) -> StorageTypes:
    """`limits`' storage on the service's Redis: at REDIS_URL, or the primary the sentinels name."""
    timeout = settings.redis_timeout_seconds  # the stores' own bound (common/redis_client.py)
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    sentinels = settings.sentinel_addresses
    if not sentinels:
        return storage_from_string(settings.redis_url, **options)
    locations = ",".join(f"{host}:{port}" for host, port in sentinels)
    # `limits` sends the sentinels the primary's user name and password too unless told they have none, as
    # common/redis_client.py asks them; the limiter reads what it writes, so from the primary.
    no_auth: dict[str, Any] = {"username": None, "password": None}
    return RedisSentinelStorage(
        f"redis+sentinel://{locations}/{quote(settings.redis_sentinel_master, safe='')}", use_replicas=False,
        sentinel_kwargs=no_auth | options, **primary_credentials(settings.redis_url), **options)
