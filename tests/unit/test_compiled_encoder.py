"""FastBlip.compile_encoder (CAPTIONER_COMPILE_ENCODER): what it does where it cannot compile, and how a compiled
encoder that fails leaves the worker running eager. Whether compiling pays, and that its tokens are identical,
is measured on a GPU (bench.model_path's "compiled encoder" section; BENCHMARKS.md): these CPU machines cannot
compile the encoder's oneDNN linears."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import torch
from transformers import BlipForConditionalGeneration

from tests.conftest import TINY_MODEL
from tests.unit.test_generation import pixel_values
from worker.model.fast_blip import FastBlip


def fresh() -> FastBlip:
    model = BlipForConditionalGeneration.from_pretrained(str(TINY_MODEL)).eval()
    return FastBlip(model, torch.device("cpu"), torch.float32)


def no_compiling(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("torch.compile must not be called")


def test_on_cpu_the_encoder_stays_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = fresh()
    monkeypatch.setattr(torch, "compile", no_compiling)
    assert fast.compile_encoder() is False
    with torch.inference_mode():
        assert torch.equal(fast.encode(pixel_values()), fast.encode_eager(pixel_values()))


def test_on_a_gpu_the_encoder_runs_what_torch_compile_gave(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = fresh()
    calls: list[torch.Tensor] = []

    def fake_compile(function: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        assert function == fast.encode_eager

        def compiled(pixels: torch.Tensor) -> torch.Tensor:
            calls.append(pixels)
            return function(pixels)

        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(fast, "device", torch.device("cuda"))  # only the device check reads it
    assert fast.compile_encoder() is True
    with torch.inference_mode():
        tokens = fast.encode(pixel_values())
        assert torch.equal(tokens, fast.encode_eager(pixel_values()))
    assert len(calls) == 1


def test_a_compiled_encoder_that_fails_is_dropped_for_eager(caplog: pytest.LogCaptureFixture) -> None:
    fast = fresh()
    calls = 0

    def broken(pixels: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        raise RuntimeError("InductorError: no C compiler")

    fast._use_compiled_encoder(broken)
    with torch.inference_mode(), caplog.at_level(logging.ERROR, logger="worker.model.fast_blip"):
        first = fast.encode(pixel_values())
        second = fast.encode(pixel_values())
        expected = fast.encode_eager(pixel_values())
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert calls == 1  # not retried on every batch
    assert "encoding eager from now on" in caplog.text and "no C compiler" in caplog.text


def test_running_out_of_memory_is_the_batch_s_problem_not_the_compiler_s() -> None:
    fast = fresh()

    def out_of_memory(pixels: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory")

    fast._use_compiled_encoder(out_of_memory)
    with torch.inference_mode(), pytest.raises(torch.OutOfMemoryError):
        fast.encode(pixel_values())
    with torch.inference_mode(), pytest.raises(torch.OutOfMemoryError):
        fast.encode(pixel_values())  # still compiled: the next, smaller batch may fit
