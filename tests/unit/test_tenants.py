"""API keys and tenants in real Redis: made once, stored only as a hash, resolved, revoked, listed."""

from __future__ import annotations

import uuid

import pytest
import redis

from common.settings import Settings
from common.tenants import KeyLimits, TenantStore, digest


@pytest.fixture
def store(settings: Settings) -> TenantStore:
    return TenantStore.from_url(settings.redis_url)


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def test_a_key_is_shown_once_and_stored_only_as_its_hash(store: TenantStore, settings: Settings) -> None:
    made = store.create_key("acme", tenant(), KeyLimits(bulk_buckets=("photos/2024/",), max_in_flight=64))
    assert made.key.startswith("cap_") and len(made.key) == 47
    assert made.webhook_secret.startswith("whsec_")
    found = store.resolve(made.key)
    assert found == made.record and found.limits.max_in_flight == 64
    raw = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    stored = []
    names = [*raw.scan_iter("captioner:apikey*"), *raw.scan_iter("captioner:tenant:*")]
    for name in names:
        kind = raw.type(name)
        stored.append(name + str(raw.hgetall(name) if kind == "hash" else raw.get(name) if kind == "string" else ""))
    everything = "\n".join(stored)
    assert made.key not in everything and digest(made.key) in everything


def test_malformed_unknown_and_revoked_keys_resolve_to_nothing(store: TenantStore) -> None:
    made = store.create_key("acme", tenant())
    assert store.resolve(made.key[:-1]) is None  # malformed: too short
    assert store.resolve(made.key[:-1] + ("A" if made.key[-1] != "A" else "B")) is None  # well formed, unknown
    assert store.resolve("Bearer " + made.key) is None
    revoked = store.revoke(made.record.key_id)
    assert revoked is not None and revoked.revoked_at is not None
    assert store.resolve(made.key) is None
    assert store.revoke("key_nothere") is None


def test_keys_of_one_tenant_share_its_webhook_secret_and_tenants_do_not(store: TenantStore) -> None:
    first, other = tenant(), tenant()
    a = store.create_key("first", first)
    b = store.create_key("first-ci", first)
    c = store.create_key("other", other)
    assert a.webhook_secret == b.webhook_secret == store.webhook_secret(first)
    assert c.webhook_secret != a.webhook_secret
    assert {a.record.key_id, b.record.key_id, c.record.key_id} <= {k.key_id for k in store.all_keys()}


def test_a_new_tenant_is_named_after_its_key_and_joining_one_is_explicit(store: TenantStore) -> None:
    name = tenant()
    assert store.create_key(name).record.tenant == name
    with pytest.raises(ValueError, match="exists already"):
        store.create_key(name)
    with pytest.raises(ValueError, match="not a tenant name"):
        store.create_key("x", "Bad Name!")
    with pytest.raises(ValueError, match="built-in"):
        store.create_key("local")


def test_the_built_in_tenant_signs_with_the_configured_secret(settings: Settings) -> None:
    assert TenantStore.from_url(settings.redis_url, "whsec_abc=").webhook_secret("local") == "whsec_abc="
    assert TenantStore.from_url(settings.redis_url).webhook_secret("local") is None


@pytest.mark.parametrize(("buckets", "bucket", "prefix", "allowed"), [
    ((), "photos", "", False),
    (("photos",), "photos", "2024/", True),
    (("photos",), "other", "", False),
    (("photos/2024/",), "photos", "2024/may/", True),
    (("photos/2024/",), "photos", "2023/", False),
    (("*",), "anything", "x/", True),
])
def test_bulk_buckets_are_none_unless_given(
    buckets: tuple[str, ...], bucket: str, prefix: str, allowed: bool
) -> None:
    assert KeyLimits(bulk_buckets=buckets).allows_bulk(bucket, prefix) is allowed
