"""Decoding in processes: the worker's pixels, per-image errors, a dying or hung process failing one image alone,
and nothing left behind by close."""

from __future__ import annotations

import errno
import io
import multiprocessing
import os
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.errors import ImageDecodeError, ImageFetchError, ImageTooLarge
from common.settings import Settings
from common.storage import ObjectStorage
from tests.fixtures.decode_work import CRASH, DIE_ONCE_MARKER, HANG, crash_or_decode, die_once
from tests.fixtures.shapes import random_scene, render
from tests.unit.test_captioner import model
from worker import runtime
from worker.decode import processes as decode_pool
from worker.decode.processes import DECODING_NICENESS, DecodePool
from worker.runtime import decode_pool_for, thread_decoding
from worker.sizing import automatic_decode_processes


def noise_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("RGB", (width, height), random.Random(9).randbytes(width * height * 3)).save(buffer, "PNG")
    return buffer.getvalue()


def shared_buffers() -> set[str]:
    return {entry.name for entry in Path(decode_pool.SHARED_DIR).iterdir() if entry.name.startswith("captioner-")}


def encode(fmt: str, seed: int) -> bytes:
    rng = random.Random(seed)
    buffer = io.BytesIO()
    render(random_scene(rng), (1600, 1200), rng).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def pool() -> Iterator[DecodePool]:
    created = decode_pool_for(model(), 2)
    assert created is not None
    yield created
    created.close()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_processes_give_the_pixels_the_worker_s_threads_give(pool: DecodePool, fmt: str) -> None:
    data = encode(fmt, 7)
    pixels, image = pool.decode(data), thread_decoding(model()).decode(data)
    assert isinstance(pixels, np.ndarray) and isinstance(image, Image.Image)  # an array: no GIL to batch it
    assert np.array_equal(pixels, np.asarray(image))


def test_a_bad_image_is_a_per_image_error(pool: DecodePool) -> None:
    with pytest.raises(ImageDecodeError, match="not an image"):
        pool.decode(b"not an image at all")


def test_a_dying_process_fails_its_image_alone() -> None:
    captioner = model()
    assert captioner.input_size is not None and captioner.preprocessor is not None
    pool = DecodePool(2, captioner.input_size, captioner.preprocessor.resample, work=crash_or_decode)
    try:
        blobs = [encode("JPEG", seed) for seed in range(6)]
        inputs = [*blobs[:3], CRASH, *blobs[3:]]

        def decode(data: bytes) -> bytes | str:
            try:
                return pool.decode(data).tobytes()
            except ImageDecodeError as exc:
                return exc.message

        with ThreadPoolExecutor(len(inputs)) as threads:
            outcomes = list(threads.map(decode, inputs))
        expected = [thread_decoding(captioner).decode(blob).tobytes() for blob in blobs]
        assert outcomes[:3] + outcomes[4:] == expected  # images in flight beside it were decoded again
        assert isinstance(outcomes[3], str) and "died" in outcomes[3]
        assert pool.decode(blobs[0]).tobytes() == expected[0]  # and the pool lives on
    finally:
        pool.close()


def test_an_image_whose_process_died_once_is_decoded_on_a_new_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(DIE_ONCE_MARKER, str(tmp_path / "died"))  # spawned processes inherit the environment
    captioner = model()
    assert captioner.input_size is not None and captioner.preprocessor is not None
    pool = DecodePool(1, captioner.input_size, captioner.preprocessor.resample, work=die_once)
    try:
        data = encode("JPEG", 3)
        assert pool.decode(data).tobytes() == thread_decoding(captioner).decode(data).tobytes()
        assert (tmp_path / "died").exists()  # the first process did die
    finally:
        pool.close()


def test_a_hung_process_is_stopped_and_fails_its_image_alone() -> None:
    captioner = model()
    assert captioner.input_size is not None and captioner.preprocessor is not None
    pool = DecodePool(1, captioner.input_size, captioner.preprocessor.resample, work=crash_or_decode, timeout_s=2)
    try:
        with pytest.raises(ImageDecodeError, match="longer than 2 s"):
            pool.decode(HANG)
        data = encode("PNG", 4)
        assert pool.decode(data).tobytes() == thread_decoding(captioner).decode(data).tobytes()
    finally:
        pool.close()


def test_an_image_larger_than_the_input_buffer_grows_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode_pool, "INITIAL_INPUT_BYTES", 64 << 10)
    captioner = model()
    assert captioner.input_size is not None and captioner.preprocessor is not None
    pool = DecodePool(1, captioner.input_size, captioner.preprocessor.resample)
    try:
        small, large = encode("JPEG", 5), noise_png(1000, 1000)
        assert len(small) < 64 << 10 < len(large)
        for data in (large, small, large):  # the first on a new process; smaller ones after it read the right bytes
            assert pool.decode(data).tobytes() == thread_decoding(captioner).decode(data).tobytes()
    finally:
        pool.close()


def test_close_stops_the_processes_and_leaves_no_buffer_behind() -> None:
    captioner = model()
    assert captioner.input_size is not None and captioner.preprocessor is not None
    before = shared_buffers()
    children = set(multiprocessing.active_children())
    pool = DecodePool(2, captioner.input_size, captioner.preprocessor.resample)
    assert len(shared_buffers() - before) == 4  # an input and an output buffer per process, until it maps them
    assert len(set(multiprocessing.active_children()) - children) == 2
    with ThreadPoolExecutor(2) as threads:
        list(threads.map(pool.decode, [encode("JPEG", 8)] * 4))
    assert shared_buffers() - before == set()  # mapped on both sides, so unlinked: a killed worker leaks none
    pool.close()
    assert set(multiprocessing.active_children()) - children == set()
    with pytest.raises(RuntimeError, match="closed"):
        pool.decode(encode("JPEG", 8))


