"""JPEGs decoded on the model's device (CAPTIONER_DECODE_JPEG_ON_GPU), on the CPU here: torchvision's decode_jpeg
(nvJPEG) is stood in for by Pillow (tests/nvjpeg_stand_in.py); everything the worker does around it runs for real,
down to captions from the tiny model through the real batcher and job store."""

from __future__ import annotations

import io
import logging
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator
from functools import cache
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from bench.harness import jpeg as encode
from bench.harness import photo
from common.errors import ImageDecodeError, ImageError
from common.jobstore import JobStore
from common.schemas import CaptionTask, GenerationOptions, ImageRef, JobStatus
from common.settings import Settings
from common.storage import ObjectStorage
from tests.conftest import TINY_MODEL
from tests.fixtures.shapes import random_scene, render
from tests.nvjpeg_stand_in import pillow_decode_jpeg
from worker import runtime as runtime_module
from worker.decode import gpu_jpeg as gpu_jpeg_module
from worker.decode import jpeg_split
from worker.decode.base import BatchItem, DecodedBatch, DeviceJpeg
from worker.decode.gpu_jpeg import DeviceJpegDecoder, GpuJpegDecoding, device_jpeg, oriented
from worker.decode.images import decode_image
from worker.decode.processes import DecodePool, ProcessDecoding
from worker.decode.threads import ThreadDecoding
from worker.jobs.batches import BatchCaptioner, BatchKey, CaptionBatcher
from worker.jobs.batching import DynamicBatcher, ItemFailed
from worker.jobs.pipeline import PipelineDeps, run_caption_task
from worker.model.captioner import BlipCaptioner
from worker.model.fit import HostImage, ModelImage, fit
from worker.runtime import gpu_jpeg_decoder_for, thread_decoding

SIZE = (96, 64)  # (width, height) the decoder fits to, when no model is involved
BICUBIC = Image.Resampling.BICUBIC


def broken_jpeg() -> bytes:
    """Headers that read well and an end where a JPEG ends, but a Huffman table no decoder accepts."""
    data = bytearray(encode(photo(64, 48, 1)))
    table = data.find(b"\xff\xc4")
    data[table + 5 : table + 21] = b"\xff" * 16  # the table's code counts, far over what 16 bits can hold
    return bytes(data)


def left(data: bytes) -> DeviceJpeg:
    """The bytes as a job's thread leaves them for the device (they must qualify)."""
    jpeg = device_jpeg(data)
    assert jpeg is not None
    return jpeg


def on_cpu(data: bytes) -> HostImage:
    return fit(decode_image(data), SIZE, BICUBIC)


def decoder(decode_jpeg: Callable[..., list[torch.Tensor]] = pillow_decode_jpeg) -> DeviceJpegDecoder:
    return DeviceJpegDecoder(decode_jpeg, torch.device("cpu"), SIZE, on_cpu)


class CpuDecoding(ThreadDecoding):
    """Decoding on the job's thread (worker/decode/threads.py) by `decode`: on_cpu unless said."""

    def __init__(self, decode: Callable[[bytes], HostImage] = on_cpu) -> None:
        super().__init__()
        self._decode = decode

    def decode(self, data: bytes) -> HostImage:
        return self._decode(data)


def gpu_decoding(on_device: DeviceJpegDecoder, cpu: ThreadDecoding | None = None) -> GpuJpegDecoding:
    """A GPU worker's decoding: JPEGs left for `on_device`, everything else decoded by `cpu` (on_cpu's)."""
    return GpuJpegDecoding(on_device, cpu if cpu is not None else CpuDecoding())


def recording(calls: list[int], broken: bool = False) -> Callable[..., list[torch.Tensor]]:
    """The stand-in decoder, noting each call's number of JPEGs in `calls`; `broken`, it fails every call."""

    def decode(data: list[torch.Tensor], device: Any = "cpu") -> list[torch.Tensor]:
        calls.append(len(data))
        if broken:
            raise RuntimeError("nvJPEG: internal error")
        return pillow_decode_jpeg(data, device=device)

    return decode


def as_array(image: torch.Tensor | HostImage | ImageError) -> np.ndarray:
    assert not isinstance(image, ImageError), image
    return image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)


