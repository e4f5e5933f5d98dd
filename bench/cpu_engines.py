"""CPU engines benchmark: our BlipCaptioner against ONNX Runtime and OpenVINO running the same BLIP, in one run.

    python -m bench.cpu_engines [--images N] [--batch-size N] [--baseline-images N] [--repeats N]
                                [--precision-images N] [--skip ENGINE ...]

What: greedy captioning images/s on the CPU of the Salesforce/blip-image-captioning-base architecture (ViT-B/16 at
384 px, a 12-layer BERT-base decoder with 12 heads, vocabulary 30524) with random weights (no hub is reachable
here, and speed does not depend on the weights), every side generating exactly --new-tokens new tokens, by

- our BlipCaptioner, fp32, bf16 and int8 (CAPTIONER_DTYPE=int8, on CPUs with AVX-512 VNNI), in batches of
  --batch-size;
- transformers' pipeline("image-text-to-text"), fp32, one image at a time: the baseline every ratio is to;
- ONNX Runtime's CPU execution provider: fp32, fp16 (its CPU kernels run fp16 graphs; bf16 ones they refuse)
  and int8 (dynamic quantization), one image at a time and in batches;
- OpenVINO's CPU plugin: fp32, bf16 (its inference precision hint, where OPTIMIZATION_CAPABILITIES lists BF16)
  and int8 weights (nncf.compress_weights), one image at a time and in batches.

How: neither optimum nor optimum-intel exports BLIP captioning, so bench/exported_blip.py exports it (a vision
encoder graph, and a decoder step graph with a KV cache that greedy decoding in numpy runs). Every side starts from
the same decoded 640x480 images, preprocesses them as BlipCaptioner does and runs on as many threads as torch.
Each runtime's modes are timed in rounds interleaved with our captioner's and the pipeline's, the best round kept
(bench.harness.measure), then released before the next runtime loads: all of them at once held 20 GB. Before
that, the very same export runs on the trained tiny model (tests/fixtures/tiny_blip) to caption
--precision-images rendered shapes: every fp32 runtime must give exactly our fp32 captions (the run exits 1
otherwise), and each reduced-precision mode's share of captions identical to our fp32 ones is printed.

The defaults (16 images in one batch and 8 one at a time per side, 2 rounds, 256 rendered shapes) took 10 minutes
on 2 shared cores, 14 GB of memory at the peak. Needs the `bench` extra (onnxruntime, onnx, openvino, nncf) besides
torch, transformers and pillow.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image

from bench.exported_blip import (
    ExportedBlip,
    ExportedCaptioner,
    OnnxRuntimeGraphs,
    OpenVinoGraphs,
    OpenVinoMode,
    export,
    openvino_can,
    openvino_ir,
    quantize_int8,
)
from bench.harness import (
    Side,
    batches,
    build_blip_base,
    caption_one_at_a_time,
    cpu_description,
    cycle,
    identical,
    measure,
    photo,
    rendered_shapes,
    transformers_pipeline,
)
from bench.model_path import TINY_MODEL
from worker.model.captioner import BlipCaptioner, DtypeChoice
from worker.model.fit import ModelImage
from worker.model.int8_linear import int8_usable

SKIPPABLE = ("checks", "captioner-bf16", "captioner-int8", "pipeline", "onnxruntime", "openvino")
PIPELINE = "pipeline('image-text-to-text') fp32, one at a time"


class Captioner(Protocol):
    """BlipCaptioner and ExportedCaptioner alike."""

    def caption(self, images: Sequence[ModelImage], prompt: str | None = None,
                generation: Mapping[str, int] | None = None) -> list[str]: ...


def captions(model: Captioner, images: Sequence[ModelImage], size: int, generation: Mapping[str, int]) -> list[str]:
    """`images` captioned in batches of `size`."""
    return [caption for batch in batches(images, size) for caption in model.caption(batch, None, generation)]


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


Makers = dict[str, Callable[[], Captioner]]


def onnxruntime_modes(model_dir: Path, fp32: ExportedBlip, out: Path, threads: int) -> Makers:
    """ONNX Runtime's modes: fp32, fp16 (the model exported in fp16) and int8 (dynamic quantization)."""

    def session(exported: ExportedBlip) -> Captioner:
        return ExportedCaptioner(exported, OnnxRuntimeGraphs(exported, threads))

    return {
        "ONNX Runtime fp32": partial(session, fp32),
        "ONNX Runtime fp16": lambda: session(export(model_dir, out / "fp16", torch.float16)),
        "ONNX Runtime int8 (dynamic)": lambda: session(quantize_int8(fp32, out / "int8")),
    }


