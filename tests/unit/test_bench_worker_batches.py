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


@pytest.mark.parametrize(("size", "processes", "sides"), [
    ("64x48", "0", [", nvJPEG"]),
    ("2000x1000", "1", [", nvJPEG", ", nvJPEG and processes"]),  # 2 MP: large enough to share with a process
])
def test_the_nvjpeg_sides_run_through_the_worker_s_device_path(
    capsys: pytest.CaptureFixture[str], size: str, processes: str, sides: list[str]
) -> None:
    main(["--model", str(TINY_MODEL), "--device", "cpu", "--images", "16", "--sizes", size, "--clients", "4",
          "--new-tokens", "2", "--repeats", "1", "--decode-processes", processes], nvjpeg_stand_in=pillow_decode_jpeg)
    printed = capsys.readouterr().out
    assert re.search(r"progressive +kept on the CPU: decodes; mean difference from Pillow 0.00", printed), printed
    assert re.search(re.escape(f"nvJPEG on {size} JPEGs, decoding only (images/s by call size): ")
                     + r"8: \d+, 32: \d+, 128: \d+; in calls of 32 beside a GPU kept busy: \d+ \(\d+% of alone\), "
                     r"the busy work at \d+% of its rate alone \(\d+ products/s\); grainy JPEGs of a real photo's "
                     r"size, in calls of 32: \d+", printed), printed
    for how in ["", *sides]:
        assert re.search(re.escape(f"{size} JPEG jobs, 4 at once{how}:")
                         + r" \d+% of the model path fed arrays, \d+% of it fed PIL images", printed), printed
    if processes != "0":
        assert re.search(r"learned by the sharing decoder: nvJPEG [\d.]+ ms and a process [\d.]+ ms per 12 MP JPEG "
                         r"\(it started from 1.87 and 33.0\)", printed), printed
    for way in ["CPU decoding", *[how.removeprefix(", ") for how in sides]]:
        found = re.search(re.escape(f"48 rendered scenes as JPEG jobs, {way}: ") + r"(\d+)/48 captions right", printed)
        assert found and int(found.group(1)) >= 44, printed  # the tiny model names nearly every scene right
