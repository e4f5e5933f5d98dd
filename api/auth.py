"""Who is calling: every /v1 request is resolved to its key and tenant once, here, before any view runs.

A missing, malformed, unknown or revoked key is refused (401), and so is a key in the URL, where logs and
browser histories would keep it. In the open mode (CAPTIONER_AUTH=off) every request is the built-in tenant.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, g, request
from redis.exceptions import RedisError

from api.request_ids import bind_tenant
from api.services import services
from common.errors import ServiceUnavailable, Unauthorized
from common.schemas import LOCAL_TENANT
from common.tenants import KEY_PREFIX, ApiKey, KeyLimits

# Query parameters that would carry a key; refused whatever their value.
_KEY_PARAMETERS = frozenset({"key", "api_key", "apikey", "access_token", "token", "authorization"})
# The open mode's one tenant may use any bulk bucket the server allows (CAPTIONER_BULK_BUCKETS).
_OPEN_LIMITS = KeyLimits(bulk_buckets=("*",))


@dataclass(frozen=True)
class Caller:
    tenant: str
    key: ApiKey | None  # None in the open mode

    @property
    def limits(self) -> KeyLimits:
        return self.key.limits if self.key is not None else _OPEN_LIMITS

    @property
    def owner(self) -> str:
        """Whose limits a request counts against: its key (the open mode's: its one tenant)."""
        return self.key.key_id if self.key is not None else self.tenant


def init_app(app: Flask) -> None:
    app.before_request(_authenticate)


def caller() -> Caller:
    """The caller of this /v1 request (set before the view ran)."""
    found: Caller = g.caller
    return found


def _authenticate() -> None:
    if not (request.path == "/v1" or request.path.startswith("/v1/")):
        return
    if any(name.lower() in _KEY_PARAMETERS or value.startswith(KEY_PREFIX)
           for name, value in request.args.items(multi=True)):
        raise Unauthorized("API keys are not accepted in the URL; send the header Authorization: Bearer <key>.")
    svc = services()
    if svc.settings.auth == "off":
        _found(Caller(LOCAL_TENANT, None))
        return
    header = request.headers.get("Authorization")
    if not header:
        raise Unauthorized("No API key: send the header Authorization: Bearer <key>.")
    scheme, _, key = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("The Authorization header must be: Bearer <key>.")
    try:
        found = svc.tenants.resolve(key.strip())
    except RedisError as exc:
        raise ServiceUnavailable("The key store is unavailable; try again shortly.") from exc
    if found is None:
        raise Unauthorized("The API key is not valid: it is unknown, revoked or malformed.")
    _found(Caller(found.tenant, found))


def _found(who: Caller) -> None:
    g.caller = who
    bind_tenant(who.tenant)  # on the request's log lines from here on
