"""Real services for the tests: redis-server and weed (S3) on free loopback ports, stopped by PID."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli.processes import free_ports, redis_process, s3_process
from common.settings import Settings

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
        s3.stop()
        redis.stop()


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
        "allow_private_networks": True,
        "outbound_allowed_ports": "*",  # the tests' HTTP servers listen on random loopback ports
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
