"""The worker process's setup that is not the model: torch's thread count, the batch size and the jobs held at
once that "auto" picks."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch

from worker.model.captioner import set_torch_threads
from worker.sizing import automatic_batch_size, automatic_concurrency


@pytest.fixture(autouse=True)
def restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_torch_threads_are_set_when_asked() -> None:
    torch.set_num_threads(2)
    set_torch_threads(1)
    assert torch.get_num_threads() == 1


def test_zero_keeps_torchs_default() -> None:
    torch.set_num_threads(2)
    set_torch_threads(0)
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize(("gib", "expected"), [(141, 256), (22.5, 256), (16, 64)])
def test_auto_batches_fit_the_gpu_s_memory(monkeypatch: pytest.MonkeyPatch, gib: float, expected: int) -> None:
    asked: list[int] = []

    def properties(index: int) -> SimpleNamespace:
        asked.append(index)
        return SimpleNamespace(total_memory=int(gib * 2**30))

    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    assert automatic_batch_size(torch.device("cuda", 1)) == expected
    assert asked == [1]


def test_auto_batches_stay_small_on_cpu() -> None:
    assert automatic_batch_size(torch.device("cpu")) == 16


def test_auto_concurrency_holds_enough_single_image_jobs_to_fill_the_next_batch() -> None:
    assert automatic_concurrency(16) == 32  # CPU: as before "auto"
    assert automatic_concurrency(256) == 512
    assert automatic_concurrency(1024) == 1024  # the setting's own ceiling
    assert automatic_concurrency(1) == 32
