"""The CPU engines bench's export (bench/exported_blip.py): ONNX Runtime and OpenVINO, running the exported tiny
model, caption exactly as our BlipCaptioner does; else the bench would time other work than ours."""

from __future__ import annotations

import pytest

from bench.exported_blip import (
    ExportedBlip,
    ExportedCaptioner,
    Graphs,
    OnnxRuntimeGraphs,
    OpenVinoGraphs,
    export,
    openvino_ir,
)
from bench.harness import rendered_shapes
from tests.conftest import TINY_MODEL
from worker.model.captioner import BlipCaptioner

IMAGES = rendered_shapes(8, seed=11)[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> ExportedBlip:
    return export(TINY_MODEL, tmp_path_factory.mktemp("tiny_onnx"))


@pytest.fixture(scope="module")
def tiny_ir(tiny: ExportedBlip, tmp_path_factory: pytest.TempPathFactory) -> ExportedBlip:
    return openvino_ir(tiny, tmp_path_factory.mktemp("tiny_ir"))


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
# As the service captions (EOS ends a caption), and as the bench times (exactly 12 new tokens, EOS banned).
@pytest.mark.parametrize("generation", [{"max_new_tokens": 20}, {"max_new_tokens": 12, "min_new_tokens": 12}])
def test_fp32_captions_are_ours(tiny: ExportedBlip, tiny_ir: ExportedBlip, runtime: str,
                                generation: dict[str, int]) -> None:
    # OpenVINO from its IR, as the bench runs it.
    graphs: Graphs = OnnxRuntimeGraphs(tiny, 2) if runtime == "onnxruntime" else OpenVinoGraphs(tiny_ir, "fp32", 2)
    theirs = ExportedCaptioner(tiny, graphs)
    ours = BlipCaptioner.load(str(TINY_MODEL), "cpu", "float32").caption(IMAGES, None, generation)
    assert len(set(ours)) > 4  # captions that tell the images apart, so that equal ones say something
    assert theirs.caption(IMAGES, None, generation) == ours
    assert [theirs.caption([image], None, generation)[0] for image in IMAGES[:3]] == ours[:3]
