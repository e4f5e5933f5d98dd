"""bench.hybrid_split runs the worker's own batching and JPEG split with the device stood in for by waits: run it
whole here, small, and check it printed every way's rate against its best."""

from __future__ import annotations

import re

import pytest

from bench.hybrid_split import best_rates, main


def test_the_bench_runs_through(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--images", "48", "--batch-size", "8", "--processes", "2", "--gpu-ms", "1", "--process-ms", "4",
          "--model-ms", "0.5", "--engines", "yes", "no"])
    printed = capsys.readouterr().out
    for way in ("processes", "nvJPEG", "shared"):
        assert len(re.findall(rf"  {way} +[\d.]+ images/s, at best +[\d.]+ \(\d+%\)", printed)) == 2, printed
    assert re.search(r"learned by the sharing decoder: nvJPEG [\d.]+ ms and a process [\d.]+ ms", printed), printed


def test_the_best_rates_are_the_bounds_of_each_way() -> None:
    # 2 ms to decode on the GPU, 1 ms a caption, 4 processes at 20 ms: 200 images/s from them.
    beside = best_rates(0.002, 0.001, 0.020, 4, one_at_a_time=False)
    assert beside == pytest.approx({"processes": 200, "nvJPEG": 500, "shared": 700})
    # One at a time: n x 1 ms + (n - 200) x 2 ms of the GPU a second: n = 1400 / 3.
    queued = best_rates(0.002, 0.001, 0.020, 4, one_at_a_time=True)
    assert queued == pytest.approx({"processes": 200, "nvJPEG": 1000 / 3, "shared": 1400 / 3})