# Which bytes are left for the device


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_baseline_jpeg_is_left_for_the_device(mode: str) -> None:
    data = encode(photo(64, 48, 1).convert(mode))
    assert device_jpeg(data) == DeviceJpeg(data, 1, 64 * 48)


@pytest.mark.parametrize("case", ["png", "progressive", "cmyk", "rgb not ycbcr", "truncated", "data after the end",
                                  "over the limit", "not an image", "empty"])
def test_what_the_device_should_not_decode_stays_on_the_cpu(case: str) -> None:
    image = photo(64, 48, 1)
    png = io.BytesIO()
    image.save(png, format="PNG")
    data = {
        "png": png.getvalue(),
        "progressive": encode(image, progressive=True),
        "cmyk": encode(image.convert("CMYK")),
        "rgb not ycbcr": encode(image, keep_rgb=True),
        "truncated": encode(image)[:-100],
        "data after the end": encode(image) + b"trailer",
        "over the limit": encode(image),
        "not an image": b"\xff\xd8 not really \xff\xd9",
        "empty": b"",
    }[case]
    assert device_jpeg(data, max_pixels=64 * 48 - 1 if case == "over the limit" else 10**8) is None


@pytest.mark.parametrize(("written", "read"), [(6, 6), (3, 3), (9, 1), (0, 1)])
def test_the_exif_orientation_is_read_and_nonsense_ignored(written: int, read: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = written
    buffer = io.BytesIO()
    photo(64, 48, 1).save(buffer, format="JPEG", exif=exif)
    jpeg = device_jpeg(buffer.getvalue())
    assert jpeg is not None and jpeg.orientation == read


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_moves_pixels_as_pillows_exif_transpose(orientation: int) -> None:
    data = encode(photo(64, 48, 3), orientation)
    stored = Image.open(io.BytesIO(data))
    stored.load()
    expected = np.asarray(ImageOps.exif_transpose(stored).convert("RGB"))
    got = oriented(torch.from_numpy(np.array(stored.convert("RGB"))).permute(2, 0, 1), orientation)
    assert np.array_equal(got.permute(1, 2, 0).numpy(), expected)


# Decoding and resizing on the device


def test_pixels_are_close_to_the_cpu_path_s_whatever_the_shape_and_orientation() -> None:
    blobs = [encode(photo(640, 480, 1)), encode(photo(300, 200, 2)), encode(photo(640, 480, 3), 6),
             encode(photo(96, 64, 4)), encode(photo(64, 48, 5).convert("L"))]
    fitted = decoder().fitted([left(blob) for blob in blobs])
    for blob, image in zip(blobs, fitted, strict=True):
        assert isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.shape == (64, 96, 3)
        # torch's antialiased bicubic is not Pillow's to the last bit; a wrong orientation, layout or size would
        # be far off (tens of levels on these blocky photos).
        difference = np.abs(image.numpy().astype(int) - np.asarray(on_cpu(blob)).astype(int))
        assert difference.mean() < 1.0 and difference.max() <= 12, (difference.mean(), difference.max())


def test_chunks_and_resize_groups_do_not_change_the_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    jpegs = [left(encode(photo(*size, seed))) for seed, size in enumerate([(640, 480), (200, 100)] * 4)]
    whole = [as_array(image) for image in decoder().fitted(jpegs)]
    monkeypatch.setattr(gpu_jpeg_module, "DECODE_CHUNK", 3)
    monkeypatch.setattr(gpu_jpeg_module, "RESIZE_PIXELS", 640 * 480 * 2)
    pieces = [as_array(image) for image in decoder().fitted(jpegs)]
    assert all(np.array_equal(a, b) for a, b in zip(whole, pieces, strict=True))


def test_one_undecodable_jpeg_fails_alone_and_the_rest_are_decoded_on_the_device(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []
    good = [encode(photo(120, 80, seed)) for seed in range(3)]
    jpegs = [left(blob) for blob in (good[0], broken_jpeg(), good[1], good[2])]  # the broken one's headers pass
    on_device = decoder(recording(calls))
    fitted = on_device.fitted(jpegs)
    assert isinstance(fitted[1], ImageDecodeError)
    assert all(isinstance(fitted[index], torch.Tensor) for index in (0, 2, 3))
    assert calls == [4, 1, 1, 1, 1]  # the batch, then each alone once it failed
    on_device.fitted(jpegs)  # the same file again: logged, but no second warning
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "the GPU could not decode a JPEG" in warnings[0]


def test_a_gpu_that_fails_jpegs_the_cpu_decodes_is_given_up_and_nothing_more_is_left_for_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []
    on_device = decoder(recording(calls, broken=True))
    leave = gpu_decoding(on_device).load
    good = encode(photo(120, 80, 9))
    damaged = [left(broken_jpeg()) for _ in range(40)]  # failing on the CPU too: the file's fault, not the GPU's
    assert all(isinstance(image, ImageDecodeError) for image in on_device.fitted(damaged))
    assert on_device.working
    fitted = on_device.fitted([left(good)] * gpu_jpeg_module.GIVE_UP_AFTER)
    assert all(isinstance(image, Image.Image) for image in fitted)  # each decoded on the CPU
    assert not on_device.working
    assert "JPEGs are decoded on the CPU from now on" in caplog.text
    tried = len(calls)
    assert isinstance(on_device.fitted([left(good)])[0], Image.Image) and len(calls) == tried  # not tried again
    assert isinstance(leave(good), Image.Image)  # job threads stop leaving JPEGs for it


def test_one_gpu_success_resets_the_count_of_failures() -> None:
    fail = [True]

    def flaky(data: list[torch.Tensor], device: Any = "cpu") -> list[torch.Tensor]:
        if fail[0]:
            raise RuntimeError("nvJPEG: internal error")
        return pillow_decode_jpeg(data, device=device)

    on_device = decoder(flaky)
    good = left(encode(photo(120, 80, 9)))
    on_device.fitted([good] * (gpu_jpeg_module.GIVE_UP_AFTER - 1))
    fail[0] = False
    on_device.fitted([good])
    fail[0] = True
    on_device.fitted([good] * (gpu_jpeg_module.GIVE_UP_AFTER - 1))
    assert on_device.working


def test_a_jpeg_the_device_refuses_is_decoded_on_the_cpu() -> None:
    refused = encode(photo(120, 80, 7))

    def picky(data: list[torch.Tensor], device: Any = "cpu") -> list[torch.Tensor]:
        if any(blob.numpy().tobytes() == refused for blob in data):
            raise RuntimeError("nvJPEG: unsupported")
        return pillow_decode_jpeg(data, device=device)

    first, second = decoder(picky).fitted([left(encode(photo(120, 80, 8))), left(refused)])
    assert isinstance(first, torch.Tensor)
    assert isinstance(second, Image.Image) and np.array_equal(np.asarray(second), np.asarray(on_cpu(refused)))


def test_a_batch_keeps_its_order_with_failures_put_back_in_place() -> None:
    host = np.zeros((64, 96, 3), dtype=np.uint8)
    items: list[BatchItem] = [host, left(encode(photo(96, 64, 1))), left(broken_jpeg()), host]
    batch = gpu_decoding(decoder()).finish(items)
    assert len(batch.images) == 3 and isinstance(batch.images[1], torch.Tensor)
    assert list(batch.failures) == [2]
    merged = batch.merged(["a", "b", "c"])
    assert merged[:2] == ["a", "b"] and merged[3] == "c"
    assert isinstance(merged[2], ImageDecodeError)
    with pytest.raises(TypeError):  # JPEGs left for the device, in a worker that decodes none there
        DecodedBatch.of(items)


def test_a_batch_of_nothing_but_failures_fails_every_item_without_running_the_model() -> None:
    batch = gpu_decoding(decoder()).finish([left(broken_jpeg()), left(broken_jpeg())])
    assert batch.images == []
    merged = batch.merged([])
    assert len(merged) == 2 and all(isinstance(result, ImageDecodeError) for result in merged)
    stages = BatchCaptioner(model(), gpu_decoding(decoder()))
    results = stages.run(BatchKey.of(None, {}), [left(broken_jpeg()), left(broken_jpeg())])
    assert [type(result) for result in results] == [ItemFailed, ItemFailed]
    prepared, pixel_values = stages.prepared([left(broken_jpeg())])
    assert pixel_values is None and list(prepared.failures) == [0]


def test_pixels_on_the_device_join_a_batch_in_their_places() -> None:
    captioner = model()
    images = [np.asarray(captioner.prepare(photo(200, 100, seed))) for seed in range(4)]
    mixed: list[ModelImage] = [images[0], torch.from_numpy(images[1].copy()), images[2],
                               torch.from_numpy(images[3].copy())]
    assert torch.equal(captioner.pixel_values(mixed), captioner.pixel_values(images))


# Choosing it, and a job through it


def test_the_setting_is_ignored_with_the_reason_where_it_cannot_work(caplog: pytest.LogCaptureFixture) -> None:
    cpu = SimpleNamespace(device=torch.device("cpu"), input_size=(384, 384))
    gpu = SimpleNamespace(device=torch.device("cuda"), input_size=(384, 384), prepare=lambda image: image)

    def missing() -> Any:
        raise ImportError("No module named 'torchvision'")

    with caplog.at_level(logging.INFO, logger="worker.runtime"):
        assert gpu_jpeg_decoder_for(cpu, False) is None  # type: ignore[arg-type]
        assert not caplog.records
        assert gpu_jpeg_decoder_for(cpu, True) is None  # type: ignore[arg-type]
        assert gpu_jpeg_decoder_for(gpu, True, load=missing) is None  # type: ignore[arg-type]
        assert isinstance(gpu_jpeg_decoder_for(gpu, True, load=lambda: pillow_decode_jpeg), DeviceJpegDecoder)  # type: ignore[arg-type]
    messages = [record.getMessage() for record in caplog.records]
    assert "ignored on cpu (GPU only)" in messages[0]
    assert "torchvision does not import (No module named 'torchvision')" in messages[1]
    assert "baseline JPEGs are decoded and resized on cuda" in messages[2]


def test_a_job_thread_leaves_only_jpegs_for_the_device() -> None:
    decoded: list[bytes] = []

    def decode(data: bytes) -> HostImage:
        decoded.append(data)
        return Image.new("RGB", (8, 8))

    png = io.BytesIO()
    photo(64, 48, 1).save(png, format="PNG")
    leave = gpu_decoding(decoder(), CpuDecoding(decode)).load
    jpeg = encode(photo(64, 48, 1))
    assert leave(jpeg) == DeviceJpeg(jpeg, 1, 64 * 48)
    assert isinstance(leave(png.getvalue()), Image.Image)
    assert decoded == [png.getvalue()]


@cache
def model() -> BlipCaptioner:
    return BlipCaptioner.load(str(TINY_MODEL), "cpu", "float32")


class JpegSource:
    """A job's images by key: scenes as JPEGs (some turned by EXIF), 'broken' and 'png' as named."""

    def __init__(self, scenes: dict[str, tuple[bytes, str]]) -> None:
        self.scenes = scenes

    def locate(self, job_id: str, ref: ImageRef) -> bytes:
        assert ref.key is not None
        return self.scenes[ref.key][0]


@pytest.fixture(params=["prepared ahead", "run plainly"])
def jpeg_deps(request: pytest.FixtureRequest, settings: Settings) -> Iterator[PipelineDeps]:
    captioner = model()
    assert captioner.input_size is not None
    here = thread_decoding(captioner)
    on_device = DeviceJpegDecoder(pillow_decode_jpeg, captioner.device, captioner.input_size, here.decode)
    decoding = GpuJpegDecoding(on_device, here)
    stages = BatchCaptioner(captioner, decoding)
    ahead = request.param == "prepared ahead"
    batcher: CaptionBatcher = DynamicBatcher(stages.run, 8, 0.05, stages.prepare if ahead else None).start()
    yield PipelineDeps(JobStore.from_url(settings.redis_url, 600), None, batcher,  # type: ignore[arg-type]
                       decoding=decoding)
    batcher.stop(timeout=30)


def test_a_job_s_jpegs_are_captioned_from_the_device_and_a_broken_one_fails_alone(
    jpeg_deps: PipelineDeps, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(11)
    scenes: dict[str, tuple[bytes, str]] = {}
    for index in range(8):
        scene = random_scene(rng)
        image = render(scene, rng.choice([(640, 480), (300, 500), (96, 96)]), rng)
        if index % 3 == 0:  # stored turned a quarter, with EXIF saying how to show it
            scenes[str(index)] = (encode(image.transpose(Image.Transpose.ROTATE_90), orientation=6), scene.caption)
        else:
            scenes[str(index)] = (encode(image), scene.caption)
    scenes["broken"] = (broken_jpeg(), "")
    keys = ["0", "1", "broken", *[str(index) for index in range(2, 8)]]
    # None goes the CPU's way.
    assert all(isinstance(jpeg_deps.decoding.load(scenes[key][0]), DeviceJpeg) for key in keys)
    deps = PipelineDeps(jpeg_deps.jobs, JpegSource(scenes), jpeg_deps.batcher, decoding=jpeg_deps.decoding)  # type: ignore[arg-type]
    job_id = uuid.uuid4().hex
    deps.jobs.create(job_id, len(keys), None, GenerationOptions(), tenant="tests")
    task = CaptionTask(job_id=job_id, images=[ImageRef(index=i, key=key) for i, key in enumerate(keys)])

    with caplog.at_level(logging.INFO, logger="worker.jobs.batches"):  # where a batch's log line comes from
        assert run_caption_task(task, deps) == JobStatus.SUCCEEDED
    # The log says how many went the device's way: all 8 good JPEGs, in one batch or more.
    counted = [int(found) for found in re.findall(r"(\d+) JPEGs decoded on the GPU", caplog.text)]
    assert sum(counted) == 8, caplog.text

    results = deps.jobs.get(job_id, tenant=None).results
    assert results[2].error is not None and results[2].error.code == "invalid_image", results[2]
    truths = [scenes[key][1] for key in keys]
    right = sum(result.caption == truth for result, truth in zip(results, truths, strict=True) if truth)
    assert right >= 7, [(result.caption, truth) for result, truth in zip(results, truths, strict=True)]


class InThreadProcesses:
    """Decoding processes as the GPU's decoder sees them, decoding on the calling thread; notes what it decoded,
    and can fail as a closing pool does."""

    def __init__(self, processes: int, closed: bool = False) -> None:
        self.processes = processes
        self.closed = closed
        self.decoded: list[bytes] = []

    def decode(self, data: bytes) -> HostImage:
        if self.closed:
            raise RuntimeError("the decoding pool is closed: the worker is stopping")
        self.decoded.append(data)
        return on_cpu(data)


def sharing(processes: InThreadProcesses, calls: list[int]) -> DeviceJpegDecoder:
    """A decoder sharing JPEGs of 100x100 and up with `processes`, one process taking as long as the GPU per JPEG."""
    on_device = DeviceJpegDecoder(recording(calls), torch.device("cpu"), SIZE, on_cpu, processes)
    on_device.costs.gpu = on_device.costs.process
    return on_device


def test_a_batch_s_large_jpegs_are_shared_with_the_decoding_processes_and_come_back_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(jpeg_split, "SHARED_FROM_PIXELS", 100 * 100)
    calls: list[int] = []
    processes = InThreadProcesses(2)
    blobs = [encode(photo(100, 100, seed)) for seed in range(8)] + [encode(photo(99, 100, 8))]  # the last: small
    fitted = sharing(processes, calls).fitted([left(blob) for blob in blobs])
    # Equal costs, 2 processes, 9 JPEGs: the processes take 5 large ones (3 rounds, as long as the GPU's 4).
    assert len(processes.decoded) == 5 and blobs[-1] not in processes.decoded
    assert calls == [4]
    on_processes = {blobs.index(data) for data in processes.decoded}
    for index, (blob, image) in enumerate(zip(blobs, fitted, strict=True)):
        assert isinstance(image, Image.Image if index in on_processes else torch.Tensor), index
        assert np.abs(as_array(image).astype(int) - np.asarray(on_cpu(blob)).astype(int)).mean() < 1  # its own


def test_a_jpeg_a_process_cannot_decode_fails_alone_and_a_closing_pool_leaves_it_to_the_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(jpeg_split, "SHARED_FROM_PIXELS", 64 * 48)
    good = encode(photo(64, 48, 1))
    damaged = left(broken_jpeg())
    jpegs = [damaged, left(good), left(good), left(good)]
    processes = InThreadProcesses(4)
    fitted = sharing(processes, []).fitted(jpegs)
    assert processes.decoded and isinstance(fitted[0], ImageDecodeError)  # equal sizes keep their order: it went
    assert all(not isinstance(image, ImageError) for image in fitted[1:])
    closing = InThreadProcesses(4, closed=True)
    assert all(isinstance(image, Image.Image | torch.Tensor) for image in sharing(closing, []).fitted(jpegs[1:]))


def test_the_decoder_learns_what_each_way_costs_and_slow_processes_are_given_next_to_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(jpeg_split, "SHARED_FROM_PIXELS", 100 * 100)
    slow = InThreadProcesses(2)
    real_decode = slow.decode

    def slowly(data: bytes) -> HostImage:
        time.sleep(0.05)  # far longer than the stand-in GPU takes for the whole batch
        return real_decode(data)

    slow.decode = slowly  # type: ignore[method-assign]
    on_device = sharing(slow, [])
    jpegs = [left(encode(photo(100, 100, seed))) for seed in range(8)]
    shared = []
    for _ in range(30):
        before = len(slow.decoded)
        on_device.fitted(jpegs)
        shared.append(len(slow.decoded) - before)
    assert shared[0] >= 4  # as fast as the GPU, to begin with
    assert sum(shared[8:]) <= 3, shared  # then a JPEG now and then, to see whether they are still slow
    assert on_device.costs.process > 5 * on_device.costs.gpu


def test_the_worker_s_runtime_leaves_jpegs_for_the_device_and_fetches_them_itself(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """build_runtime as a GPU worker would wire it, with the stand-in decoder in place of nvJPEG on this CPU: job
    threads leave JPEGs encoded, other formats still go to the decoding processes, and objects in S3 are fetched
    by this process (a decoding process would decode them), then captioned from the device's pixels."""
    made: list[DeviceJpegDecoder] = []
    decoded_on_device: list[int] = []

    def stand_in_decoder(captioner: BlipCaptioner, wanted: bool, processes: DecodePool | None) -> DeviceJpegDecoder:
        assert wanted and captioner.input_size is not None and processes is not None
        made.append(DeviceJpegDecoder(recording(decoded_on_device), captioner.device, captioner.input_size,
                                      thread_decoding(captioner).decode, processes))
        return made[-1]

    monkeypatch.setattr(runtime_module, "gpu_jpeg_decoder_for", stand_in_decoder)
    settings = make_settings(decode_jpeg_on_gpu=True, decode_processes=1, batch_size=4, prepare_ahead="on")
    runtime = runtime_module.build_runtime(settings, "test-worker", lambda: None)
    try:
        decoding = runtime.deps.decoding
        assert made and isinstance(decoding, GpuJpegDecoding) and decoding.gpu is made[0]
        assert isinstance(decoding.cpu, ProcessDecoding)  # the decoding processes
        assert made[0]._processes is decoding.cpu.pool  # large JPEGs may be shared with them
        rng = random.Random(12)
        scenes = [random_scene(rng) for _ in range(3)]
        jpegs = [encode(render(scene, (320, 240), rng)) for scene in scenes]
        png = io.BytesIO()
        render(scenes[0], (64, 64), rng).save(png, format="PNG")
        assert isinstance(decoding.load(jpegs[0]), DeviceJpeg)
        assert isinstance(decoding.load(png.getvalue()), np.ndarray)  # from the decoding process
        storage = ObjectStorage.from_settings(settings)
        storage.ensure_bucket()
        for index, data in enumerate(jpegs):
            storage.put(f"uploads/{index}.jpg", data, "image/jpeg")
        job_id = uuid.uuid4().hex
        runtime.deps.jobs.create(job_id, len(jpegs), None, GenerationOptions(), tenant="tests")
        task = CaptionTask(job_id=job_id, images=[ImageRef(index=i, key=f"uploads/{i}.jpg") for i in range(3)])
        assert run_caption_task(task, runtime.deps) == JobStatus.SUCCEEDED
        results = runtime.deps.jobs.get(job_id, tenant=None).results
        assert [result.caption for result in results] == [scene.caption for scene in scenes], results
        assert sum(decoded_on_device) == 3
    finally:
        runtime.close()
