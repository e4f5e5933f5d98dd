"""Who may call the service, and as whom: API keys, the tenants they belong to, and each tenant's webhook secret.

Layout in Redis:
- ``captioner:apikey:{key_id}``        hash: tenant, name, digest, created_at, revoked_at, limits
- ``captioner:apikey-digest:{digest}`` the key_id of the key whose SHA-256 is `digest`
- ``captioner:apikeys``                sorted set of key ids by creation time
- ``captioner:tenant:{tenant}``        hash: created_at, webhook_secret, and after a rotation
                                       previous_webhook_secret and previous_until (when it stops signing)

A key is shown once, when it is made, and stored only as its SHA-256: keys are 256 random bits, so a fast hash
is enough (as for GitHub's and Stripe's tokens), and a lookup by digest finds it in one step. Nothing is cached:
a revoked key fails on the very next request, on every API process.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import redis

from common.redis_client import redis_client
from common.schemas import LOCAL_TENANT
from common.settings import RATE_LIMIT

KEY_PREFIX = "cap_"

_KEY = re.compile(r"^cap_[A-Za-z0-9_-]{43}$")
_TENANT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_KEYS_KEY = "captioner:apikeys"


_KEY_RECORD_PREFIX = "captioner:apikey:"

# KEYS: the digest's key. Returns {key id, the key's record as a flat list}, or nil: a lookup in one round trip,
# as every request makes one.
_RESOLVE = f"""
local key_id = redis.call('GET', KEYS[1])
if not key_id then return nil end
return {{key_id, redis.call('HGETALL', '{_KEY_RECORD_PREFIX}' .. key_id)}}
"""


def _key_record(key_id: str) -> str:
    return _KEY_RECORD_PREFIX + key_id


def _digest_key(digest: str) -> str:
    return f"captioner:apikey-digest:{digest}"


def _tenant_key(tenant: str) -> str:
    return f"captioner:tenant:{tenant}"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: whsec_ and 24 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def valid_tenant(tenant: str) -> bool:
    return bool(_TENANT.match(tenant))


# KEYS: tenant. ARGV: new secret, when the old one stops signing. One step, so the secret kept as the previous
# one is the one that was current, however many rotations run at once.
_ROTATE = """
redis.call('HSET', KEYS[1], 'previous_webhook_secret', redis.call('HGET', KEYS[1], 'webhook_secret'),
  'previous_until', ARGV[2], 'webhook_secret', ARGV[1])
"""


@dataclass(frozen=True)
class KeyLimits:
    """What one key may do beyond reading its tenant's work."""

    # Bulk buckets, as "bucket", "bucket/prefix" or "*" (any); none: no bulk jobs. The global
    # CAPTIONER_BULK_BUCKETS still bounds them.
    bulk_buckets: tuple[str, ...] = ()
    rate_limit: str | None = None  # e.g. "600/minute"
    max_in_flight: int | None = None  # images queued or running

    def allows_bulk(self, bucket: str, prefix: str = "") -> bool:
        """Whether a bulk job may use `bucket` (under `prefix`)."""
        for allowed in self.bulk_buckets:
            name, _, allowed_prefix = allowed.partition("/")
            if name == "*" or (name == bucket and prefix.startswith(allowed_prefix)):
                return True
        return False


@dataclass(frozen=True)
class ApiKey:
    """A key's record: never the key itself."""

    key_id: str
    tenant: str
    name: str
    created_at: datetime
    revoked_at: datetime | None = None
    limits: KeyLimits = field(default_factory=KeyLimits)

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class CreatedKey:
    """What `create` gives, once: the key itself, its record, and its tenant's webhook secret."""

    key: str
    record: ApiKey
    webhook_secret: str


