"""Real services for the tests: redis-server and weed (S3) on free loopback ports, stopped by PID."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from flask.testing import FlaskClient

from api import create_app
from cli.processes import free_ports, redis_process, s3_process, stop_together
from common.settings import Settings
from common.tenants import KeyLimits, TenantStore

TINY_MODEL = Path(__file__).resolve().parent / "fixtures" / "tiny_blip"
S3_ACCESS_KEY = "test-access"
S3_SECRET_KEY = "test-secret"


@dataclass(frozen=True)
class Services:
    redis_url: str
    s3_endpoint_url: str


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    root = tmp_path_factory.mktemp("services")
    redis_port, s3_port = free_ports(2)
    redis = redis_process(root / "redis", redis_port, root / "redis.log").start()
    s3 = s3_process(root / "s3", s3_port, root / "s3.log", S3_ACCESS_KEY, S3_SECRET_KEY).start()
    try:
        redis.wait_ready(30)
        s3.wait_ready(60)
        yield Services(f"redis://127.0.0.1:{redis_port}/0", f"http://127.0.0.1:{s3_port}")
    finally:
        stop_together([s3, redis])


def settings_for(services: Services, **overrides: object) -> Settings:
    """Settings pointing at the test services, with a fresh bucket, the tiny model and loopback allowed."""
    values: dict[str, object] = {
        "redis_url": services.redis_url,
        "s3_endpoint_url": services.s3_endpoint_url,
        "s3_bucket": f"test-{uuid.uuid4().hex[:12]}",
        "aws_access_key_id": S3_ACCESS_KEY,
        "aws_secret_access_key": S3_SECRET_KEY,
        "model": str(TINY_MODEL),
        "device": "cpu",
        # The tests compare captions with those of each image alone, which only fp32 promises ("auto" is bf16
        # on CPUs that compute it; tests/integration/test_local_stack.py runs that).
        "dtype": "float32",
        "allow_private_networks": True,
        "outbound_allowed_ports": "*",  # the tests' HTTP servers listen on random loopback ports
        "metrics_port": 0,  # tests run several workers on one host; tests/integration/test_metrics.py gives one a port
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def make_settings(services: Services) -> Callable[..., Settings]:
    """settings_for, bound to this session's services."""

    def make(**overrides: object) -> Settings:
        return settings_for(services, **overrides)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


# The tenant of the tests' keys, and each Redis's key of it (made once per Redis).
TEST_TENANT = "tests"
# The tests' keys: any bulk bucket, and limits no functional test reaches (the limit tests make their own keys).
GENEROUS = KeyLimits(("*",), rate_limit="100000/minute", max_in_flight=1_000_000)
_KEYS: dict[str, str] = {}
# What a client sends where no key can be made (settings pointing at a Redis that is down).
UNCHECKABLE_KEY = "cap_" + "x" * 43


def key_for_tests(settings: Settings) -> str:
    """An API key of TEST_TENANT, with any bulk bucket, in the settings' Redis."""
    if settings.redis_url not in _KEYS:
        try:
            made = TenantStore.from_url(settings.redis_url).create_key("tests", TEST_TENANT, GENEROUS)
        except redis.RedisError:
            return UNCHECKABLE_KEY
        _KEYS[settings.redis_url] = made.key
    return _KEYS[settings.redis_url]


def api_client(settings: Settings, key: str | None = None) -> FlaskClient:
    """The API (create_app on these settings) through Flask's test client, sending `key` (default: the tests'
    key) on every request."""
    key = key or key_for_tests(settings)
    client = create_app(settings).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return client
