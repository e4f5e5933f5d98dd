"""A job's request id in the JSON log lines of the real gunicorn and Celery worker processes."""

from __future__ import annotations

import io
import json
import random
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from common.storage import ObjectStorage
from tests.fixtures.shapes import Scene, render
from tests.integration.conftest import TENANT, Stack

pytestmark = pytest.mark.integration


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The log's JSON lines: every line a process logs (what it prints, such as Celery's notice at exit, is not one)."""
    found = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def lines_with(path: Path, timeout_s: float = 10, **fields: object) -> list[dict[str, Any]]:
    """The log's JSON lines with these fields, once there are some (a process logs after it answers)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [line for line in json_lines(path) if all(line.get(k) == v for k, v in fields.items())]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_a_job_s_request_id_follows_it_into_the_worker_s_lines(stack: Stack) -> None:
    image = io.BytesIO()
    render(Scene("circle", "red", "blue"), (64, 64), random.Random(1)).save(image, format="PNG")
    request_id = f"test-{uuid.uuid4().hex}"
    response = stack.http.post(f"{stack.url}/v1/jobs", params={"wait": 30}, headers={"X-Request-ID": request_id},
                               files={"images": ("a.png", image.getvalue(), "image/png")}, timeout=40)
    assert response.status_code == 200, response.text
    assert response.headers["X-Request-ID"] == request_id
    job_id = response.json()["id"]

    # The job's lines on the worker (the task's and the pipeline's) name the request, the job and its tenant, and the
    # batch that held its image names the job.
    worker_lines = lines_with(stack.worker.log_path, request_id=request_id)
    assert worker_lines, stack.worker.log_tail()
    for line in worker_lines:
        assert (line["job_id"], line["tenant"]) == (job_id, TENANT), line
        assert line["worker"].startswith("captioner-") and line["level"] and line["time"], line
    batches = [line for line in json_lines(stack.worker.log_path)
               if job_id in line.get("job_ids", ()) and "captioned a batch of " in line["message"]]
    assert batches and all(line["batch_id"] for line in batches), stack.worker.log_tail()
    # Every line is JSON, Celery's, gunicorn's and transformers' included (what a process prints at exit comes later).
    for log in (stack.worker.log_path, stack.api.log_path):
        assert all(line.startswith("{") for line in log.read_text(errors="replace").splitlines()), log.read_text()
    # gunicorn's access line for the request, and the API's own lines, in the same JSON.
    assert lines_with(stack.api.log_path, request_id=request_id, logger="gunicorn.access", http_status=200)

    fresh = stack.http.get(f"{stack.url}/v1/jobs/{job_id}", timeout=10)
    assert fresh.headers["X-Request-ID"] not in ("", request_id)
    assert lines_with(stack.api.log_path, request_id=fresh.headers["X-Request-ID"], http_path=f"/v1/jobs/{job_id}")


def test_a_bulk_run_s_request_id_follows_it_into_its_work_items_lines(stack: Stack) -> None:
    prefix = f"logs-test/{uuid.uuid4().hex}/"
    image = io.BytesIO()
    render(Scene("square", "green", "white"), (64, 64), random.Random(2)).save(image, format="PNG")
    storage = ObjectStorage.from_settings(stack.settings)
    storage.ensure_bucket()
    storage.put(f"{prefix}a.png", image.getvalue(), "image/png")
    request_id = f"bulk-{uuid.uuid4().hex}"
    response = stack.http.post(f"{stack.url}/v1/bulk", headers={"X-Request-ID": request_id}, timeout=30,
                               json={"source": {"bucket": stack.settings.s3_bucket, "prefix": prefix}})
    assert response.status_code == 202 and response.headers["X-Request-ID"] == request_id, response.text
    bulk_id = response.json()["id"]
    stack.wait_bulk(bulk_id, timeout_s=60)

    # Planning, chunk and final steps each log under the run's id, its tenant and the request that started it; the
    # batch that held its image names the run.
    worker_lines = lines_with(stack.worker.log_path, request_id=request_id)
    assert worker_lines, stack.worker.log_tail()
    assert all((line["bulk_id"], line["tenant"]) == (bulk_id, TENANT) for line in worker_lines), worker_lines
    assert any(line["message"].startswith(f"bulk {bulk_id} chunk 0: 1 objects, 1 captioned") for line in worker_lines)
    assert any(bulk_id in line.get("bulk_ids", ()) for line in json_lines(stack.worker.log_path))
