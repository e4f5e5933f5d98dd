"""One job through the pipeline, with the real job store and batcher and a stand-in model and source."""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from PIL import Image

from common.errors import DeviceFailure, ImageFetchError, WorkerStopping
from common.jobstore import JobStore
from common.schemas import CaptionTask, GenerationOptions, ImageRef, ImageResult, JobStatus
from common.settings import Settings
from common.usage import UsageStore
from worker.decode.base import BatchItem, DeviceJpeg
from worker.decode.threads import ThreadDecoding
from worker.jobs.batches import BatchKey, CaptionBatcher
from worker.jobs.batching import DynamicBatcher
from worker.jobs.pipeline import PipelineDeps, run_caption_task
from worker.model.output import Caption


def png(width: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, 8)).save(buffer, format="PNG")
    return buffer.getvalue()


class FakeSource:
    """Images keyed by name; 'missing' raises the per-image error a vanished upload gives."""

    def __init__(self) -> None:
        self.loaded: list[str] = []

    def locate(self, job_id: str, ref: ImageRef) -> bytes:
        assert ref.key is not None
        self.loaded.append(ref.key)
        if ref.key == "missing":
            raise ImageFetchError("gone")
        if ref.key == "corrupt":
            return b"not an image"
        return png(int(ref.key))


