"""Fairness between tenants on the local stack (tiny model): one tenant keeping its in-flight cap full of
16-image jobs costs another tenant's single-image jobs at most twice their idle latency, plus the batching
window (issue 16's bound). bench/fairness.py measures the same thing with more jobs; BENCHMARKS.md has figures."""

from __future__ import annotations

import statistics

import pytest

from bench.fairness import measure
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


def test_a_tenant_at_its_cap_costs_another_at_most_twice_its_idle_latency(stack: Stack) -> None:
    result = measure(stack.url, stack.settings.redis_url, jobs=25, heavy_cap=256)
    idle, loaded = statistics.median(result.idle_ms), statistics.median(result.loaded_ms)
    # Within two of its 16-image jobs of the cap: A refills as its jobs end, and a busy machine refills a job late.
    assert statistics.median(result.heavy_in_flight) >= 256 - 2 * 16, "A never filled its cap: nothing was measured"
    assert loaded <= 2 * idle + stack.settings.batch_wait_ms, result.summary()