def openvino_modes(model_dir: Path, fp32: ExportedBlip, out: Path, threads: int) -> Makers:
    """OpenVINO's modes: fp32, bf16 where the CPU has it, and int8 weights."""
    ir = openvino_ir(fp32, out)
    modes: list[OpenVinoMode] = ["fp32", "bf16", "int8 weights"]
    if not openvino_can("BF16"):
        print("  OpenVINO bf16: not on this CPU (no BF16 in the plugin's OPTIMIZATION_CAPABILITIES)", flush=True)
        modes.remove("bf16")

    def compiled(mode: OpenVinoMode) -> Captioner:
        return ExportedCaptioner(ir, OpenVinoGraphs(ir, mode, threads))

    return {f"OpenVINO {mode}": partial(compiled, mode) for mode in modes}


RUNTIMES: dict[str, Callable[[Path, ExportedBlip, Path, int], Makers]] = {
    "onnxruntime": onnxruntime_modes, "openvino": openvino_modes,
}


def ready(makers: Makers) -> dict[str, Captioner]:
    """The modes that load here; for the others, why not."""
    modes: dict[str, Captioner] = {}
    for label, make in makers.items():
        try:
            modes[label] = make()
        except Exception as exc:  # a mode this machine or runtime version cannot run: the others still run
            print(f"  {label}: not available: {exc}", flush=True)
    return modes


def checks(out: Path, threads: int, args: argparse.Namespace) -> bool:
    """Every mode's captions of rendered shapes by the tiny model against our fp32 captions; False if an fp32
    runtime's differ (then its speed below is not the speed of the same captioning)."""
    truths, images = rendered_shapes(args.precision_images)
    generation = {"max_new_tokens": args.new_tokens}  # EOS ends captions here, as in the service
    ours = BlipCaptioner.load(str(TINY_MODEL), "cpu", "float32")
    reference = captions(ours, images, 64, generation)
    few = min(64, len(images))  # one at a time is slower, and where batching could change a result
    print(f"captions, tiny model, {len(images)} rendered shapes, greedy, up to {args.new_tokens} new tokens (our "
          f"fp32 captions right: {identical(reference, truths).strip()}); identical to our fp32 captions:", flush=True)
    modes: dict[str, Captioner] = {}
    for dtype in our_reduced_precisions(args.skip):
        modes[f"captioner {dtype}"] = BlipCaptioner.load(str(TINY_MODEL), "cpu", dtype)
    fp32 = export(TINY_MODEL, out / "fp32")
    for runtime, makers in RUNTIMES.items():
        if runtime not in args.skip:
            modes.update(ready(makers(TINY_MODEL, fp32, out / runtime, threads)))
    same = True
    for label, model in modes.items():
        batched = captions(model, images, 64, generation)
        alone = captions(model, images[:few], 1, generation)
        exact = batched == reference and alone == reference[:few]
        required = label.endswith("fp32")
        same = same and (exact or not required)
        verdict = ("  MISMATCH" if not exact else "") if required else ""
        print(f"  {label:<30} batched {identical(batched, reference)}, one at a time "
              f"{identical(alone, reference[:few])}{' (required: all)' if required else ''}{verdict}", flush=True)
    return same


@dataclass(frozen=True)
class Workload:
    """What every side captions: `images` in batches of `size`, or `singles` one at a time."""

    images: list[Image.Image]
    singles: list[Image.Image]
    size: int
    generation: Mapping[str, int]

    def batched(self, label: str, model: Captioner) -> Side:
        return Side(f"{label}, batches of {self.size}", len(self.images),
                    partial(captions, model, self.images, self.size, self.generation),
                    partial(captions, model, self.images[: self.size], self.size, self.generation))

    def one_at_a_time(self, label: str, model: Captioner) -> Side:
        return Side(f"{label}, one at a time", len(self.singles),
                    partial(captions, model, self.singles, 1, self.generation),
                    partial(captions, model, self.singles[:1], 1, self.generation))


def our_reduced_precisions(skip: Sequence[str]) -> list[DtypeChoice]:
    """Our captioner's reduced-precision modes to run here: int8 only where the CPU has what it needs."""
    modes: list[DtypeChoice] = []
    if "captioner-bf16" not in skip:
        modes.append("bfloat16")
    if "captioner-int8" not in skip and int8_usable():
        modes.append("int8")
    return modes