def test_without_room_for_buffers_the_pool_says_what_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    def full(cls: type, size: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(decode_pool._SharedBuffer, "create", classmethod(full))
    captioner = model()
    assert captioner.input_size is not None and captioner.preprocessor is not None
    with pytest.raises(RuntimeError, match=r"no room .* MiB at least.*--shm-size"):
        DecodePool(2, captioner.input_size, captioner.preprocessor.resample)


def test_an_image_too_large_for_the_room_left_is_decoded_on_the_calling_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(decode_pool, "INITIAL_INPUT_BYTES", 64 << 10)
    captioner = model()
    assert captioner.input_size is not None and captioner.preprocessor is not None
    pool = DecodePool(1, captioner.input_size, captioner.preprocessor.resample, work=crash_or_decode)
    try:
        create = decode_pool._SharedBuffer.create

        def room_for_64_kib(cls: type, size: int) -> decode_pool._SharedBuffer:
            if size > 64 << 10:
                raise OSError(errno.ENOSPC, "No space left on device")
            return create(size)

        monkeypatch.setattr(decode_pool._SharedBuffer, "create", classmethod(room_for_64_kib))
        large = noise_png(1000, 1000)
        assert pool.decode(large).tobytes() == thread_decoding(captioner).decode(large).tobytes()
        with pytest.raises(ImageDecodeError, match="died"):  # small ones still go to the process
            pool.decode(CRASH)
    finally:
        pool.close()


def test_a_lost_process_that_cannot_be_restarted_leaves_its_images_to_the_calling_thread(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(DIE_ONCE_MARKER, str(tmp_path / "died"))
    captioner = model()
    assert captioner.input_size is not None and captioner.preprocessor is not None
    children = set(multiprocessing.active_children())
    pool = DecodePool(1, captioner.input_size, captioner.preprocessor.resample, work=die_once)
    try:
        create = decode_pool._SharedBuffer.create

        def full(cls: type, size: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(decode_pool._SharedBuffer, "create", classmethod(full))
        data = encode("JPEG", 10)
        # The process dies on it; no new one can start; this thread decodes it (die_once decodes from now on).
        assert pool.decode(data).tobytes() == thread_decoding(captioner).decode(data).tobytes()
        assert set(multiprocessing.active_children()) - children == set()
        monkeypatch.setattr(decode_pool._SharedBuffer, "create", create)
        assert pool.decode(data).tobytes() == thread_decoding(captioner).decode(data).tobytes()
        assert len(set(multiprocessing.active_children()) - children) == 1  # room again: the slot has a process
    finally:
        pool.close()


def test_the_processes_yield_the_cpu_to_the_worker_s_own_threads() -> None:
    # Where cores run short, the thread launching the model's kernels must not wait behind decoding.
    captioner = model()
    assert captioner.input_size is not None and captioner.preprocessor is not None
    children = set(multiprocessing.active_children())
    pool = DecodePool(1, captioner.input_size, captioner.preprocessor.resample)
    try:
        pool.decode(encode("JPEG", 8))
        (child,) = set(multiprocessing.active_children()) - children
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, child.pid or 0) == min(19, ours + DECODING_NICENESS)
    finally:
        pool.close()


def test_auto_starts_processes_on_a_gpu_only_and_leaves_cores_to_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    assert decode_pool_for(model(), "auto") is None  # the test model runs on CPU, which needs every core
    assert decode_pool_for(model(), 0) is None
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert automatic_decode_processes(torch.device("cuda")) == 14
    assert automatic_decode_processes(torch.device("cpu")) == 0
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert automatic_decode_processes(torch.device("cuda")) == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 128)
    assert automatic_decode_processes(torch.device("cuda")) == 32


def test_when_processes_cannot_start_auto_uses_threads_and_a_count_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    children = set(multiprocessing.active_children())
    create, made = decode_pool._SharedBuffer.create, list[int]()

    def room_for_one_process(cls: type, size: int) -> decode_pool._SharedBuffer:
        if len(made) == 2:  # an input and an output buffer
            raise OSError(errno.ENOSPC, "No space left on device")
        made.append(size)
        return create(size)

    monkeypatch.setattr(decode_pool._SharedBuffer, "create", classmethod(room_for_one_process))
    monkeypatch.setattr(runtime, "automatic_decode_processes", lambda device: 2)
    assert decode_pool_for(model(), "auto") is None
    assert set(multiprocessing.active_children()) - children == set()  # the one that started was stopped
    made.clear()
    with pytest.raises(RuntimeError, match="no room"):
        decode_pool_for(model(), 2)
    assert set(multiprocessing.active_children()) - children == set()


def test_processes_fetch_and_decode_a_presigned_object(pool: DecodePool, settings: Settings) -> None:
    storage = ObjectStorage.from_settings(settings)
    data = encode("JPEG", 11)
    storage.put("bulk/photo.jpg", data)
    pixels = pool.fetch_and_decode(storage.presigned_get("bulk/photo.jpg"), max_bytes=len(data))
    assert isinstance(pixels, np.ndarray) and np.array_equal(pixels, np.asarray(thread_decoding(model()).decode(data)))
    with pytest.raises(ImageFetchError, match="NoSuchKey"):
        pool.fetch_and_decode(storage.presigned_get("bulk/missing.jpg"), max_bytes=len(data))
    with pytest.raises(ImageTooLarge):
        pool.fetch_and_decode(storage.presigned_get("bulk/photo.jpg"), max_bytes=len(data) - 1)
    with pytest.raises(ImageDecodeError):
        storage.put("bulk/notes.txt", b"not an image")
        pool.fetch_and_decode(storage.presigned_get("bulk/notes.txt"), max_bytes=1024)
