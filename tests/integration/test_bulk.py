"""Bulk captioning of a real bucket (2,000+ objects in a real S3 server) by a real worker and API.

The tests run in order and share the bucket: a first run, a re-run that captions nothing, a run after 15
objects changed, a run that survives a SIGKILLed worker, an interactive job beside a bulk run, and a dry run.
"""

from __future__ import annotations

import base64
import io
import json
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import boto3
import openai
import pytest
import requests
from botocore.config import Config

from common.bulk_schemas import BulkJob, BulkStatus
from common.schemas import JobStatus
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY, TINY_MODEL, Services, settings_for
from tests.fixtures.shapes import random_scene, render
from tests.integration.conftest import Stack, running_stack, worker_process
from tests.integration.test_openai_sdk import answered_once, batch_line, upload_batch, wait_batch
from worker.model.captioner import BlipCaptioner
from worker.runtime import thread_decoding

pytestmark = pytest.mark.integration

PREFIX = "set/"
OUTPUT_PREFIX = f"captioner-results/{PREFIX}"  # the default output: beside the source
SIZES = [(32, 32), (48, 64), (96, 72), (120, 160), (200, 150)]
IMAGES, CORRUPT, OTHER = 1000, 24, 30  # 1,054 objects in all: 11 chunks of 100, past the window of 6


@cache
def reference_model() -> BlipCaptioner:
    return BlipCaptioner.load(str(TINY_MODEL), "cpu", "float32")


@cache  # test_gpu_options.py makes the same bucket again: its images are captioned once
def caption_alone(data: bytes) -> str:
    return reference_model().caption([thread_decoding(reference_model()).decode(data)])[0]


def image_bytes(rng: random.Random, fmt: str) -> bytes:
    buffer = io.BytesIO()
    render(random_scene(rng), rng.choice(SIZES), rng).save(buffer, format=fmt)
    return buffer.getvalue()


@dataclass
class Bucket:
    name: str
    client: Any
    images: dict[str, bytes] = field(default_factory=dict)  # key -> bytes of every valid image
    corrupt: set[str] = field(default_factory=set)
    other: set[str] = field(default_factory=set)
    expected: dict[str, str] = field(default_factory=dict)  # key -> the model's caption for it alone

    def put(self, objects: dict[str, bytes]) -> None:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda kv: self.client.put_object(Bucket=self.name, Key=kv[0], Body=kv[1]),
                          objects.items()))

    def text(self, key: str) -> str:
        return str(self.client.get_object(Bucket=self.name, Key=key)["Body"].read().decode())

    def etag(self, key: str) -> str:
        return str(self.client.head_object(Bucket=self.name, Key=key)["ETag"].strip('"'))

    def manifest(self) -> dict[str, Any]:
        manifest: dict[str, Any] = json.loads(self.text(f"{OUTPUT_PREFIX}manifest.json"))
        return manifest

    def lines(self, files: list[str]) -> list[dict[str, Any]]:
        return [json.loads(line) for key in files for line in self.text(key).splitlines()]


def make_objects(rng: random.Random) -> tuple[dict[str, bytes], set[str], set[str]]:
    objects: dict[str, bytes] = {}
    for i in range(IMAGES):
        fmt, ext = (("JPEG", "jpg"), ("PNG", "png"))[i % 2]
        folder = f"{PREFIX}{i % 7}/" if i % 3 else PREFIX
        objects[f"{folder}img-{i:05d}.{ext.upper() if i % 11 == 0 else ext}"] = image_bytes(rng, fmt)
    corrupt = set()
    for i in range(CORRUPT):
        key = f"{PREFIX}broken/bad-{i:03d}.{'jpg' if i % 2 else 'png'}"
        good = image_bytes(rng, "JPEG" if i % 2 else "PNG")
        objects[key] = good[: len(good) // 3] if i % 3 else b"not an image at all"
        corrupt.add(key)
    other = set()
    for i in range(OTHER):
        key = f"{PREFIX}{'notes' if i % 2 else 'meta'}/file-{i}.{('txt', 'json', 'csv')[i % 3]}"
        objects[key] = b"neither an image nor matched by the include patterns"
        other.add(key)
    return objects, corrupt, other


@pytest.fixture(scope="module")
def bucket(services: Services) -> Bucket:
    client = boto3.client(
        "s3", endpoint_url=services.s3_endpoint_url, region_name="us-east-1",
        aws_access_key_id=S3_ACCESS_KEY, aws_secret_access_key=S3_SECRET_KEY,
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=32),
    )
    name = f"photos-{random.Random().randrange(10**8):08d}"
    client.create_bucket(Bucket=name)
    objects, corrupt, other = make_objects(random.Random(4))
    found = Bucket(name, client, corrupt=corrupt, other=other)
    found.put(objects)
    found.images = {k: v for k, v in objects.items() if k not in corrupt and k not in other}
    found.expected = {key: caption_alone(data) for key, data in found.images.items()}
    return found


