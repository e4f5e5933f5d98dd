"""A worker SIGKILLed in the middle of an interactive job: the job is not lost, another worker finishes it.

Late acks plus the broker's visibility timeout bring the unacknowledged task back (here after 5 s; 300 s by
default); the task is idempotent by image index, so running it again is safe.
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


@pytest.fixture(scope="module")
def stack(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = settings_for(services, visibility_timeout_seconds=5, batch_wait_ms=10)
    with running_stack(settings, tmp_path_factory.mktemp("worker-loss")) as stack:
        yield stack


def test_a_job_whose_worker_was_killed_is_finished_by_the_next_worker(
    stack: Stack, httpserver: HTTPServer, tmp_path: Path
) -> None:
    buffer = io.BytesIO()
    render(SCENE, (96, 96)).save(buffer, format="PNG")
    fetched = threading.Event()
    calls: list[float] = []

    def slow_image(request: Request) -> Response:
        calls.append(time.monotonic())
        fetched.set()
        if len(calls) == 1:
            time.sleep(3)  # the first worker dies while it waits here
        return Response(buffer.getvalue(), content_type="image/png")

    httpserver.expect_request("/slow.png").respond_with_handler(slow_image)
    job: dict[str, Any] = stack.submit(json={"images": [httpserver.url_for("/slow.png")]})
    assert fetched.wait(30), stack.worker.log_tail()
    stack.worker.kill()
    stack.worker = worker_process(stack.settings, tmp_path / "worker-2.log").start()
    stack.worker.wait_ready(120)
    done = stack.wait(job["id"], timeout_s=90)
    assert done["status"] == "succeeded", done
    assert [r["caption"] for r in done["results"]] == [SCENE.caption]
    assert len(calls) >= 2  # the image was fetched again, by the second worker
