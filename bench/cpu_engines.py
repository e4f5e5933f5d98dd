"""CPU engines benchmark: our BlipCaptioner against ONNX Runtime and OpenVINO running the same BLIP, in one run.

    python -m bench.cpu_engines [--images N] [--batch-size N] [--baseline-images N] [--repeats N]
                                [--precision-images N] [--skip ENGINE ...]

What: greedy captioning images/s on the CPU of the Salesforce/blip-image-captioning-base architecture (ViT-B/16 at
384 px, a 12-layer BERT-base decoder with 12 heads, vocabulary 30524) with random weights (no hub is reachable
here, and speed does not depend on the weights), every side generating exactly --new-tokens new tokens, by

- our BlipCaptioner, fp32 and bf16, in batches of --batch-size;
- transformers' pipeline("image-text-to-text"), fp32, one image at a time: the baseline every ratio is to;
- ONNX Runtime's CPU execution provider: fp32, fp16 (its CPU kernels run fp16 graphs; bf16 ones they refuse)
  and int8 (dynamic quantization), one image at a time and in batches;
- OpenVINO's CPU plugin: fp32, bf16 (its inference precision hint, where OPTIMIZATION_CAPABILITIES lists BF16)
  and int8 weights (nncf.compress_weights), one image at a time and in batches.

How: neither optimum nor optimum-intel exports BLIP captioning, so bench/exported_blip.py exports it (a vision
encoder graph, and a decoder step graph with a KV cache that greedy decoding in numpy runs). Every side starts from
the same decoded 640x480 images, preprocesses them as BlipCaptioner does and runs on as many threads as torch. The
sides are timed in interleaved rounds, the best round kept (bench.harness.measure). Before that, the very same
export runs on the trained tiny model (tests/fixtures/tiny_blip) to caption --precision-images rendered shapes:
every fp32 runtime must give exactly our fp32 captions (the run exits 1 otherwise), and each reduced-precision
mode's share of captions identical to our fp32 ones is printed.

The defaults (32 images in batches of 16, 8 one at a time, 2 rounds, 256 rendered shapes) take about 12 minutes on
2 cores. Needs the `bench` extra (onnxruntime, onnx, openvino, nncf) besides torch, transformers and pillow.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import date
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Protocol

import torch

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
from worker.model.captioner import BlipCaptioner
from worker.model.fit import ModelImage

SKIPPABLE = ("checks", "captioner-bf16", "pipeline", "onnxruntime", "openvino")


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


def runtime_modes(model_dir: Path, out: Path, threads: int, skip: Sequence[str]) -> dict[str, Captioner]:
    """Every mode of the runtimes not skipped, over the model saved in `model_dir`, exported into `out`."""
    fp32 = export(model_dir, out / "fp32")

    def onnxruntime(exported: ExportedBlip) -> Captioner:
        return ExportedCaptioner(exported, OnnxRuntimeGraphs(exported, threads))

    def openvino(mode: OpenVinoMode) -> Captioner:
        return ExportedCaptioner(fp32, OpenVinoGraphs(ir, mode, threads))

    makers: dict[str, Callable[[], Captioner]] = {}
    if "onnxruntime" not in skip:
        makers["ONNX Runtime fp32"] = partial(onnxruntime, fp32)
        makers["ONNX Runtime fp16"] = lambda: onnxruntime(export(model_dir, out / "fp16", torch.float16))
        makers["ONNX Runtime int8 (dynamic)"] = lambda: onnxruntime(quantize_int8(fp32, out / "int8"))
    if "openvino" not in skip:
        ir = openvino_ir(fp32, out / "openvino")
        makers["OpenVINO fp32"] = partial(openvino, "fp32")
        if openvino_can("BF16"):
            makers["OpenVINO bf16"] = partial(openvino, "bf16")
        else:
            print("  OpenVINO bf16: not on this CPU (no BF16 in the plugin's OPTIMIZATION_CAPABILITIES)", flush=True)
        makers["OpenVINO int8 weights"] = partial(openvino, "int8 weights")
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
    ours = BlipCaptioner.load(str(TINY_MODEL), "cpu")
    reference = captions(ours, images, 64, generation)
    few = min(64, len(images))  # one at a time is slower, and where batching could change a result
    print(f"captions, tiny model, {len(images)} rendered shapes, greedy, up to {args.new_tokens} new tokens (our "
          f"fp32 captions right: {identical(reference, truths).strip()}); identical to our fp32 captions:", flush=True)
    modes: dict[str, Captioner] = {}
    if "captioner-bf16" not in args.skip:
        modes["captioner bf16"] = BlipCaptioner.load(str(TINY_MODEL), "cpu", torch.bfloat16)
    modes.update(runtime_modes(TINY_MODEL, out, threads, args.skip))
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


def speed(model_dir: Path, modes: Mapping[str, Captioner], args: argparse.Namespace) -> None:
    """Images/s of every side on BLIP-base, and each one's ratio to the pipeline's."""
    images = cycle([photo(640, 480, seed) for seed in range(min(args.images, 64))], args.images)
    singles = images[: args.baseline_images]
    size = args.batch_size
    generation = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}

    def batched(label: str, model: Captioner) -> Side:
        return Side(f"{label}, batches of {size}", len(images), partial(captions, model, images, size, generation),
                    partial(captions, model, images[:size], size, generation))

    def one_at_a_time(label: str, model: Captioner) -> Side:
        return Side(f"{label}, one at a time", len(singles), partial(captions, model, singles, 1, generation),
                    partial(captions, model, singles[:1], 1, generation))

    sides = [batched("captioner fp32", BlipCaptioner.load(str(model_dir), "cpu"))]
    if "captioner-bf16" not in args.skip:
        sides.append(batched("captioner bf16", BlipCaptioner.load(str(model_dir), "cpu", torch.bfloat16)))
    baseline_at = None
    if "pipeline" not in args.skip:
        baseline_at = len(sides)
        baseline = transformers_pipeline(model_dir, torch.device("cpu"), torch.float32)
        sides.append(Side("pipeline('image-text-to-text') fp32, one at a time", len(singles),
                          partial(caption_one_at_a_time, baseline, singles, generation),
                          partial(caption_one_at_a_time, baseline, singles[:1], generation)))
    for label, model in modes.items():
        sides += [one_at_a_time(label, model), batched(label, model)]
    print(f"speed, BLIP-base, greedy, exactly {args.new_tokens} new tokens, decoded 640x480 images "
          f"({len(images)} per side in batches, {len(singles)} one at a time):", flush=True)
    with torch.inference_mode():
        rates = measure(sides, args.repeats)
    if baseline_at is not None:
        print("ratio to the pipeline:", flush=True)
        for side, rate in zip(sides, rates, strict=True):
            print(f"  {side.label:<50} {rate / rates[baseline_at]:6.2f}x", flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32, help="images per batched side")
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
        ready = time.perf_counter()
        modes = runtime_modes(model_dir, Path(tmp) / "blip-base-onnx", threads, args.skip)
        print(f"BLIP-base exported, quantized and compiled for {len(modes)} runtime modes in "
              f"{time.perf_counter() - ready:.0f} s", flush=True)
        speed(model_dir, modes, args)
    print(f"total {time.perf_counter() - started:.0f} s", flush=True)
    if not same:
        raise SystemExit("an fp32 runtime's captions differ from ours (MISMATCH above): its speed is not comparable")


if __name__ == "__main__":
    main()
