"""bench.worker_batches runs on the GPU machines, where a mistake would cost scarce device time: run it whole here
on the tiny model, decoding on threads, in a process and (Pillow standing in for nvJPEG) through the worker's path for
JPEGs decoded on the GPU, and check it printed every side's ratio."""

from __future__ import annotations

import re

import pytest

from bench.worker_batches import main
from tests.conftest import TINY_MODEL
from tests.nvjpeg_stand_in import pillow_decode_jpeg


@pytest.mark.parametrize("processes", ["0", "1"])
def test_the_bench_runs_through(capsys: pytest.CaptureFixture[str], processes: str) -> None:
    main(["--model", str(TINY_MODEL), "--device", "cpu", "--images", "24", "--sizes", "64x48", "--clients", "auto",
          "4", "--new-tokens", "2", "--repeats", "1", "--decode-processes", processes])
    printed = capsys.readouterr().out
    for label in ("64x48 JPEG jobs, 32 at once:", "64x48 JPEG jobs, 4 at once:"):
        assert re.search(re.escape(label) + r" \d+% of the model path", printed), printed


def test_the_nvjpeg_sides_run_through_the_worker_s_device_path(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--model", str(TINY_MODEL), "--device", "cpu", "--images", "16", "--sizes", "64x48", "--clients", "4",
          "--new-tokens", "2", "--repeats", "1", "--decode-processes", "0"], nvjpeg_stand_in=pillow_decode_jpeg)
    printed = capsys.readouterr().out
    for label in ("64x48 JPEG jobs, 4 at once:", "64x48 JPEG jobs, 4 at once, nvJPEG:"):
        assert re.search(re.escape(label) + r" \d+% of the model path", printed), printed
