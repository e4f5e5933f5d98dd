"""The BLIP captioner on the trained tiny model: real from_pretrained loading, real, checkable captions."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from packaging.specifiers import SpecifierSet
from PIL import Image

from common import compat
from common.errors import DeviceFailure, ModelLoadError
from common.settings import Settings
from tests.conftest import TINY_MODEL
from tests.fixtures.shapes import random_scene, render
from worker.model import captioner as captioner_module
from worker.model.captioner import BlipCaptioner, pick_dtype
from worker.model.int8_linear import int8_usable
from worker.model.output import Caption

ROOT = Path(__file__).resolve().parents[2]


@cache
def model() -> BlipCaptioner:
    return BlipCaptioner.load(str(TINY_MODEL), "cpu", "float32")


def scenes(count: int, seed: int) -> list[tuple[Image.Image, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        scene = random_scene(rng)
        size = rng.choice([(48, 48), (640, 480), (300, 500), (1280, 720)])
        out.append((render(scene, size, rng), scene.caption))
    return out


def test_captions_name_what_is_in_the_picture() -> None:
    cases = scenes(24, seed=1)
    captions = model().caption([image for image, _ in cases])
    right = sum(caption == truth for caption, (_, truth) in zip(captions, cases, strict=True))
    assert right >= 22, list(zip(captions, [t for _, t in cases], strict=True))


def test_a_prompt_is_continued() -> None:
    (image, truth), = scenes(1, seed=2)
    assert model().caption([image], "a picture of") == [f"a picture of {truth}"]


@pytest.mark.parametrize(("device", "bf16_in_hardware", "expected"), [
    ("cuda", False, torch.float16),
    ("cpu", True, torch.bfloat16),
    ("cpu", False, torch.float32),
])
def test_auto_precision_is_reduced_only_where_the_device_computes_it(
    monkeypatch: pytest.MonkeyPatch, device: str, bf16_in_hardware: bool, expected: torch.dtype
) -> None:
    monkeypatch.setattr(captioner_module, "cpu_computes_bf16", lambda: bf16_in_hardware)
    assert pick_dtype(torch.device(device)) == expected
    assert pick_dtype(torch.device(device), "float32") == torch.float32  # a choice named is a choice kept
    # int8 surrounds its multiplies with what "auto" would pick on a CPU, and "auto" never picks int8 itself.
    assert pick_dtype(torch.device("cpu"), "int8") == (torch.bfloat16 if bf16_in_hardware else torch.float32)


@pytest.mark.parametrize("generation", [{}, {"num_beams": 3}])
def test_bf16_captions_agree_with_fp32(generation: dict[str, int]) -> None:
    # What CAPTIONER_DTYPE=auto gives on CPUs with bf16 in hardware; bench.model_path measures it on 512 images.
    images = [image for image, _ in scenes(24, seed=11)]
    bf16 = BlipCaptioner.load(str(TINY_MODEL), "cpu", "bfloat16")
    assert bf16.dtype == torch.bfloat16
    reduced, full = bf16.caption(images, None, generation), model().caption(images, None, generation)
    assert sum(a == b for a, b in zip(reduced, full, strict=True)) >= 23, list(zip(reduced, full, strict=True))


@pytest.mark.skipif(not int8_usable(), reason="int8 multiplies need AVX-512 VNNI and oneDNN")
@pytest.mark.parametrize("generation", [{}, {"num_beams": 3}])
def test_int8_captions_agree_with_fp32_and_do_not_depend_on_the_batch(generation: dict[str, int]) -> None:
    # CAPTIONER_DTYPE=int8; bench.model_path measures its agreement on 512 images.
    images = [image for image, _ in scenes(24, seed=12)]
    int8 = BlipCaptioner.load(str(TINY_MODEL), "cpu", "int8")
    assert int8.fast is not None and int8.fast.int8
    batched, full = int8.caption(images, None, generation), model().caption(images, None, generation)
    assert sum(a == b for a, b in zip(batched, full, strict=True)) >= 23, list(zip(batched, full, strict=True))
    # Each image's activations are quantized with scales of their own, so its caption is its caption alone.
    assert [int8.caption([image], None, generation)[0] for image in images[:6]] == batched[:6]


def test_int8_is_refused_where_it_cannot_run() -> None:
    # What the worker loads with CAPTIONER_DTYPE=int8 (worker/runtime.py); a ModelLoadError stops it with the fix.
    assert Settings(dtype="int8").dtype == "int8"
    with pytest.raises(ModelLoadError, match="CAPTIONER_DTYPE=int8 runs on a CPU with AVX-512 VNNI only"):
        BlipCaptioner.load(str(TINY_MODEL), "cuda", Settings(dtype="int8").dtype)


@pytest.mark.parametrize("prompt", [None, "a photo of"])
@pytest.mark.parametrize("generation", [{}, {"num_beams": 3}, {"max_new_tokens": 4}])
def test_batched_captions_equal_one_at_a_time(prompt: str | None, generation: dict[str, int]) -> None:
    images = [image for image, _ in scenes(12, seed=3)]
    batched = model().caption(images, prompt, generation)
    alone = [model().caption([image], prompt, generation)[0] for image in images]
    assert batched == alone
    assert len(set(batched)) > 3  # distinct images, distinct captions: a real model


def test_the_model_loads_on_a_thread_that_is_gone_when_it_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    # Its OpenMP team goes with it, so that the thread that captions has the only one (BlipCaptioner.load).
    threads: list[threading.Thread] = []
    load = BlipCaptioner._load

    def spy(*args: Any) -> BlipCaptioner:
        threads.append(threading.current_thread())
        return load(*args)

    monkeypatch.setattr(BlipCaptioner, "_load", spy)
    assert BlipCaptioner.load(str(TINY_MODEL), "cpu", "float32").caption([scenes(1, seed=4)[0][0]])
    assert threads and threads[0] is not threading.current_thread() and not threads[0].is_alive()


def test_an_empty_batch_is_empty() -> None:
    assert model().caption([]) == []


def test_a_missing_model_says_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="CAPTIONER_MODEL"):
        BlipCaptioner.load(str(tmp_path / "no-such-model"), "cpu")


def test_the_worker_exits_with_the_fix_when_the_model_will_not_load(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "worker", "--model", str(tmp_path / "nothing-here")],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "CAPTIONER_DEVICE": "cpu"},
    )
    assert result.returncode == 2
    assert "Could not load the BLIP model" in result.stderr and "CAPTIONER_MODEL" in result.stderr


def test_the_tiny_model_takes_the_fast_path() -> None:
    # Otherwise the tests above would only exercise generate().
    assert model().fast is not None and model().preprocessor is not None


@pytest.mark.parametrize("prompt", [None, "a photo of"])
@pytest.mark.parametrize("generation", [{}, {"num_beams": 3}, {"max_new_tokens": 12, "min_new_tokens": 9}])
def test_the_fast_path_captions_as_generate_does(prompt: str | None, generation: dict[str, int]) -> None:
    images = [image for image, _ in scenes(10, seed=6)]
    expected = model()._caption_with_generate(images, prompt, generation)
    assert model().caption_counted(images, prompt, generation) == expected  # the tokens counted too
    assert len(set(expected)) > 3
    assert [caption.text for caption in expected] == model().caption(images, prompt, generation)


def test_an_option_outside_the_fast_path_goes_through_generate(monkeypatch: pytest.MonkeyPatch) -> None:
    cases = scenes(6, seed=7)
    captioner = model()
    fast = captioner.caption([image for image, _ in cases], None, {"num_beams": 3})
    calls: list[int] = []
    slow_path = captioner._caption_with_generate

    def counted(*args: Any) -> list[Caption]:
        calls.append(1)
        return slow_path(*args)

    monkeypatch.setattr(captioner, "_caption_with_generate", counted)
    # length_penalty is not a service option, so the fast loops leave it to generate(); 1.0 is its default.
    captions = captioner.caption([image for image, _ in cases], None, {"num_beams": 3, "length_penalty": 1.0})
    assert calls == [1]
    assert captions == fast
    assert sum(caption == truth for caption, (_, truth) in zip(captions, cases, strict=True)) >= 5


def test_an_unchecked_transformers_takes_generate_with_the_same_captions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(compat.CHECKED, "transformers", SpecifierSet("<1"))
    slow = BlipCaptioner.load(str(TINY_MODEL), "cpu", "float32")
    assert slow.fast is None  # the reproduced forward pass and loops step aside
    images = [image for image, _ in scenes(4, seed=8)]
    assert slow.caption(images) == model().caption(images)


@pytest.mark.parametrize(("error", "batch", "expected"), [
    (torch.AcceleratorError("CUDA error: an illegal memory access was encountered"), 4, "device_failed"),
    (RuntimeError("CUDA error: device-side assert triggered"), 4, "device_failed"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), 1, "device_failed"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), 4, None),  # smaller batches may fit
    (RuntimeError("shape mismatch"), 1, None),  # the batch's own problem: its images are retried one by one
])
def test_errors_that_break_the_device_become_a_device_failure(
    monkeypatch: pytest.MonkeyPatch, error: RuntimeError, batch: int, expected: str | None
) -> None:
    captioner = model()

    def failing(pixel_values: torch.Tensor) -> torch.Tensor:
        raise error

    assert captioner.fast is not None
    monkeypatch.setattr(captioner.fast, "encode", failing)
    images = [image for image, _ in scenes(batch, seed=9)]
    with pytest.raises(RuntimeError if expected is None else DeviceFailure) as raised:
        captioner.caption(images)
    if expected is None:
        assert raised.value is error
    else:
        assert isinstance(raised.value, DeviceFailure) and raised.value.code == expected
        assert raised.value.__cause__ is error
