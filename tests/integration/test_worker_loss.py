"""A worker SIGKILLed in the middle of an interactive job: the job runs again on another worker within seconds, not
after the broker's visibility timeout (300 s, left at its default here); a worker that is merely slow keeps its job.

Workers renew a report in Redis every 2 s (worker/health.py); the fair queue records which worker holds each job's
turn, and every worker's reaper sends again the turns of workers whose report expired (worker/jobs/recovery.py).
The task is idempotent by image index, so running it again is safe.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.conftest import Services, settings_for
from tests.fixtures.shapes import Scene, render
from tests.integration.conftest import Stack, running_stack, worker_process

pytestmark = pytest.mark.integration

SCENE = Scene("triangle", "yellow", "black")
RECOVERY_BOUND_S = 30


@pytest.fixture(scope="module")
def stack(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = settings_for(services, batch_wait_ms=10, fetch_timeout_seconds=30)
    assert settings.visibility_timeout_seconds == 300  # recovery must not wait for it
    with running_stack(settings, tmp_path_factory.mktemp("worker-loss")) as stack:
        yield stack


def png() -> bytes:
    buffer = io.BytesIO()
    render(SCENE, (96, 96)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_job_whose_worker_was_killed_runs_again_on_another_within_30_s(
    stack: Stack, httpserver: HTTPServer, tmp_path: Path
) -> None:
    fetched, release = threading.Event(), threading.Event()
    calls: list[float] = []

    def slow_image(request: Request) -> Response:
        calls.append(time.monotonic())
        fetched.set()
        if len(calls) == 1:
            release.wait(60)  # the first worker dies while it waits here
        return Response(png(), content_type="image/png")

    httpserver.expect_request("/slow.png").respond_with_handler(slow_image)
    job: dict[str, Any] = stack.submit(json={"images": [httpserver.url_for("/slow.png")]})
    assert fetched.wait(30), stack.worker.log_tail()
    other = worker_process(stack.settings, tmp_path / "worker-2.log").start()
    try:
        other.wait_ready(120)
        killed_at = time.monotonic()
        stack.worker.kill()
        release.set()  # the test's server answers one request at a time: free it for the next worker
        done = stack.wait(job["id"], timeout_s=90)
        recovered_s = time.monotonic() - killed_at
    finally:
        stack.worker = other  # the fixture stops whichever worker is left
    assert done["status"] == "succeeded", done
    assert [r["caption"] for r in done["results"]] == [SCENE.caption]
    assert len(calls) == 2  # the image was fetched again, by the other worker
    assert recovered_s <= RECOVERY_BOUND_S, f"the job ended {recovered_s:.1f} s after its worker was killed"
    print(f"a dead worker's job ended {recovered_s:.1f} s after the kill")


def test_a_job_slower_than_the_reports_lifetime_runs_once(stack: Stack, httpserver: HTTPServer) -> None:
    """The worker holding it is alive and reporting: nobody takes its job over, however long it takes."""
    calls: list[float] = []

    def slow_image(request: Request) -> Response:
        calls.append(time.monotonic())
        time.sleep(14)  # longer than a report lives unrenewed (10 s), and several reaper rounds
        return Response(png(), content_type="image/png")

    httpserver.expect_request("/slower.png").respond_with_handler(slow_image)
    job: dict[str, Any] = stack.submit(json={"images": [httpserver.url_for("/slower.png")]})
    done = stack.wait(job["id"], timeout_s=60)
    assert done["status"] == "succeeded", done
    assert len(calls) == 1
