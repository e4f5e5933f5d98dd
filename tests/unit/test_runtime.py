"""The worker process's setup that is not the model: torch's thread count."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from common.settings import Settings
from worker.runtime import set_torch_threads


@pytest.fixture(autouse=True)
def restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_torch_threads_are_set_when_asked(make_settings: Callable[..., Settings]) -> None:
    torch.set_num_threads(2)
    set_torch_threads(make_settings(torch_threads=1))
    assert torch.get_num_threads() == 1


def test_zero_keeps_torchs_default(make_settings: Callable[..., Settings]) -> None:
    torch.set_num_threads(2)
    set_torch_threads(make_settings(torch_threads=0))
    assert torch.get_num_threads() == 2
