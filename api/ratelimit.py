"""Per-key request rate limits, with Flask-Limiter on the service's Redis: one budget per key for all of its /v1
requests, `429 rate_limited` with `Retry-After` past it, and `RateLimit-*` headers on every limited answer."""

from __future__ import annotations

from flask import Flask, g, request
from flask_limiter import HeaderNames, Limiter

from common.settings import Settings

_HEADERS = {
    HeaderNames.LIMIT: "RateLimit-Limit",
    HeaderNames.REMAINING: "RateLimit-Remaining",
    HeaderNames.RESET: "RateLimit-Reset",
    HeaderNames.RETRY_AFTER: "Retry-After",
}


def init_app(app: Flask, settings: Settings) -> Limiter:
    """Limit every /v1 request by its caller's key (after api/auth.py has found it: initialise that first)."""

    def owner() -> str:
        found = g.get("caller")
        return found.owner if found is not None else "anonymous"

    def limit() -> str:
        found = g.get("caller")
        own = found.limits.rate_limit if found is not None else None
        return own or settings.default_rate_limit

    limiter = Limiter(
        key_func=owner,
        application_limits=[limit],
        application_limits_exempt_when=lambda: not request.path.startswith("/v1/"),
        headers_enabled=True,
        header_name_mapping=_HEADERS,
        storage_uri=settings.redis_url,
        strategy="sliding-window-counter",
        key_prefix="captioner:ratelimit",
        # Redis away: the request goes on, and meets the job store's own 503 if it needs Redis.
        swallow_errors=True,
    )
    limiter.init_app(app)
    return limiter
