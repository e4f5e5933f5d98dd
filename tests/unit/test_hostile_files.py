"""Every hostile or odd file decodes to a clean per-image error or a correct RGB image, cheaply.

Each file is decoded in a process of its own (tests/fixtures/decode_cost.py), which reports the outcome, the CPU
time and the peak memory of that one decode. The bounds are generous for a slow, shared machine, yet far below
what the files cost without the decoder's checks (an 81 MP PNG bomb: about a second and 250 MB).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.hostile_files import CORPUS, HostileFile

ROOT = Path(__file__).resolve().parents[2]
# CPU seconds, not wall time: a neighbour's load on a shared machine stretches the wall clock, not the work.
MAX_CPU_S = 1.0
# Peak memory above what the process held before decoding: a refused file must cost next to nothing; the largest
# image decoded (25 MP at full size, or a 64 MP progressive JPEG) costs about 125 MB.
MAX_MIB = {"rgb": 256.0, "invalid_image": 48.0, "image_too_large": 48.0}


def decode_in_a_process(file: HostileFile) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-m", "tests.fixtures.decode_cost"], input=file.data, cwd=ROOT,
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    found: dict[str, object] = json.loads(done.stdout)
    return found


@pytest.mark.parametrize("name", list(CORPUS))
def test_each_hostile_file_fails_alone_or_decodes_cheaply(name: str) -> None:
    file = CORPUS[name]
    found = decode_in_a_process(file)
    assert found["outcome"] == file.outcome, found
    if file.colour is not None:
        assert found["size"] == [384, 384]
        middle = found["middle"]
        assert isinstance(middle, list)
        assert all(abs(got - want) <= 3 for got, want in zip(middle, file.colour, strict=True)), found
    assert isinstance(found["cpu_s"], float) and found["cpu_s"] < MAX_CPU_S, found
    assert isinstance(found["peak_mib"], float) and found["peak_mib"] < MAX_MIB[file.outcome], found


def test_the_corpus_covers_the_issue_s_list() -> None:
    """Bombs in every format read, and each kind of hostile file the issue names."""
    names = " ".join(CORPUS)
    for fmt in ("png", "gif", "webp", "tiff", "jpeg", "bmp"):
        assert f"{fmt} claiming" in names or f"{fmt} bomb" in names, fmt
    for kind in ("frames", "1 x 100000", "cmyk", "16-bit", "palette png with transparency", "truncated", "corrupt",
                 "exif", "html", "pdf", "svg", "zip"):
        assert kind in names, kind
