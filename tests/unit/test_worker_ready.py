"""`captioner worker-ready`, the worker container's readiness probe, on real Redis: ready only while a worker of
this host reports `ready`."""

from __future__ import annotations

import uuid

import pytest

from cli import worker_ready
from cli.main import main
from common.fairqueue import FairQueue
from common.settings import Settings
from common.workers import WorkerRegistry


def test_ready_only_while_a_worker_of_this_host_reports_ready(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    host = f"pod-{uuid.uuid4().hex[:8]}"
    queue = FairQueue(WorkerRegistry.from_url(settings.redis_url)._redis, settings.job_ttl_seconds,
                      settings.max_attempts)
    registry = WorkerRegistry.from_url(settings.redis_url)
    assert worker_ready.run(settings, host) == 1
    assert "none has reported" in capsys.readouterr().err

    # Another host's ready worker does not make this one ready; nor does a name that merely contains this host.
    queue.join(f"captioner-1@other-{host}")
    registry.report(f"captioner-1@other-{host}", "ready", 10)
    assert worker_ready.run(settings, host) == 1

    name = f"captioner-1@{host}"
    queue.join(name)
    assert worker_ready.run(settings, host) == 1  # joined, but its report not written yet
    registry.report(name, "ready", 10)
    assert worker_ready.run(settings, host) == 0
    assert capsys.readouterr().out == f"ready: {name}\n"

    registry.report(name, "not_ready", 60, reason="The device failed: CUDA error")
    assert worker_ready.run(settings, host) == 1
    assert "The device failed: CUDA error" in capsys.readouterr().err
    queue.leave(name)


def test_the_command_probes_this_host_and_fails_without_redis(
        settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    host = f"pod-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr("socket.gethostname", lambda: host)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    name = f"captioner-7@{host}"
    FairQueue(WorkerRegistry.from_url(settings.redis_url)._redis, 60, 3).join(name)
    WorkerRegistry.from_url(settings.redis_url).report(name, "ready", 10)
    assert main(["worker-ready"]) == 0

    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens on port 1
    assert main(["worker-ready"]) == 1
    assert "Redis does not answer" in capsys.readouterr().err
