"""Workers that die or are stopped: a worker SIGKILLed in the middle of an interactive job has the job run again on
another worker within seconds, not after the broker's visibility timeout (300, left at its default here); a worker
that is merely slow keeps its job; a job whose image kills its worker every time fails after CAPTIONER_MAX_ATTEMPTS
deaths, and the jobs that shared its worker end well; so does a bulk run holding such an image, that image alone
failed; a rolling restart under load loses nothing, each worker giving back at once the jobs it holds.

Workers renew a report in Redis several times within CAPTIONER_WORKER_SILENCE_SECONDS (worker/health.py); the fair
queue records which worker holds each job's turn, and every worker's reaper sends again the turns of workers whose
report expired, blaming their jobs (worker/jobs/recovery.py, common/fairqueue.py). The task is idempotent by image
index, so running it again is safe.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import boto3
import pytest
import redis
import requests
from botocore.config import Config
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from cli.processes import ManagedProcess
from common.bulk_schemas import BulkStatus
from common.schemas import Job, JobStatus
from common.settings import Settings
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY, Services, settings_for
from tests.fixtures.poison import POISON
from tests.fixtures.shapes import Scene, render
from tests.fixtures.slow_model import SLOW_BATCH_S
from tests.integration.conftest import Stack, running_stack, worker_process

pytestmark = pytest.mark.integration

SCENE = Scene("triangle", "yellow", "black")
RECOVERY_BOUND_S = 30


@pytest.fixture(scope="module")
def stack(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = settings_for(services, batch_wait_ms=10, fetch_timeout_seconds=30, worker_silence_seconds=3,
                            max_attempts=2)
    assert settings.visibility_timeout_seconds == 300  # recovery must not wait for it
    with running_stack(settings, tmp_path_factory.mktemp("worker-loss")) as stack:
        yield stack


def png_of(scene: Scene) -> bytes:
    buffer = io.BytesIO()
    render(scene, (96, 96)).save(buffer, format="PNG")
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
        return Response(png_of(SCENE), content_type="image/png")

    httpserver.expect_request("/slow.png").respond_with_handler(slow_image)
    job = stack.client.submit([httpserver.url_for("/slow.png")])
    assert fetched.wait(30), stack.worker.log_tail()
    other = worker_process(stack.settings, tmp_path / "worker-2.log").start()
    try:
        other.wait_ready(120)
        killed_at = time.monotonic()
        stack.worker.kill()
        release.set()  # the test's server answers one request at a time: free it for the next worker
        done = stack.wait(job.id, timeout_s=90)
        recovered_s = time.monotonic() - killed_at
    finally:
        stack.worker = other  # the fixture stops whichever worker is left
    assert done.status == JobStatus.SUCCEEDED, done
    assert [r.caption for r in done.results] == [SCENE.caption]
    assert len(calls) == 2  # the image was fetched again, by the other worker
    assert recovered_s <= RECOVERY_BOUND_S, f"the job ended {recovered_s:.1f} s after its worker was killed"
    print(f"a dead worker's job ended {recovered_s:.1f} s after the kill")


def test_a_job_slower_than_the_reports_lifetime_runs_once(stack: Stack, httpserver: HTTPServer) -> None:
    """The worker holding it is alive and reporting: nobody takes its job over, however long it takes."""
    calls: list[float] = []

    def slow_image(request: Request) -> Response:
        calls.append(time.monotonic())
        time.sleep(7)  # twice as long as a report lives unrenewed, and several reaper rounds
        return Response(png_of(SCENE), content_type="image/png")

    httpserver.expect_request("/slower.png").respond_with_handler(slow_image)
    done = stack.wait(stack.client.submit([httpserver.url_for("/slower.png")]).id, timeout_s=60)
    assert done.status == JobStatus.SUCCEEDED, done
    assert len(calls) == 1


SCENES = [Scene("circle", "red", "white"), Scene("square", "blue", "white"), Scene("triangle", "green", "black")]


class SlowFirstTime(http.server.BaseHTTPRequestHandler):
    """Serves each scene's PNG, the first time after a pause: a job whose images it serves is still in its worker's
    hands when the poison kills that worker."""

    served: ClassVar[set[str]] = set()

    def do_GET(self) -> None:
        if self.path not in self.served:
            self.served.add(self.path)
            time.sleep(2)
        body = png_of(SCENES[int(self.path.strip("/").split(".")[0])])
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def slow_images() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowFirstTime)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()


def poisoned_worker(settings: Settings, log_path: Path) -> ManagedProcess:
    return worker_process(settings, log_path, build="poison")


@contextmanager
def supervised_workers(settings: Settings, logs: Path, count: int) -> Iterator[list[int]]:
    """`count` test-build workers, each that dies replaced by a fresh one; yields the exit codes of the dead."""
    deaths: list[int] = []
    workers = [poisoned_worker(settings, logs / f"worker-{i}.log").start() for i in range(count)]
    stop = threading.Event()

    def supervise() -> None:
        started = count
        while not stop.wait(0.2):
            for index, worker in enumerate(workers):
                if not worker.alive():
                    deaths.append(worker.returncode() or 0)
                    worker.stop()
                    workers[index] = poisoned_worker(settings, logs / f"worker-{started}.log").start()
                    started += 1

    for worker in workers:
        worker.wait_ready(120)
    thread = threading.Thread(target=supervise, daemon=True)
    thread.start()
    try:
        yield deaths
    finally:
        stop.set()
        thread.join()
        for worker in workers:
            worker.stop()


def test_a_job_that_kills_its_worker_fails_after_max_attempts_deaths_and_the_others_end_well(
    stack: Stack, tmp_path: Path
) -> None:
    """The workers here are a test build (tests/fixtures/poison/sitecustomize.py): an image holding POISON makes the
    worker process abort as it decodes it. A small supervisor starts a fresh worker in place of each one that dies,
    as `captioner up` or Kubernetes would."""
    stack.worker.stop()  # this test's workers are the test build
    poison = png_of(SCENES[0]) + POISON
    # One worker, and images it fetches slowly the first time: every job is in its hands when the poison kills it.
    with supervised_workers(stack.settings, tmp_path, 1) as deaths, slow_images() as url:
        jobs: list[tuple[Job, list[str]]] = []
        bad = stack.client.submit([poison])
        for i in range(6):
            scenes = [i % 3, (i + 1) % 3][: 1 + i % 2]
            job = stack.client.submit([f"{url}/{scene}.png?job={i}" for scene in scenes])
            jobs.append((job, [SCENES[scene].caption for scene in scenes]))
        failed = stack.wait(bad.id, timeout_s=180)
        ended = [(stack.wait(job.id, timeout_s=120), captions) for job, captions in jobs]
    assert failed.status == JobStatus.FAILED, failed
    attempts = stack.settings.max_attempts
    assert failed.error is not None and failed.error.code == "job_killed_workers", failed
    assert f"{attempts} times" in failed.error.message
    assert len(deaths) == attempts and all(code < 0 for code in deaths), deaths  # SIGABRT, each time
    for job, captions in ended:
        assert job.status == JobStatus.SUCCEEDED, job
        assert [r.caption for r in job.results] == captions
    # They were blamed for the first death, ran alone since, and no later death was put on them.
    records = redis.Redis.from_url(stack.settings.redis_url, decode_responses=True)
    assert {records.hget(f"captioner:job:{job.id}", "deaths") for job, _ in ended} == {"1"}


def slow_worker(settings: Settings, log_path: Path) -> ManagedProcess:
    """A test-build worker (tests/fixtures/slow_model/) whose every batch takes SLOW_BATCH_S longer: batches of 2 from
    up to 8 jobs, so under the test's load it always holds several batches' worth of jobs."""
    small = settings.model_copy(update={"batch_size": 2, "worker_concurrency": 8})
    return worker_process(small, log_path, build="slow_model")


def test_a_rolling_restart_under_load_loses_nothing_and_each_worker_hands_its_jobs_back_at_once(
    stack: Stack, tmp_path: Path
) -> None:
    """Two workers under a load above what they caption; each in turn is sent SIGTERM, as a deploy does, and replaced.
    A stopping worker ends the batch on its model, gives back the jobs it holds (Celery alone would run them all to
    the end first), and exits 0 within a few batches; every job ends `succeeded` with its captions, once."""
    stack.worker.stop()  # this test's workers are the test build
    images = {i: png_of(scene) for i, scene in enumerate(SCENES)}
    workers = [slow_worker(stack.settings, tmp_path / f"worker-{i}.log").start() for i in range(2)]
    submitted: list[tuple[str, list[str], float]] = []
    ended_at: dict[str, float] = {}
    stop_load = threading.Event()

    def submit(count: int, size: int) -> None:
        scenes = [(count + i) % 3 for i in range(size)]
        job = stack.client.submit([images[scene] for scene in scenes])
        submitted.append((job.id, [SCENES[scene].caption for scene in scenes], time.monotonic()))

    def load() -> None:  # a steady trickle of jobs of one or two images
        count = 0
        while not stop_load.wait(0.3):
            submit(count, 1 + count % 2)
            count += 1

    stops: list[float] = []
    try:
        for worker in workers:
            worker.wait_ready(120)
        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        for index in range(2):
            for burst in range(6):  # several batches' worth of jobs in each worker's hands
                submit(burst, 4)
            time.sleep(SLOW_BATCH_S)
            stopping = workers[index]
            asked_at = time.monotonic()
            stopping.signal(signal.SIGTERM)
            while stopping.alive() and time.monotonic() - asked_at < 60:
                time.sleep(0.05)
            stops.append(time.monotonic() - asked_at)
            assert stopping.returncode() == 0, stopping.log_tail()
            assert "goes back to the queue: This worker is stopping" in stopping.log_path.read_text(), \
                stopping.log_tail()
            workers[index] = slow_worker(stack.settings, tmp_path / f"worker-{index}-new.log").start()
            workers[index].wait_ready(120)
        stop_load.set()
        loader.join()
        results = []
        for job_id, captions, _ in submitted:
            results.append((stack.wait(job_id, timeout_s=120), captions))
            ended_at[job_id] = time.monotonic()
    finally:
        stop_load.set()
        for worker in workers:
            worker.stop()
    for job, captions in results:
        assert job.status == JobStatus.SUCCEEDED, job
        assert [(r.index, r.caption) for r in job.results] == list(enumerate(captions)), job
    # Each stop took the batch on the model and Celery's own shutdown, not the jobs the worker held.
    assert max(stops) <= 4 * SLOW_BATCH_S + 5, stops
    print(f"rolling restart: {len(submitted)} jobs, none lost; workers stopped in "
          f"{', '.join(f'{s:.1f}' for s in stops)} s after SIGTERM")


def test_an_api_asked_to_stop_ends_its_long_polls_at_once_and_loses_nothing_it_accepted(
    stack: Stack, tmp_path: Path
) -> None:
    """SIGTERM to the API while long polls wait on jobs no worker runs yet: each answers at once with the job as it
    is, rather than holding the process for its grace and then being cut off; the API exits 0; the jobs it accepted,
    one in that very request, run once a worker is back."""
    stack.worker.stop()  # nothing runs the jobs while the API stops
    image = base64.b64encode(png_of(SCENE)).decode()
    queued = stack.client.submit([png_of(SCENE)])
    answers: dict[str, requests.Response] = {}

    def long_poll(name: str, method: str, url: str, **kwargs: Any) -> None:
        answers[name] = stack.http.request(method, url, timeout=60, **kwargs)

    polls = [
        threading.Thread(target=long_poll, args=("get", "GET", f"{stack.url}/v1/jobs/{queued.id}?wait=30")),
        threading.Thread(target=long_poll, args=("post", "POST", f"{stack.url}/v1/jobs?wait=30"),
                         kwargs={"json": {"images": [image]}}),
    ]
    for poll in polls:
        poll.start()
    time.sleep(1.0)  # both are waiting on their jobs by now
    asked_at = time.monotonic()
    stack.api.signal(signal.SIGTERM)
    for poll in polls:
        poll.join(30)
    answered_s = time.monotonic() - asked_at
    while stack.api.alive() and time.monotonic() - asked_at < 40:
        time.sleep(0.05)
    exited_s = time.monotonic() - asked_at
    assert answers["get"].status_code == 200 and answers["get"].json()["status"] == "queued", answers["get"].text
    assert answers["post"].status_code == 202 and answers["post"].json()["status"] == "queued", answers["post"].text
    assert answered_s < 5, f"the long polls answered {answered_s:.1f} s after SIGTERM"
    assert stack.api.returncode() == 0 and exited_s < 10, (stack.api.returncode(), exited_s, stack.api.log_tail())

    stack.api.start().wait_ready(60)
    stack.worker = worker_process(stack.settings, tmp_path / "worker.log").start()
    stack.worker.wait_ready(120)
    for job_id in (queued.id, answers["post"].json()["id"]):
        done = stack.wait(job_id, timeout_s=60)
        assert done.status == JobStatus.SUCCEEDED and [r.caption for r in done.results] == [SCENE.caption], done
    print(f"API stop: long polls answered {answered_s:.1f} s, the process exited {exited_s:.1f} s after SIGTERM")


def test_a_bulk_object_that_kills_its_worker_fails_after_max_attempts_deaths_and_the_run_ends(
    stack: Stack, tmp_path: Path
) -> None:
    """The same test build of the worker, on a bucket of ten images in chunks of four, the sixth poisonous: the chunk
    holding it is blamed for the first death and runs carefully, one object at a time, so the next death is that
    object's alone, and it is failed without a third try (CAPTIONER_MAX_ATTEMPTS is 2 here)."""
    stack.worker.stop()  # this test's workers are the test build
    settings = stack.settings.model_copy(update={"bulk_chunk_size": 4, "bulk_lease_seconds": 4.0})
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name="us-east-1",
                      aws_access_key_id=S3_ACCESS_KEY, aws_secret_access_key=S3_SECRET_KEY,
                      config=Config(s3={"addressing_style": "path"}))
    bucket = f"poison-{int(time.time() * 1000)}"
    s3.create_bucket(Bucket=bucket)
    poisonous = "photos/05.png"
    expected = {f"photos/{i:02d}.png": SCENES[i % 3].caption for i in range(10) if f"photos/{i:02d}.png" != poisonous}
    for i in range(10):
        key = f"photos/{i:02d}.png"
        s3.put_object(Bucket=bucket, Key=key, Body=png_of(SCENES[i % 3]) + (POISON if key == poisonous else b""))
    with supervised_workers(settings, tmp_path, 1) as deaths:
        started = time.monotonic()
        job = stack.wait_bulk(stack.client.bulk(bucket, "photos/").id, timeout_s=120)
        took_s = time.monotonic() - started
    assert job.status == BulkStatus.PARTIAL, job
    assert (job.progress.captioned, job.progress.failed) == (9, 1), job.progress
    assert len(deaths) == settings.max_attempts and all(code < 0 for code in deaths), deaths  # SIGABRT, each time
    assert job.manifest_key is not None, job
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=job.manifest_key)["Body"].read())

    def lines(keys: list[str]) -> list[dict[str, Any]]:
        return [json.loads(line) for key in keys
                for line in s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines()]

    assert {line["key"]: line["caption"] for line in lines(manifest["result_files"])} == expected
    (failed,) = lines(manifest["error_files"])
    assert failed["key"] == poisonous and failed["error"]["code"] == "image_killed_workers", failed
    assert f"{settings.max_attempts} times" in failed["error"]["message"]
    # Of the objects, the poisonous one alone was blamed for a death; the chunks were blamed for the first only.
    records = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    blamed = records.hgetall(f"captioner:bulk:{job.id}:deaths")
    assert {field: count for field, count in blamed.items() if "/" in field} == {"1/1": "1"}, blamed
    assert set(blamed.values()) == {"1"}, blamed
    print(f"a bulk run of 10 images, one poisonous, ended {took_s:.1f} s after it started, {len(deaths)} workers lost")