@pytest.fixture(scope="module")
def bulk_stack(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = settings_for(
        services, batch_size=32, batch_wait_ms=20, bulk_chunk_size=100, bulk_max_queued_chunks=6,
        bulk_lease_seconds=3.0, bulk_concurrency=2, bulk_fetch_threads=8,
    )
    with running_stack(settings, tmp_path_factory.mktemp("bulk")) as stack:
        yield stack


def start_bulk(stack: Stack, bucket: Bucket, **request: Any) -> str:
    """A bulk run over the bucket's PREFIX started; its id."""
    return stack.client.bulk(bucket.name, PREFIX, **request).id


def check_complete_results(bucket: Bucket, job: BulkJob) -> list[dict[str, Any]]:
    """The manifest's files hold every valid image once with its caption alone; errors hold the corrupt."""
    manifest = bucket.manifest()
    assert manifest["bulk_id"] == job.id and manifest["complete"]
    assert job.manifest_key == manifest["manifest_key"]
    lines = bucket.lines(manifest["result_files"])
    keys = [line["key"] for line in lines]
    assert len(keys) == len(set(keys)), "an object appears twice in the results"
    assert set(keys) == set(bucket.images)
    wrong = {line["key"]: line["caption"] for line in lines if line["caption"] != bucket.expected[line["key"]]}
    assert not wrong, f"{len(wrong)} captions differ from the model's caption alone, e.g. {list(wrong.items())[:3]}"
    assert all(line["model"] == str(TINY_MODEL) and line["prompt"] is None for line in lines)
    errors = bucket.lines(manifest["error_files"])
    assert {e["key"] for e in errors} == bucket.corrupt
    assert {e["error"]["code"] for e in errors} == {"invalid_image"}
    assert manifest["counts"]["objects"] == len(bucket.images) + len(bucket.corrupt)
    return lines


def test_every_image_of_the_bucket_gets_one_result_line(bulk_stack: Stack, bucket: Bucket) -> None:
    job = bulk_stack.wait_bulk(start_bulk(bulk_stack, bucket))
    assert job.status == BulkStatus.PARTIAL, job  # the corrupt images failed
    progress = job.progress
    assert progress.discovered == len(bucket.images) + len(bucket.corrupt)
    assert (progress.captioned, progress.failed, progress.skipped) == (len(bucket.images), len(bucket.corrupt), 0)
    assert progress.listing_complete and progress.in_flight == 0
    assert progress.images_per_second is not None and progress.images_per_second > 0
    lines = check_complete_results(bucket, job)
    assert {line["etag"] for line in lines} >= {bucket.etag(next(iter(bucket.images)))}
    # Non-matching keys are not touched: in no results or errors file, and still there, unchanged.
    assert all(bucket.text(key).startswith("neither") for key in bucket.other)


def test_a_rerun_captions_nothing_again(bulk_stack: Stack, bucket: Bucket) -> None:
    job = bulk_stack.wait_bulk(start_bulk(bulk_stack, bucket))
    progress = job.progress
    assert (progress.captioned, progress.skipped) == (0, len(bucket.images)), progress
    assert progress.failed == len(bucket.corrupt)  # failed images are tried again, and fail again
    check_complete_results(bucket, job)  # the new run's files still hold every caption


def test_changed_and_new_objects_and_only_they_are_captioned(bulk_stack: Stack, bucket: Bucket) -> None:
    rng = random.Random(99)
    changed = sorted(bucket.images)[::len(bucket.images) // 10][:10]
    added = [f"{PREFIX}new/added-{i}.{'png' if i % 2 else 'jpg'}" for i in range(5)]
    objects = {key: image_bytes(rng, "PNG" if key.lower().endswith("png") else "JPEG") for key in changed + added}
    bucket.put(objects)
    bucket.images.update(objects)
    bucket.expected.update({key: caption_alone(data) for key, data in objects.items()})

    job = bulk_stack.wait_bulk(start_bulk(bulk_stack, bucket))
    assert job.progress.captioned == 15, job.progress
    assert job.progress.skipped == len(bucket.images) - 15
    lines = {line["key"]: line for line in check_complete_results(bucket, job)}
    assert all(lines[key]["etag"] == bucket.etag(key) for key in changed + added)


def batched_images(log: Path, offset: int = 0) -> int:
    """Images the worker logging there has given the model, counted from byte `offset` of its log."""
    text = log.read_bytes()[offset:].decode(errors="replace")
    return sum(int(line.split("captioned a batch of ")[1].split()[0])
               for line in text.splitlines() if "captioned a batch of " in line)


def test_a_run_survives_a_sigkilled_worker_and_api(bulk_stack: Stack, bucket: Bucket, tmp_path: Path) -> None:
    old_log = bulk_stack.worker.log_path
    offset = old_log.stat().st_size
    bulk_id = start_bulk(bulk_stack, bucket, incremental=False)
    deadline = time.monotonic() + 120
    while (job := bulk_stack.client.bulk_status(bulk_id)).progress.captioned < 300:
        assert job.status in (BulkStatus.RUNNING, BulkStatus.QUEUED), job
        assert time.monotonic() < deadline, bulk_stack.worker.log_tail()
        time.sleep(0.02)
    bulk_stack.worker.kill()
    bulk_stack.api.kill()
    bulk_stack.api.start().wait_ready(60)
    assert bulk_stack.client.bulk_status(bulk_id).status == BulkStatus.RUNNING
    bulk_stack.worker = worker_process(bulk_stack.settings, tmp_path / "worker-2.log").start()
    bulk_stack.worker.wait_ready(120)
    job = bulk_stack.wait_bulk(bulk_id)
    assert job.status == BulkStatus.PARTIAL
    assert job.progress.captioned == len(bucket.images) and job.progress.skipped == 0
    check_complete_results(bucket, job)
    # Finished chunks were not redone: at most the chunks in progress at the kill ran twice.
    redone = batched_images(old_log, offset) + batched_images(bulk_stack.worker.log_path) - len(bucket.images)
    assert redone < 2 * 100 + 2 * 32 + len(bucket.corrupt), redone  # two chunks, plus batches in the model


def test_an_openai_batch_survives_a_sigkilled_worker_and_api(
    bulk_stack: Stack, bucket: Bucket, tmp_path: Path
) -> None:
    """A batch (OpenAI's Batch API) runs on this lane: killed mid-way, it completes, every request answered once."""
    keys = sorted(bucket.images)[:600]
    lines = [batch_line(key, "data:image/png;base64," + base64.b64encode(bucket.images[key]).decode()) for key in keys]
    with openai.OpenAI(base_url=f"{bulk_stack.url}/v1", api_key=bulk_stack.key.key, max_retries=2) as sdk:
        batch_id = upload_batch(sdk, lines, tmp_path).id
        deadline = time.monotonic() + 120
        while (batch := sdk.batches.retrieve(batch_id)).request_counts.completed < 100:  # type: ignore[union-attr]
            assert batch.status in ("validating", "in_progress"), batch
            assert time.monotonic() < deadline, bulk_stack.worker.log_tail()
            time.sleep(0.02)
        bulk_stack.worker.kill()
        bulk_stack.api.kill()
        bulk_stack.api.start().wait_ready(60)
        assert sdk.batches.retrieve(batch_id).status == "in_progress"
        bulk_stack.worker = worker_process(bulk_stack.settings, tmp_path / "worker-2.log").start()
        bulk_stack.worker.wait_ready(120)
        batch = wait_batch(sdk, batch_id)
        assert batch.status == "completed", batch
        output, errors = answered_once(sdk, batch, keys)
    assert errors == [] and batch.request_counts is not None and batch.request_counts.completed == len(keys)
    wrong = [line["custom_id"] for line in output
             if line["response"]["body"]["choices"][0]["message"]["content"] != bucket.expected[line["custom_id"]]]
    assert not wrong, f"{len(wrong)} captions differ from the model's caption alone"


def test_an_empty_prefix_is_a_succeeded_run_with_nothing_in_it(bulk_stack: Stack, bucket: Bucket) -> None:
    job = bulk_stack.wait_bulk(bulk_stack.client.bulk(bucket.name, "nothing-here/").id)
    assert job.status == BulkStatus.SUCCEEDED and job.progress.discovered == 0
    manifest = json.loads(bucket.text("captioner-results/nothing-here/manifest.json"))
    assert manifest["counts"]["objects"] == 0 and manifest["result_files"] == []


def submit_one_image(stack: Stack, data: bytes) -> float:
    """Seconds from submitting a one-image job to seeing its caption."""
    started = time.monotonic()
    finished = stack.wait(stack.client.submit([data]).id, timeout_s=60)
    assert finished.status == JobStatus.SUCCEEDED, finished
    return time.monotonic() - started


def test_an_interactive_job_is_not_queued_behind_a_bulk_run(bulk_stack: Stack, bucket: Bucket) -> None:
    data = image_bytes(random.Random(5), "PNG")
    idle = sorted(submit_one_image(bulk_stack, data) for _ in range(3))[1]
    bulk_id = start_bulk(bulk_stack, bucket, incremental=False)
    while bulk_stack.client.bulk_status(bulk_id).progress.captioned < 100:
        time.sleep(0.02)
    busy = [submit_one_image(bulk_stack, data) for _ in range(3)]
    still = bulk_stack.client.bulk_status(bulk_id)
    assert still.status == BulkStatus.RUNNING, "the bulk run ended before the interactive jobs: nothing was shown"
    assert sorted(busy)[1] < max(4 * idle, idle + 1.0), (idle, busy)

    # The client has no call for this one.
    canceled = bulk_stack.http.post(f"{bulk_stack.url}/v1/bulk/{bulk_id}/cancel", timeout=10).json()
    assert canceled["status"] == "canceled"
    bulk_stack.wait_bulk(bulk_id)
    deadline = time.monotonic() + 30
    while (job := bulk_stack.client.bulk_status(bulk_id)).manifest_key is None:
        assert time.monotonic() < deadline, "a canceled run wrote no manifest"
        time.sleep(0.2)
    manifest = json.loads(bucket.text(job.manifest_key))
    assert manifest["status"] == "canceled" and not manifest["complete"]
    assert bucket.manifest()["bulk_id"] != bulk_id  # an incomplete run is not what the next run reuses
    kept = bucket.lines(manifest["result_files"])
    assert all(line["caption"] == bucket.expected[line["key"]] for line in kept)


def test_a_dry_run_counts_without_captioning(bulk_stack: Stack, bucket: Bucket) -> None:
    newest = bucket.manifest()["bulk_id"]
    job = bulk_stack.wait_bulk(start_bulk(bulk_stack, bucket, dry_run=True))
    assert job.status == BulkStatus.SUCCEEDED, job
    report = job.dry_run_report
    assert report is not None, job
    listed = bucket.client.list_objects_v2(Bucket=bucket.name, Prefix=PREFIX, MaxKeys=1000)
    assert report.objects >= listed["KeyCount"]
    assert report.matched == len(bucket.images) + len(bucket.corrupt)
    assert report.would_skip == len(bucket.images) and report.to_caption == len(bucket.corrupt)
    assert report.estimated_seconds is not None
    assert job.progress.captioned == 0
    assert bucket.manifest()["bulk_id"] == newest  # a dry run writes nothing


def test_bulk_requests_that_cannot_work_are_refused(bulk_stack: Stack, bucket: Bucket) -> None:
    def post(body: Any) -> requests.Response:
        return bulk_stack.http.post(f"{bulk_stack.url}/v1/bulk", json=body, timeout=10)

    assert post({"source": {"bucket": "no-such-bucket-here"}}).status_code == 422
    assert post({"source": {"bucket": "Not_A_Bucket"}}).status_code == 422
    assert post({"source": {"bucket": bucket.name}, "surprise": 1}).status_code == 422
    assert post({"source": {"bucket": bucket.name}, "options": {"num_beams": 99}}).status_code == 422
    assert post({"source": {"bucket": bucket.name}, "prompt": "  "}).status_code == 422
    refused = post({"source": {"bucket": bucket.name}, "webhook": {"url": "http://x", "events": ["job.succeeded"]}})
    assert refused.status_code in (400, 422), refused.text
    assert bulk_stack.http.post(f"{bulk_stack.url}/v1/bulk", data="x", timeout=10).status_code == 415
    assert bulk_stack.http.get(f"{bulk_stack.url}/v1/bulk/{'0' * 32}", timeout=10).status_code == 404