def describe(key: BatchKey, images: list[BatchItem]) -> list[Caption]:
    """A stand-in model: the caption names the image's width and the prompt, in as many tokens as it is wide
    in tens of pixels."""
    return [Caption(f"{key.prompt or ''}{width(image)}px", width(image) // 10) for image in images]


def width(image: BatchItem) -> int:
    assert not isinstance(image, DeviceJpeg)  # this worker decodes every image on the CPU
    return image.width if isinstance(image, Image.Image) else image.shape[1]


@pytest.fixture
def deps(settings: Settings) -> Iterator[PipelineDeps]:
    batcher: CaptionBatcher = DynamicBatcher(describe, 8, 0.01).start()
    yield PipelineDeps(JobStore.from_url(settings.redis_url, 600), FakeSource(), batcher,  # type: ignore[arg-type]
                       ThreadDecoding())
    batcher.stop(timeout=5)


def make_task(deps: PipelineDeps, keys: list[str], prompt: str | None = None) -> CaptionTask:
    job_id = uuid.uuid4().hex
    deps.jobs.create(job_id, len(keys), prompt, GenerationOptions(), tenant="tests")
    refs = [ImageRef(index=i, key=key) for i, key in enumerate(keys)]
    return CaptionTask(job_id=job_id, images=refs, prompt=prompt)


def test_every_image_gets_its_own_outcome_in_order(deps: PipelineDeps) -> None:
    task = make_task(deps, ["10", "corrupt", "30", "missing"], prompt="p:")
    assert run_caption_task(task, deps) == JobStatus.SUCCEEDED
    results = deps.jobs.get(task.job_id, tenant=None).results
    assert [r.caption for r in results] == ["p:10px", None, "p:30px", None]
    assert [r.error.code for r in results if r.error] == ["invalid_image", "image_fetch_failed"]


def test_a_redelivered_task_skips_images_that_have_results(deps: PipelineDeps) -> None:
    task = make_task(deps, ["10", "20"])
    # The first delivery recorded image 0, then its worker died.
    deps.jobs.mark_running(task.job_id)
    deps.jobs.record_result(task.job_id, ImageResult(index=0, caption="from the first run"))
    source = deps.source
    assert isinstance(source, FakeSource)
    assert run_caption_task(task, deps) == JobStatus.SUCCEEDED
    assert source.loaded == ["20"]
    assert [r.caption for r in deps.jobs.get(task.job_id, tenant=None).results] == ["from the first run", "20px"]
    source.loaded.clear()
    assert run_caption_task(task, deps) == JobStatus.SUCCEEDED  # and again, once finished
    assert source.loaded == []


def test_a_canceled_job_is_not_captioned(deps: PipelineDeps) -> None:
    task = make_task(deps, ["10"])
    deps.jobs.finish(task.job_id, JobStatus.CANCELED)
    assert run_caption_task(task, deps) == JobStatus.CANCELED
    assert deps.jobs.get(task.job_id, tenant=None).results == []


def test_an_unknown_job_is_dropped(deps: PipelineDeps) -> None:
    task = CaptionTask(job_id=uuid.uuid4().hex, images=[ImageRef(index=0, key="10")])
    assert run_caption_task(task, deps) is None


def test_a_broken_device_sends_the_job_back_unrecorded(settings: Settings) -> None:
    """A WorkerFailure is not a per-image error: the task raises it and leaves the job to another worker."""

    def broken(key: BatchKey, images: list[BatchItem]) -> list[Caption]:
        raise DeviceFailure("The device failed: CUDA error: an illegal memory access was encountered")

    batcher: CaptionBatcher = DynamicBatcher(broken, 8, 0.01).start()
    deps = PipelineDeps(JobStore.from_url(settings.redis_url, 600), FakeSource(), batcher,  # type: ignore[arg-type]
                        ThreadDecoding())
    try:
        task = make_task(deps, ["10", "missing", "20"])
        with pytest.raises(DeviceFailure):
            run_caption_task(task, deps)
        job = deps.jobs.get(task.job_id, tenant=None)
        assert job.status == JobStatus.RUNNING  # not failed: the next worker captions it
        assert [r.index for r in job.results] == [1]  # only the image that failed on its own
    finally:
        batcher.stop(timeout=5)


def test_a_stopping_worker_records_what_the_model_finished_and_gives_back_the_rest(settings: Settings) -> None:
    """SIGTERM while a job's images are split over batches: the batch on the model ends and is recorded, the images
    behind it are left for the next worker, and the task raises WorkerStopping for its turn to go back."""
    started, release = threading.Event(), threading.Event()

    def slow(key: BatchKey, images: list[BatchItem]) -> list[Caption]:
        started.set()
        release.wait(5)
        return describe(key, images)

    batcher: CaptionBatcher = DynamicBatcher(slow, 2, 0.01).start()
    deps = PipelineDeps(JobStore.from_url(settings.redis_url, 600), FakeSource(), batcher,  # type: ignore[arg-type]
                        ThreadDecoding())
    try:
        task = make_task(deps, ["10", "20", "30", "40"])
        outcome: list[BaseException | JobStatus | None] = []

        def run() -> None:
            try:
                outcome.append(run_caption_task(task, deps))
            except WorkerStopping as exc:
                outcome.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        assert started.wait(5)  # images 0 and 1 are on the model; 2 and 3 wait
        batcher.hand_back()
        release.set()
        thread.join(5)
        assert len(outcome) == 1 and isinstance(outcome[0], WorkerStopping)
        job = deps.jobs.get(task.job_id, tenant=None)
        assert job.status == JobStatus.RUNNING
        assert [(r.index, r.caption) for r in job.results] == [(0, "10px"), (1, "20px")]
    finally:
        batcher.stop(timeout=5)


def test_a_job_s_usage_is_what_its_images_cost_counted_once_when_its_task_runs_twice(
    deps: PipelineDeps, settings: Settings
) -> None:
    tenant = f"u-{uuid.uuid4().hex[:10]}"
    job_id = uuid.uuid4().hex
    deps.jobs.create(job_id, 3, None, GenerationOptions(), tenant=tenant)
    keys = ["10", "corrupt", "30"]
    task = CaptionTask(job_id=job_id, images=[ImageRef(index=i, key=key) for i, key in enumerate(keys)])
    assert run_caption_task(task, deps) == JobStatus.SUCCEEDED
    today = datetime.now(UTC).date()
    usage = UsageStore.from_url(settings.redis_url)
    first = usage.report(tenant, today, today).total.interactive
    assert (first.jobs, first.images_captioned, first.images_failed, first.tokens_generated) == (1, 2, 1, 1 + 3)
    assert first.model_seconds > 0  # the stand-in model's batch, shared by the two images it captioned
    assert run_caption_task(task, deps) == JobStatus.SUCCEEDED  # delivered again
    assert usage.report(tenant, today, today).total.interactive == first
