"""A worker whose device breaks: it reports not ready, gives its jobs back at once and exits for its supervisor to
restart it; another worker finishes the jobs, with the right captions."""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.processes import ManagedProcess
from common.schemas import JobStatus
from common.workers import WorkerRegistry
from tests.conftest import Services, settings_for
from tests.fixtures.shapes import Scene, render
from tests.integration.conftest import ROOT, Stack, child_env, running_stack, worker_process
from worker.health import EXIT_WORKER_FAILED

pytestmark = pytest.mark.integration

SCENES = [Scene("circle", "red", "blue"), Scene("square", "green", "white"), Scene("triangle", "yellow", "black")]


@pytest.fixture(scope="module")
def stack(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = settings_for(services, batch_size=4, batch_wait_ms=50)
    with running_stack(settings, tmp_path_factory.mktemp("worker-failure")) as stack:
        yield stack


def png(scene: Scene) -> bytes:
    buffer = io.BytesIO()
    render(scene, (96, 96)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_worker_whose_device_breaks_exits_and_its_jobs_finish_elsewhere(stack: Stack, tmp_path: Path) -> None:
    stack.worker.stop()  # the healthy worker goes; the broken one takes every job
    broken = ManagedProcess(
        "broken-worker", [sys.executable, "-m", "tests.fixtures.broken_device_worker"], tmp_path / "broken.log",
        env=child_env(stack.settings), cwd=ROOT, ready=lambda: " ready." in (tmp_path / "broken.log").read_text(),
    )
    stack.worker = broken.start()
    broken.wait_ready(120)
    jobs = [stack.client.submit([png(scene)]) for scene in SCENES]

    deadline = time.monotonic() + 60
    while broken.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert broken.returncode() == EXIT_WORKER_FAILED, broken.log_tail()
    log = broken.log_path.read_text()
    assert "illegal memory access" in log and "goes back to the queue" in log
    assert "retrying its items one by one" not in log  # a broken device is not tried image by image
    (report,) = [r for r in WorkerRegistry.from_url(stack.settings.redis_url).all() if f"-{broken.pid}@" in r.name]
    assert report.state == "not_ready" and report.reason is not None and "illegal memory access" in report.reason
    for job in jobs:  # given back, not failed
        assert stack.client.get(job.id).status in (JobStatus.QUEUED, JobStatus.RUNNING)

    stack.worker = worker_process(stack.settings, tmp_path / "healthy.log").start()
    stack.worker.wait_ready(120)
    for job, scene in zip(jobs, SCENES, strict=True):
        done = stack.wait(job.id, timeout_s=90)
        assert done.status == JobStatus.SUCCEEDED, done
        assert [r.caption for r in done.results] == [scene.caption]
