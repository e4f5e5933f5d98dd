"""Submit, batch across jobs, caption with the tiny BLIP, poll: real gunicorn, worker, Redis and S3.

Every caption is checked against what the same model says for that image alone, so a mixed-up batch, a
wrong order or broken preprocessing fails the test.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import pytest
import redis
from celery import Celery
from PIL import Image
from pytest_httpserver import HTTPServer

from captioner.client import AuthenticationError, BadRequestError, Client, NotFoundError
from common.bulk_schemas import BulkStatus
from common.queue import make_celery, send_turn
from common.schemas import CaptionTask, GenerationOptions, ImageRef, Job, JobStatus
from common.storage import ObjectStorage
from common.tenants import TenantStore
from common.usage import LaneCounts
from tests.conftest import GENEROUS, TINY_MODEL
from tests.fixtures.shapes import Scene, random_scene, render
from tests.integration.conftest import CAPTIONER, ROOT, TENANT, Stack, child_env, wait_bulk
from worker.model.captioner import BlipCaptioner
from worker.runtime import thread_decoding

pytestmark = pytest.mark.integration

SIZES = [(64, 64), (640, 480), (300, 500), (1024, 768), (1600, 1200)]
FORMS = ["multipart", "base64", "data_uri", "url"]
PROMPTS = [None, "a picture of", None, "a photo of", "a picture of"]


@cache
def reference_model() -> BlipCaptioner:
    return BlipCaptioner.load(str(TINY_MODEL), "cpu", "float32")


def caption_alone(data: bytes, prompt: str | None, options: dict[str, Any]) -> str:
    """What the model says for this one image, alone, with the options the service would use."""
    generation = GenerationOptions.model_validate(options).model_dump()
    return reference_model().caption([thread_decoding(reference_model()).decode(data)], prompt, generation)[0]


def encode(scene: Scene, size: tuple[int, int], fmt: str, rng: random.Random) -> bytes:
    buffer = io.BytesIO()
    render(scene, size, rng).save(buffer, format=fmt)
    return buffer.getvalue()


@dataclass
class PlannedJob:
    form: str
    prompt: str | None
    options: dict[str, Any]
    images: list[bytes] = field(default_factory=list)
    scenes: list[Scene | None] = field(default_factory=list)

    def submit(self, stack: Stack, server: HTTPServer, tag: str) -> Job:
        if self.form == "multipart":  # the one form the client does not send: its parts, by hand
            files = [("images", (f"{i}.img", data, "application/octet-stream"))
                     for i, data in enumerate(self.images)]
            form = {"prompt": self.prompt} if self.prompt else {}
            if self.options:
                form["options"] = json.dumps(self.options)
            response = stack.http.post(f"{stack.url}/v1/jobs", files=files, data=form, timeout=30)
            assert response.status_code == 202, response.text
            return Job.model_validate(response.json())
        images: list[str | bytes] = []
        for i, data in enumerate(self.images):
            if self.form == "base64":
                images.append(data)  # the client sends bytes as base64
            elif self.form == "data_uri":
                images.append(f"data:image/jpeg;base64,{base64.b64encode(data).decode()}")
            else:
                path = f"/images/{tag}/{i}"
                server.expect_request(path).respond_with_data(data, content_type="image/jpeg")
                images.append(server.url_for(path))
        return stack.client.submit(images, self.prompt, **self.options)


def plan_jobs(count: int, images_per_job: int, rng: random.Random) -> list[PlannedJob]:
    jobs = []
    for j in range(count):
        options = {"max_new_tokens": 16} if j % 3 == 2 else {}
        job = PlannedJob(FORMS[j % len(FORMS)], PROMPTS[j % len(PROMPTS)], options)
        for _ in range(images_per_job):
            scene = random_scene(rng)
            job.scenes.append(scene)
            job.images.append(encode(scene, rng.choice(SIZES), rng.choice(["JPEG", "PNG"]), rng))
        jobs.append(job)
    return jobs


def test_concurrent_jobs_in_every_form_get_the_captions_of_images_alone(
    stack: Stack, httpserver: HTTPServer, batch_sizes: Callable[[], list[int]]
) -> None:
    rng = random.Random(20261129)
    jobs = plan_jobs(count=12, images_per_job=3, rng=rng)
    # One corrupt image (a truncated JPEG) in the middle of a job: it alone must fail.
    corrupt = encode(random_scene(rng), (640, 480), "JPEG", rng)[:900]
    jobs[5].images.insert(1, corrupt)
    jobs[5].scenes.insert(1, None)
    # Uploads of both kinds: small ones kept with their job in Redis, large ones in S3.
    uploads = [len(data) for job in jobs if job.form != "url" for data in job.images]
    assert min(uploads) <= stack.settings.redis_upload_max_bytes < max(uploads)

    with ThreadPoolExecutor(len(jobs)) as pool:
        submitted = list(pool.map(lambda jt: jt[1].submit(stack, httpserver, str(jt[0])), enumerate(jobs)))
        finished = list(pool.map(lambda job: stack.wait(job.id), submitted))

    agreement = []
    for plan, job in zip(jobs, finished, strict=True):
        assert job.status == JobStatus.SUCCEEDED, job
        assert [r.index for r in job.results] == list(range(len(plan.images)))
        for result, data, scene in zip(job.results, plan.images, plan.scenes, strict=True):
            if scene is None:
                # No caption in the answer at all (not even null).
                assert result.error is not None and result.error.code == "invalid_image", result
                assert "caption" not in result.model_fields_set, result
                continue
            assert result.caption == caption_alone(data, plan.prompt, plan.options)
            expected = f"{plan.prompt} {scene.caption}" if plan.prompt else scene.caption
            agreement.append(result.caption == expected)
        assert job.prompt == plan.prompt
        assert job.started_at and job.completed_at
    # The model is real: it names what is in the picture (so a shuffled batch could not pass).
    assert sum(agreement) >= 0.9 * len(agreement)
    assert len(agreement) >= 36
    # Images of different jobs shared batches.
    assert max(batch_sizes()) > 3


def test_a_job_whose_images_all_fail_is_failed_with_per_image_errors(
    stack: Stack, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/missing.jpg").respond_with_data("", status=404)
    job = stack.client.submit([b"not an image", httpserver.url_for("/missing.jpg")])
    done = stack.wait(job.id)
    assert done.status == JobStatus.FAILED
    assert done.error is not None and done.error.code == "all_images_failed"
    assert [r.error.code if r.error else None for r in done.results] == ["invalid_image", "image_fetch_failed"]


def test_a_task_delivered_twice_changes_nothing(stack: Stack) -> None:
    rng = random.Random(5)
    data = encode(random_scene(rng), (320, 240), "PNG", rng)
    job = stack.client.submit([data])
    first = stack.wait(job.id)
    celery: Celery = make_celery(stack.settings)
    # A turn that took this job, redelivered as the broker would after its worker died before the ack, and a
    # turn with nothing left to take: the worker must run both without changing or crashing anything.
    again = CaptionTask(job_id=job.id, images=[ImageRef(index=0, stored_with_job=True)], tenant=TENANT)
    redelivered = "turn-" + job.id
    redis.Redis.from_url(stack.settings.redis_url).set(f"captioner:fair:turn:{redelivered}", again.model_dump_json())
    task_ids = [send_turn(celery, redelivered), send_turn(celery)]
    deadline = time.monotonic() + 30
    while not all(f"[{t}] succeeded" in stack.worker.log_path.read_text() for t in task_ids):
        assert time.monotonic() < deadline, stack.worker.log_tail()
        time.sleep(0.1)
    assert stack.client.get(job.id) == first
    assert stack.worker.alive()


def test_a_waiting_read_answers_when_the_job_ends_with_its_stage_times(stack: Stack) -> None:
    data = encode(Scene("circle", "red", "blue"), (64, 64), "PNG", random.Random(0))
    url = f"{stack.url}/v1/jobs/{stack.client.submit([data]).id}"
    started = time.monotonic()
    # ?wait= by hand, one request: the client's wait would ask again after an answer that came too early.
    ended = stack.http.get(url, params={"wait": 30}, timeout=60).json()
    assert ended["status"] == "succeeded" and time.monotonic() - started < 20  # woken, not timed out
    timings = ended["timings"]
    assert timings["model_ms"] > 0 and timings["queue_ms"] >= 0 and timings["fetch_decode_ms"] > 0
    assert timings["record_ms"] >= 0 and timings["batch_wait_ms"] >= 0
    # A wait on a job that has ended answers at once; a bad wait is refused.
    assert stack.http.get(url, params={"wait": 30}, timeout=5).status_code == 200
    assert stack.http.get(url, params={"wait": "soon"}, timeout=5).status_code == 400
    assert stack.http.get(url, params={"wait": 31}, timeout=5).status_code == 400


def test_a_waiting_submission_answers_with_the_finished_job(stack: Stack) -> None:
    data = encode(Scene("triangle", "yellow", "black"), (64, 64), "PNG", random.Random(1))
    files = {"images": ("x.png", data, "image/png")}
    started = time.monotonic()
    response = stack.http.post(f"{stack.url}/v1/jobs", params={"wait": 30}, files=files, timeout=60)
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "succeeded" and time.monotonic() - started < 20  # woken, not timed out
    assert [r["caption"] for r in job["results"]] == [caption_alone(data, None, {})]
    assert response.headers["Location"].endswith(f"/v1/jobs/{job['id']}")
    # A wait too short for the job: 202 with the job as it was, which still finishes.
    response = stack.http.post(f"{stack.url}/v1/jobs", params={"wait": 0.001}, files=files, timeout=60)
    assert response.status_code == 202 and response.json()["status"] in ("queued", "running")
    assert stack.wait(response.json()["id"]).status == JobStatus.SUCCEEDED
    # A bad wait is refused before anything is stored or queued.
    response = stack.http.post(f"{stack.url}/v1/jobs", params={"wait": 31}, files=files, timeout=5)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"


def test_a_tenant_s_job_and_bulk_run_show_in_its_usage_and_nobody_else_s(stack: Stack) -> None:
    keys = TenantStore.from_url(stack.settings.redis_url)
    mine, other = (keys.create_key(f"usage-{uuid.uuid4().hex[:8]}", limits=GENEROUS) for _ in range(2))
    rng = random.Random(16)
    images = [encode(random_scene(rng), (64, 64), "PNG", rng) for _ in range(4)]
    prefix = f"usage-{uuid.uuid4().hex[:8]}/"
    storage = ObjectStorage.from_settings(stack.settings)
    for i, data in enumerate([*images[1:], b"not an image either"]):
        storage.put(f"{prefix}{i}.png", data, "image/png")
    since = datetime.now(UTC).date() - timedelta(days=1)  # a run across midnight is counted too

    with Client(stack.url, mine.key) as client:
        job = client.wait(client.submit([images[0], b"not an image"]).id, timeout_s=60)
        assert job.status == JobStatus.SUCCEEDED, job
        bulk = wait_bulk(client, client.bulk(stack.settings.s3_bucket, prefix).id, timeout_s=120)
        assert bulk.status == BulkStatus.PARTIAL, bulk
        usage = client.usage(start=since)
    assert usage.tenant == mine.record.tenant and usage.start == since and len(usage.data) == 2
    for lane, (captioned, failed) in (("interactive", (1, 1)), ("bulk", (3, 1))):
        counts = getattr(usage.total, lane)
        assert (counts.jobs, counts.images_captioned, counts.images_failed) == (1, captioned, failed)
        assert counts.tokens_generated >= captioned and counts.model_seconds > 0, usage
    # The operator's view is the tenant's, and another tenant has none of it.
    cli = subprocess.run([*CAPTIONER, "keys", "usage", "--tenant", mine.record.tenant, "--start", since.isoformat(),
                          "--json"], env=child_env(stack.settings), cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=False)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == [usage.model_dump(mode="json")]
    with Client(stack.url, other.key) as theirs:
        assert theirs.usage().total == LaneCounts()  # every count of both lanes 0


def test_uploads_leave_s3_once_the_job_ends_and_delete_removes_the_job(stack: Stack) -> None:
    buffer = io.BytesIO()
    Image.frombytes("RGB", (96, 96), random.Random(7).randbytes(96 * 96 * 3)).save(buffer, format="PNG")
    image = buffer.getvalue()
    assert len(image) > stack.settings.redis_upload_max_bytes  # noise does not compress: it goes to S3
    job = stack.wait(stack.client.submit([image]).id)
    assert job.status == JobStatus.SUCCEEDED, job
    assert job.results[0].caption == caption_alone(image, None, {})

    storage = ObjectStorage.from_settings(stack.settings)
    key = f"uploads/{job.id}/0"
    deadline = time.monotonic() + 15  # the worker's sweeper polls every second
    while key in {obj.key for obj in storage.list_objects("uploads/")} and time.monotonic() < deadline:
        time.sleep(0.2)
    assert key not in {obj.key for obj in storage.list_objects("uploads/")}, stack.worker.log_tail()

    stack.client.delete(job.id)
    with pytest.raises(NotFoundError) as gone:
        stack.client.get(job.id)
    assert gone.value.status == 404


# The Python client (captioner/client.py) against the same stack.


def png_of(scene: Scene) -> bytes:
    return encode(scene, (96, 96), "PNG", random.Random(0))


def test_the_client_captions_a_file_bytes_and_a_url_with_the_model_s_captions(
    stack: Stack, httpserver: HTTPServer, tmp_path: Any
) -> None:
    scenes = [Scene("circle", "red", "white"), Scene("square", "blue", "white"), Scene("triangle", "green", "black")]
    pngs = [png_of(scene) for scene in scenes]
    path = tmp_path / "photo.png"
    path.write_bytes(pngs[0])
    httpserver.expect_request("/shape.png").respond_with_data(pngs[2], content_type="image/png")
    with Client(stack.url, stack.key.key) as client:
        assert client.caption(path) == caption_alone(pngs[0], None, {}) == scenes[0].caption
        assert client.caption(pngs[1]) == scenes[1].caption
        assert client.caption(httpserver.url_for("/shape.png")) == scenes[2].caption
        prompted = client.caption(pngs[1], "a picture of", max_new_tokens=20)
        assert prompted == caption_alone(pngs[1], "a picture of", {"max_new_tokens": 20})


def test_the_client_s_job_calls_and_typed_errors(stack: Stack) -> None:
    scene = Scene("square", "green", "white")
    with Client(stack.url, stack.key.key) as client:
        job = client.submit([png_of(scene), b"not an image"])
        assert job.status == JobStatus.QUEUED and job.num_images == 2
        done = client.wait(job.id, timeout_s=60)
        assert done.status == JobStatus.SUCCEEDED and client.get(job.id) == done
        assert done.results[0].caption == scene.caption
        assert done.results[1].error is not None and done.results[1].error.code == "invalid_image"
        assert client.cancel(job.id).status == JobStatus.SUCCEEDED  # an ended job is answered as it is
        listed = [listed.id for listed, _ in zip(client.jobs(page_size=2), range(50), strict=False)]
        assert job.id in listed and len(listed) == len(set(listed))
        assert client.usage().total.interactive.images_captioned >= 1
        client.delete(job.id)
        with pytest.raises(NotFoundError) as missing:
            client.get(job.id)
        assert missing.value.status == 404 and missing.value.code == "not_found"
        with pytest.raises(BadRequestError) as bad:
            client.submit([])
        assert bad.value.code in ("invalid_request", "validation_failed")
    with pytest.raises(AuthenticationError) as refused, Client(stack.url, "cap_not_a_key") as stranger:
        stranger.get(job.id)
    assert refused.value.code == "unauthorized"


def test_captioner_caption_captions_a_folder_and_resumes_after_ctrl_c_repeating_none(
    stack: Stack, tmp_path: Any
) -> None:
    """`captioner caption FOLDER --out FILE` as a user runs it: interrupted with Ctrl-C part way, then run again; the
    file ends with every image once, each with the tiny model's caption (a bad file with its error), exit code 1."""
    scenes = [Scene("circle", "red", "white"), Scene("square", "blue", "white"), Scene("triangle", "green", "black")]
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    expected = {}
    for i in range(30):
        path = folder / ("more" if i % 4 == 0 else "") / f"img-{i:02d}.png"
        path.write_bytes(png_of(scenes[i % 3]))
        expected[str(path)] = scenes[i % 3].caption
    (folder / "bad.png").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("not an image, and not named as one")
    out = tmp_path / "captions.jsonl"
    env = {**os.environ, "CAPTIONER_API_URL": stack.url, "CAPTIONER_API_KEY": stack.key.key}
    command = [*CAPTIONER, "caption", str(folder), "--out", str(out), "--json", "--concurrency", "2"]
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while (not out.exists() or len(out.read_text().splitlines()) < 8) and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    _, first_err = first.communicate(timeout=60)
    assert first.returncode == 130, first_err
    written = len(out.read_text().splitlines())
    assert 8 <= written < 31, first_err  # it stopped part way

    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert second.returncode == 1, second.stderr  # bad.png failed
    assert f"{written} of 31 already in" in second.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    paths = [line["path"] for line in lines]
    assert sorted(paths) == sorted([*expected, str(folder / "bad.png")])  # each once: nothing repeated
    assert {line["path"]: line["caption"] for line in lines if "caption" in line} == expected
    (bad,) = [line for line in lines if "error" in line]
    assert bad["path"].endswith("bad.png") and bad["error"]["code"] == "invalid_image" and bad["job_id"]
    assert len(second.stdout.splitlines()) == 31 - written  # JSON lines of what it captioned itself
