"""bench.worker_batches runs on the GPU machines, where a mistake would cost scarce device time: run it whole here
on the tiny model, decoding on threads and in a process, and check it printed every side's ratio."""

from __future__ import annotations

import re

import pytest

from bench.worker_batches import main
from tests.conftest import TINY_MODEL


@pytest.mark.parametrize("processes", ["0", "1"])
def test_the_bench_runs_through(capsys: pytest.CaptureFixture[str], processes: str) -> None:
    main(["--model", str(TINY_MODEL), "--device", "cpu", "--images", "24", "--sizes", "64x48", "--clients", "auto",
          "4", "--new-tokens", "2", "--repeats", "1", "--decode-processes", processes])
    printed = capsys.readouterr().out
    for label in ("64x48 JPEG jobs, 32 at once:", "64x48 JPEG jobs, 4 at once:"):
        assert re.search(re.escape(label) + r" \d+% of the model path", printed), printed
