"""A worker's health reports in real Redis: ready while it runs, not ready (once, with the reason) when its device
fails, and the worker told to stop."""

from __future__ import annotations

import uuid

from common.errors import DeviceFailure
from common.settings import Settings
from common.workers import WorkerRegistry
from worker.health import NOT_READY_TTL_S, WorkerHealth

READY_TTL_S = 10.0


def test_ready_then_not_ready_for_good(settings: Settings) -> None:
    registry = WorkerRegistry.from_url(settings.redis_url)
    name = f"test-{uuid.uuid4().hex[:8]}"
    stops: list[int] = []
    health = WorkerHealth(registry, name, lambda: stops.append(1), READY_TTL_S)
    try:
        assert registry.get(name) is None
        health.ready()
        report = registry.get(name)
        assert report is not None and report.state == "ready" and report.reason is None
        assert 0 < registry._redis.ttl(f"captioner:worker:{name}") <= READY_TTL_S

        health.failed(DeviceFailure("The device failed: CUDA error: unspecified launch failure"))
        health.failed(DeviceFailure("a second thread finds it too"))
        report = registry.get(name)
        assert report is not None and report.state == "not_ready"
        assert report.reason == "The device failed: CUDA error: unspecified launch failure"
        assert registry._redis.ttl(f"captioner:worker:{name}") > READY_TTL_S
        assert registry._redis.ttl(f"captioner:worker:{name}") <= NOT_READY_TTL_S
        assert stops == [1]
        assert name in [r.name for r in registry.all()]
    finally:
        health.close()