class TenantStore:
    """Keys and tenants in Redis. Safe to share between threads."""

    def __init__(self, client: redis.Redis, local_webhook_secret: str | None = None) -> None:
        self._redis = client
        self._local_webhook_secret = local_webhook_secret
        self._resolve = client.register_script(_RESOLVE)
        self._rotate = client.register_script(_ROTATE)

    @classmethod
    def from_url(cls, url: str, local_webhook_secret: str | None = None) -> TenantStore:
        """`local_webhook_secret` (CAPTIONER_WEBHOOK_SECRET) signs the built-in tenant's webhooks."""
        return cls(redis_client(url), local_webhook_secret)

    def create_key(self, name: str, tenant: str | None = None, limits: KeyLimits | None = None) -> CreatedKey:
        """A new key for `tenant` (default: a new tenant named after the key). ValueError for a bad name, or for a
        new tenant whose name is taken: naming an existing tenant must be explicit."""
        explicit = tenant is not None
        tenant = tenant if tenant is not None else name.lower()
        if tenant == LOCAL_TENANT:
            raise ValueError(f"{LOCAL_TENANT!r} is the built-in tenant of the open mode; name another")
        if not valid_tenant(tenant):
            raise ValueError(f"{tenant!r} is not a tenant name: 1-63 of a-z, 0-9, '-' and '_', starting alphanumeric")
        limits = limits or KeyLimits()
        if limits.rate_limit is not None and not re.match(RATE_LIMIT, limits.rate_limit):
            raise ValueError(f"{limits.rate_limit!r} is not a rate such as '600/minute'")
        if limits.max_in_flight is not None and limits.max_in_flight < 1:
            raise ValueError("--max-in-flight must be at least 1")
        if not explicit and self._redis.exists(_tenant_key(tenant)):
            raise ValueError(f"tenant {tenant!r} exists already: pass --tenant {tenant} to add a key to it")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = "key_" + secrets.token_hex(8)
        now = time.time()
        record: dict[Any, str] = {
            "tenant": tenant, "name": name, "digest": digest(key), "created_at": repr(now),
            "bulk_buckets": json.dumps(list(limits.bulk_buckets)), "rate_limit": limits.rate_limit or "",
            "max_in_flight": "" if limits.max_in_flight is None else str(limits.max_in_flight),
        }
        pipe = self._redis.pipeline(transaction=True)
        pipe.hsetnx(_tenant_key(tenant), "created_at", repr(now))
        pipe.hsetnx(_tenant_key(tenant), "webhook_secret", new_webhook_secret())
        pipe.hset(_key_record(key_id), mapping=record)
        pipe.set(_digest_key(record["digest"]), key_id)
        pipe.zadd(_KEYS_KEY, {key_id: now})
        pipe.execute()
        secret = cast(str, self._redis.hget(_tenant_key(tenant), "webhook_secret"))
        return CreatedKey(key, self._parse(key_id, record), secret)

    def resolve(self, key: str) -> ApiKey | None:
        """The active key's record, or None for anything else (malformed, unknown, revoked)."""
        if not _KEY.match(key):
            return None
        wanted = digest(key)
        looked_up = cast(list[Any] | None, self._resolve(keys=[_digest_key(wanted)]))
        if looked_up is None:
            return None
        key_id, flat = looked_up
        raw = dict(zip(flat[::2], flat[1::2], strict=True))
        if not raw or not hmac.compare_digest(raw.get("digest", ""), wanted):
            return None
        found = self._parse(key_id, raw)
        return found if found.active else None

    def all_keys(self) -> list[ApiKey]:
        """Every key, active or revoked, oldest first."""
        found = []
        for key_id in cast(list[str], self._redis.zrange(_KEYS_KEY, 0, -1)):
            raw = cast(dict[str, str], self._redis.hgetall(_key_record(key_id)))
            if raw:
                found.append(self._parse(key_id, raw))
        return found

    def any_active(self) -> bool:
        return any(key.active for key in self.all_keys())

    def revoke(self, key_id: str) -> ApiKey | None:
        """Revoke a key (again is harmless); None if there is no such key."""
        if not self._redis.exists(_key_record(key_id)):
            return None
        self._redis.hsetnx(_key_record(key_id), "revoked_at", repr(time.time()))
        raw = cast(dict[str, str], self._redis.hgetall(_key_record(key_id)))
        return self._parse(key_id, raw)

    def rotate_webhook_secret(self, tenant: str, overlap_s: float) -> tuple[str, datetime]:
        """Give the tenant a new webhook secret; the one it replaces keeps signing beside it for `overlap_s`
        seconds, so receivers can move to the new one without missing a delivery. The new secret, and when the
        old one stops. ValueError for a tenant that does not exist (or the built-in one: its secret is a setting).
        """
        if tenant == LOCAL_TENANT or not self._redis.exists(_tenant_key(tenant)):
            raise ValueError(f"no tenant {tenant!r} (its keys make a tenant; the built-in one's secret is a setting)")
        secret, until = new_webhook_secret(), time.time() + overlap_s
        self._rotate(keys=[_tenant_key(tenant)], args=[secret, repr(until)])
        return secret, datetime.fromtimestamp(until, tz=UTC)

    def signing_secrets(self, tenant: str) -> list[str]:
        """Every secret that signs the tenant's webhooks now: its current one, and the one before it while a
        rotation's overlap lasts. [] where there is none (the built-in tenant without CAPTIONER_WEBHOOK_SECRET)."""
        if tenant == LOCAL_TENANT:
            return [self._local_webhook_secret] if self._local_webhook_secret else []
        current, previous, until = cast(list[str | None], self._redis.hmget(
            _tenant_key(tenant), "webhook_secret", "previous_webhook_secret", "previous_until"))
        found = [current] if current else []
        if previous and until and time.time() < float(until):
            found.append(previous)
        return found

    def webhook_secret(self, tenant: str) -> str | None:
        """The secret that signs the tenant's webhooks; None where there is none (the built-in tenant without
        CAPTIONER_WEBHOOK_SECRET: its webhooks are refused)."""
        if tenant == LOCAL_TENANT:
            return self._local_webhook_secret
        return cast(str | None, self._redis.hget(_tenant_key(tenant), "webhook_secret"))

    @staticmethod
    def _parse(key_id: str, raw: dict[str, str]) -> ApiKey:
        revoked = raw.get("revoked_at")
        return ApiKey(
            key_id=key_id, tenant=raw["tenant"], name=raw["name"],
            created_at=datetime.fromtimestamp(float(raw["created_at"]), tz=UTC),
            revoked_at=datetime.fromtimestamp(float(revoked), tz=UTC) if revoked else None,
            limits=KeyLimits(
                bulk_buckets=tuple(json.loads(raw.get("bulk_buckets") or "[]")),
                rate_limit=raw.get("rate_limit") or None,
                max_in_flight=int(raw["max_in_flight"]) if raw.get("max_in_flight") else None,
            ),
        )