def torch_sides(model_dir: Path, work: Workload, skip: Sequence[str]) -> list[Side]:
    """Our captioner's sides, and the pipeline's, last, unless skipped."""
    sides = [work.batched("captioner fp32", BlipCaptioner.load(str(model_dir), "cpu", "float32"))]
    sides += [work.batched(f"captioner {dtype}", BlipCaptioner.load(str(model_dir), "cpu", dtype))
              for dtype in our_reduced_precisions(skip)]
    if "pipeline" not in skip:
        baseline = transformers_pipeline(model_dir, torch.device("cpu"), torch.float32)
        sides.append(Side(PIPELINE, len(work.singles),
                          partial(caption_one_at_a_time, baseline, work.singles, work.generation),
                          partial(caption_one_at_a_time, baseline, work.singles[:1], work.generation)))
    return sides


def timed_with(sides: Sequence[Side], makers: Makers, work: Workload, repeats: int) -> None:
    """The modes of `makers` loaded, timed in rounds interleaved with `sides`, each one's ratio to the pipeline
    printed, and released on return, before the next runtime's load."""
    started = time.perf_counter()
    modes = ready(makers)
    if modes:
        print(f"{', '.join(modes)}: ready in {time.perf_counter() - started:.0f} s", flush=True)
    timed = [*sides, *(side for label, model in modes.items()
                       for side in (work.one_at_a_time(label, model), work.batched(label, model)))]
    with torch.inference_mode():
        rates = measure(timed, repeats)
    labels = [side.label for side in timed]
    if PIPELINE in labels:
        baseline = rates[labels.index(PIPELINE)]
        print("  ratio to the pipeline:", flush=True)
        for label, rate in zip(labels, rates, strict=True):
            print(f"    {label:<50} {rate / baseline:6.2f}x", flush=True)


def speed(model_dir: Path, out: Path, threads: int, args: argparse.Namespace) -> None:
    """Images/s of every side on BLIP-base, and each one's ratio to the pipeline's: one runtime at a time, each
    interleaved with our captioner and the pipeline (all at once held 20 GB, a 2-core machine's whole memory)."""
    images = cycle([photo(640, 480, seed) for seed in range(min(args.images, 64))], args.images)
    work = Workload(images, images[: args.baseline_images], args.batch_size,
                    {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens})
    sides = torch_sides(model_dir, work, args.skip)
    fp32 = export(model_dir, out / "fp32")
    print(f"speed, BLIP-base, greedy, exactly {args.new_tokens} new tokens, from decoded 640x480 images "
          f"({len(work.images)} per side in batches, {len(work.singles)} one at a time):", flush=True)
    runtimes = [runtime for runtime in RUNTIMES if runtime not in args.skip]
    for runtime in runtimes:
        timed_with(sides, RUNTIMES[runtime](model_dir, fp32, out / runtime, threads), work, args.repeats)
    if not runtimes:
        timed_with(sides, {}, work, args.repeats)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16, help="images per batched side")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--baseline-images", type=int, default=8,
                        help="images per one-at-a-time side (the pipeline's and the runtimes')")
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds, best kept")
    parser.add_argument("--precision-images", type=int, default=256, help="rendered shapes the tiny model captions")
    parser.add_argument("--skip", nargs="*", default=[], choices=SKIPPABLE)
    args = parser.parse_args(argv)
    args.baseline_images = min(args.baseline_images, args.images)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    print(f"date {date.today()}, machine {platform.node()}: {cpu_description()}, {os.cpu_count()} CPUs, {threads} "
          f"threads per side; torch {torch.__version__}, transformers {version('transformers')}, onnxruntime "
          f"{version('onnxruntime')}, openvino {version('openvino')}, nncf {version('nncf')}", flush=True)
    print(f"images {args.images}, batch size {args.batch_size}, one at a time {args.baseline_images}, new tokens "
          f"{args.new_tokens}, rounds {args.repeats}, rendered shapes {args.precision_images}", flush=True)
    started = time.perf_counter()
    same = True
    with tempfile.TemporaryDirectory() as tmp:
        if "checks" not in args.skip:
            same = checks(Path(tmp) / "tiny", threads, args)
        model_dir = Path(tmp) / "blip-base-random"
        build_blip_base(model_dir)
        speed(model_dir, Path(tmp) / "blip-base-onnx", threads, args)
    print(f"total {time.perf_counter() - started:.0f} s", flush=True)
    if not same:
        raise SystemExit("an fp32 runtime's captions differ from ours (MISMATCH above): its speed is not comparable")


if __name__ == "__main__":
    main()
