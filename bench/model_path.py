"""Model-path benchmark: our BlipCaptioner against transformers' own pipeline, in the same run.

    python -m bench.model_path [--device auto] [--images N] [--batch-size N] [--baseline-images N]

Both sides run the Salesforce/blip-image-captioning-base architecture (ViT-B/16 at 384 px, a 12-layer
BERT-base decoder with 12 heads, vocabulary 30524) with random weights: no hub is reachable here, and speed
does not depend on the weights. Generation is forced to exactly --new-tokens tokens on both sides, so both do
the same work. The baseline is `pipeline("image-text-to-text")`, one image at a time, same device and dtype.

"model path" starts from decoded PIL images; "worker path" starts from JPEG bytes (640x480 and 4000x3000), so
decoding and resizing count: CPU threads decode and resize the next batches while the model runs this one.
"reduced precision" captions rendered shapes with the trained tiny model (tests/fixtures/tiny_blip) in fp16
and bf16 and reports the share of captions identical to fp32 on the same device.

Defaults suit the device: on CUDA, 4096 images in batches of 512 (a few minutes in all on an H200); on CPU,
a few dozen in batches of 16, in interleaved rounds. Needs only torch, transformers and pillow.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.gpu_jpeg import gpu_jpeg_path
from bench.harness import (
    Side,
    batches,
    build_blip_base,
    caption_one_at_a_time,
    cpu_description,
    cycle,
    identical,
    jpeg,
    measure,
    photo,
    pipelined,
    prefetched,
    rendered_shapes,
    sync,
    transformers_pipeline,
)
from worker.decode.images import decode_image
from worker.decode.processes import DECODING_NICENESS, DecodePool
from worker.model.captioner import (
    DTYPE_CHOICES,
    DTYPES,
    BlipCaptioner,
    DeviceChoice,
    DtypeChoice,
    pick_device,
    pick_dtype,
)
from worker.model.fast_blip import GRAPH_MAX_ROWS
from worker.model.fit import HostImage
from worker.model.int8_linear import int8_usable

TINY_MODEL = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "tiny_blip"


def model_path(ours: BlipCaptioner, baseline: Any, args: argparse.Namespace) -> None:
    """Greedy and beam-3 images/s of both sides, and their ratio."""
    distinct = [photo(640, 480, seed) for seed in range(min(args.images, 64))]
    images = cycle(distinct, args.images)
    base_images = images[: args.baseline_images]
    for beams in (1, 3):
        generation = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "num_beams": beams}
        print(f"model path, {'greedy' if beams == 1 else f'beam-{beams}'}, {args.new_tokens} new tokens:", flush=True)

        def run_ours(imgs: Sequence[Image.Image], gen: dict[str, int] = generation) -> None:
            for batch in batches(imgs, args.batch_size):
                ours.caption(batch, None, gen)

        def run_generate(imgs: Sequence[Image.Image], gen: dict[str, int] = generation) -> None:
            for batch in batches(imgs, args.batch_size):
                ours._caption_with_generate(batch, None, gen)

        def run_ours_ahead(imgs: Sequence[Image.Image], gen: dict[str, int] = generation) -> None:
            # As the worker runs: its decoding threads resize the next batches while the model runs this one,
            # and the next batch's pixels are uploaded while the model runs this one.
            with ThreadPoolExecutor(args.decode_threads, thread_name_prefix="prepare") as pool:
                pipelined(ours, prefetched(imgs, args.batch_size, ours.prepare, pool, ahead=2), gen)

        sides = [
            Side(f"captioner, batches of {args.batch_size}", len(images), partial(run_ours, images),
                 partial(run_ours, images[: args.batch_size])),
            Side(f"captioner, batches of {args.batch_size}, prepared ahead", len(images),
                 partial(run_ours_ahead, images), partial(run_ours_ahead, images[: args.batch_size])),
            Side("pipeline('image-text-to-text'), one at a time", len(base_images),
                 partial(caption_one_at_a_time, baseline, base_images, generation),
                 partial(caption_one_at_a_time, baseline, base_images[:1], generation)),
        ]
        if not args.no_generate_side:
            # For context: batching alone, through transformers' generate() (the captioner before its fast path).
            generate_images = images[: args.generate_images]
            sides.append(Side(f"generate(), batches of {args.batch_size}", len(generate_images),
                              partial(run_generate, generate_images), partial(run_generate, images[: args.batch_size])))
        rates = measure(sides, args.repeats)
        print(f"  ratio {rates[0] / rates[2]:.2f}x, prepared ahead {rates[1] / rates[2]:.2f}x"
              + (f" (generate() batched: {rates[3] / rates[2]:.2f}x)" if len(rates) > 3 else ""), flush=True)


def stages(ours: BlipCaptioner, args: argparse.Namespace) -> None:
    """Where one batch's time goes in the fast path (greedy), so a missed target says what to attack."""
    fast = ours.fast
    if fast is None:
        print("stages: the captioner runs generate() for this model; no fast path to break down")
        return
    from worker.model.generation import DecodeOptions, generate

    photos = cycle([photo(640, 480, seed) for seed in range(8)], args.batch_size)
    resized = [ours.prepare(image) for image in photos]
    arrays = [np.asarray(image) for image in resized]  # as the worker's decoding processes give them
    options = DecodeOptions(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    prompt = ours.prompt_ids(None)
    state: dict[str, Any] = {}
    steps: dict[str, Callable[[], object]] = {
        "pixel values from 640x480": lambda: ours.pixel_values(photos),
        "pixel values from input size": lambda: state.update(pixels=ours.pixel_values(resized)),
        "stacking alone (CPU)": lambda: ours.preprocessor.stack(resized) if ours.preprocessor else None,
        "pixel values from arrays": lambda: ours.pixel_values(arrays),
        # The H200 run of 2026-11-30 timed the step above at 0.625 ms an image against 0.356 from PIL images,
        # though its stacking was 10x faster: at once again, to tell the arrays from where the step falls (after
        # the decoding steps' memory, say).
        "pixel values from arrays, again": lambda: ours.pixel_values(arrays),
        "stacking arrays alone (CPU)": lambda: ours.preprocessor.stack(arrays) if ours.preprocessor else None,
        "vision encoder": lambda: state.update(tokens=fast.encode(state["pixels"])),
        "cross-attention K/V": lambda: fast.start(state["tokens"], 1, len(prompt) + args.new_tokens),
        "K/V + greedy decoding": lambda: generate(fast, state["tokens"], prompt, options, ours.special),
    }
    timings: dict[str, float] = {}
    for _ in range(2):  # the first round warms up
        for name, step in steps.items():
            sync()
            started = time.perf_counter()
            step()
            sync()
            timings[name] = (time.perf_counter() - started) * 1000 / len(photos)
    print(f"stages of one greedy batch of {len(photos)} (ms per image): "
          + ", ".join(f"{name} {ms:.3f}" for name, ms in timings.items()), flush=True)

    # The ways decoding can feed its steps (FastBlip.step_mode): their time and whether their tokens agree. Beam
    # search runs on as many images as "auto" still replays graphs for (its rows are images x beams).
    default_mode = fast.step_mode
    beam_images = min(len(photos), GRAPH_MAX_ROWS // 3)
    for label, images, beam_options in (
        ("greedy", len(photos), options),
        ("beam-3", beam_images, DecodeOptions(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                              num_beams=3)),
    ):
        reference: list[list[int]] | None = None
        for mode in args.step_modes:
            fast.step_mode = mode
            for _ in range(2):  # the first round warms up
                sync()
                started = time.perf_counter()
                tokens = generate(fast, state["tokens"][:images], prompt, beam_options, ours.special)
                sync()
                elapsed = time.perf_counter() - started
            reference = reference or tokens
            same = sum(a == b for a, b in zip(tokens, reference, strict=True))
            print(f"  K/V + {label} decoding of {images}, step mode {mode}: {elapsed * 1000 / images:.3f} ms per "
                  f"image; tokens identical to {args.step_modes[0]}'s: {same}/{len(tokens)}", flush=True)
    fast.step_mode = default_mode

    # One decoding step: the time the host takes to queue its kernels against the time it takes to run. Equal
    # means the host is the bottleneck (CUDA graphs would pay); far apart means the device is.
    ids = torch.full((len(photos), 1), ours.bos_token_id, dtype=torch.long, device=ours.device)
    default = fast.fused_cross_attention
    for fused in (False, True):
        fast.fused_cross_attention = fused
        for _ in range(2):  # the first round warms up
            cache = fast.start(state["tokens"], 1, 1 + args.new_tokens)
            fast.step(cache, ids)
            sync()
            started = time.perf_counter()
            for _ in range(args.new_tokens - 1):
                fast.step(cache, ids)
            queued = time.perf_counter() - started
            sync()
            ran = time.perf_counter() - started
        print(f"  decoding step, batch {len(photos)}, {'fused' if fused else 'matmul'} cross-attention: "
              f"{ran * 1000 / (args.new_tokens - 1):.2f} ms, of which {queued * 1000 / (args.new_tokens - 1):.2f} "
              "ms queuing on the host", flush=True)
    fast.fused_cross_attention = default


def decode_ms(blobs: Sequence[bytes], prepare: Callable[[bytes], HostImage]) -> float:
    started = time.perf_counter()
    for blob in blobs:
        prepare(blob)
    return (time.perf_counter() - started) / len(blobs) * 1000


def worker_path(ours: BlipCaptioner, args: argparse.Namespace) -> None:
    """JPEG bytes to captions, decoding and resizing overlapped with the model, against the model path.

    Decoding runs on threads (as the worker does) and, for comparison, in processes: threads share the GIL with
    the thread that drives the model. The model path from decoded images runs in the same interleaved rounds,
    so the ratios compare like with like.
    """
    generation = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
    workers = args.decode_threads
    print(f"worker path (JPEG bytes -> caption), greedy, {workers} decoding threads or {args.decode_processes} "
          "processes:", flush=True)
    size, resample = ours.input_size, ours.preprocessor.resample if ours.preprocessor else None
    if size is None or resample is None:
        print("  the captioner has no fixed input size: skipped")
        return

    def prepare(blob: bytes) -> HostImage:
        return ours.prepare(decode_image(blob, draft_to=size))

    def full_decode(blob: bytes) -> HostImage:
        return ours.prepare(decode_image(blob))

    # The rule before 2026-11-30: a draft covering all of the input size (4000x3000 decodes at 1/4, 1000x750,
    # where the worker's rule, covering 95%, decodes it at 1/8 and stretches it 2% to 384 high).
    def prepare_covering(blob: bytes) -> HostImage:
        return ours.prepare(decode_image(blob, draft_to=size, cover=1.0))

    def run(data: Sequence[Any], decode: Callable[[Any], HostImage], pool: Executor) -> None:
        pipelined(ours, prefetched(data, args.batch_size, decode, pool, ahead=2), generation)

    def side(label: str, data: Sequence[Any], decode: Callable[[Any], HostImage], pool: Executor) -> Side:
        return Side(label, len(data), partial(run, data, decode, pool), partial(run, data[: args.batch_size], decode,
                                                                               pool))

    images = cycle([photo(640, 480, seed) for seed in range(8)], args.images)
    small = cycle([jpeg(photo(640, 480, seed)) for seed in range(8)], args.images)
    large = cycle([jpeg(photo(4000, 3000, seed)) for seed in range(8)], args.images)
    # The worker's own pool (CAPTIONER_DECODE_PROCESSES), one core left to the model's thread. Twice as many
    # threads feed it as there are processes (the worker's job threads do likewise), so that no process idles
    # while its thread takes the reply and sends the next image.
    # One pool per --decode-niceness value (the worker's own: DECODING_NICENESS), to see what the priority does.
    pools = {niceness: DecodePool(args.decode_processes, size, resample, niceness=niceness)
             for niceness in args.decode_niceness}
    named = len(pools) > 1
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as threads, \
            ThreadPoolExecutor(2 * args.decode_processes, thread_name_prefix="feed") as feeders:
        sides = [
            side("model path (decoded 640x480 images, prepared ahead)", images, ours.prepare, threads),
            side("captioner from 640x480 JPEG", small, prepare, threads),
            side("captioner from 4000x3000 JPEG", large, prepare, threads),
            side("captioner from 4000x3000 JPEG, draft covering 100%", large, prepare_covering, threads),
        ]
        for niceness, pool in pools.items():
            by = "decoding processes" + (f" at nice {niceness}" if named else "")
            sides += [side(f"captioner from 640x480 JPEG, {by}", small, pool.decode, feeders),
                      side(f"captioner from 4000x3000 JPEG, {by}", large, pool.decode, feeders)]
        try:
            rates = measure(sides, args.repeats)
        finally:
            for pool in pools.values():
                pool.close()
    for label, rate in zip([s.label.removeprefix("captioner from ") for s in sides[1:]], rates[1:], strict=True):
        print(f"  {label}: {rate / rates[0]:.0%} of the model path", flush=True)
    print(f"  decode+resize on one thread (ms/image): 640x480 {decode_ms(small[:8], prepare):.1f} (without JPEG "
          f"draft {decode_ms(small[:8], full_decode):.1f}); 4000x3000 {decode_ms(large[:8], prepare):.1f} (without "
          f"{decode_ms(large[:8], full_decode):.1f}, draft covering 100% {decode_ms(large[:8], prepare_covering):.1f})",
          flush=True)
    full = [np.asarray(full_decode(blob)).astype(np.int16) for blob in large[:4]]
    for label, decode in (("draft covering 95% (the worker's)", prepare), ("covering 100%", prepare_covering)):
        moved = np.mean([np.abs(np.asarray(decode(blob)).astype(np.int16) - whole).mean()
                         for blob, whole in zip(large[:4], full, strict=True)])
        print(f"  4000x3000, {label}: fitted pixels {moved:.2f} levels (of 255) from a full decode's on average",
              flush=True)


def reduced_precision(device: torch.device, count: int) -> None:
    """Share of the tiny model's captions in fp16, bf16 and (on CPUs that run it) int8 identical to its fp32
    captions, on rendered shapes."""
    truths, images = rendered_shapes(count)
    choice: DeviceChoice = "cuda" if device.type == "cuda" else "cpu"
    torch.backends.cudnn.allow_tf32 = False  # the fp32 reference must be fp32: cuDNN convolutions default to TF32
    fp32 = BlipCaptioner.load(str(TINY_MODEL), choice, "float32")
    reference = [c for batch in batches(images, 64) for c in fp32.caption(batch)]
    print(f"reduced precision, tiny model, {count} rendered shapes (fp32 captions right: "
          f"{identical(reference, truths).strip()}):")
    dtypes: list[DtypeChoice] = ["float16", "bfloat16"]
    if device.type == "cpu" and int8_usable():
        dtypes.append("int8")
    for dtype in dtypes:
        try:
            model = BlipCaptioner.load(str(TINY_MODEL), choice, dtype)
            captions = [c for batch in batches(images, 64) for c in model.caption(batch)]
        except (RuntimeError, NotImplementedError) as exc:  # e.g. fp16 kernels missing on an old CPU build
            print(f"  {dtype}: not available on {device}: {exc}")
            continue
        print(f"  {dtype:<9} identical to fp32: {identical(captions, reference)}")


def sweep(model_dir: Path, device_choice: DeviceChoice, args: argparse.Namespace) -> None:
    """Greedy images/s of the model alone (images already at its input size) per batch size and dtype.

    Says which batch size the device needs and what each dtype costs or saves (on a GPU bf16 against fp16; on a
    CPU bf16 against fp32).
    """
    on_gpu = torch.cuda.is_available() and device_choice != "cpu"
    generation = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
    for dtype in args.sweep_dtypes:
        ours = BlipCaptioner.load(str(model_dir), device_choice, dtype)
        prepared = [ours.prepare(photo(640, 480, seed)) for seed in range(8)]
        # PIL images, as decoding threads give them, or arrays, as the worker's decoding processes give them.
        inputs: dict[str, list[HostImage]] = {"images": prepared, "arrays": [np.asarray(p) for p in prepared]}
        print(f"sweep, {dtype}, greedy {args.new_tokens} new tokens, images at the "
              "input size, uploaded ahead:", flush=True)

        def run(images: Sequence[HostImage], size: int, model: BlipCaptioner = ours) -> None:
            pipelined(model, batches(images, size), generation)

        for size, mode, kind in itertools.product(args.sweep_batch_sizes, args.step_modes, args.sweep_inputs):
            images = cycle(inputs[kind], max(args.images, 2 * size))
            if ours.fast is not None:
                ours.fast.step_mode = mode
            label = f"batches of {size}, step mode {mode}" + (", from arrays" if kind == "arrays" else "")
            try:
                measure([Side(label, len(images), partial(run, images, size),
                              partial(run, images[:size], size))], args.repeats)
            except torch.OutOfMemoryError:
                print(f"  {label}: out of memory", flush=True)
            except RuntimeError:  # e.g. a step mode this device cannot run: the other sides still run
                print(f"  {label} FAILED:", flush=True)
                traceback.print_exc()
            if on_gpu:
                torch.cuda.empty_cache()
        del ours


def compiled_encoder(model_dir: Path, device_choice: DeviceChoice, args: argparse.Namespace) -> None:
    """Greedy images/s with the vision encoder under torch.compile (inductor fuses its norms, GELUs and residual
    adds), against the same captioner eager, and whether the tokens stay the same: the worker's
    CAPTIONER_COMPILE_ENCODER (FastBlip.compile_encoder), GPU only."""
    ours = BlipCaptioner.load(str(model_dir), device_choice)
    fast = ours.fast
    if fast is None:
        print("compiled encoder: no fast path for this model")
        return
    generation = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
    size = args.compile_batch_size
    # Arrays at the input size, as the worker's decoding processes give them on a GPU.
    images = cycle([np.asarray(ours.prepare(photo(640, 480, seed))) for seed in range(8)], max(args.images, 2 * size))
    print(f"compiled encoder, batches of {size}, greedy {args.new_tokens} new tokens, arrays at the input "
          "size, uploaded ahead:", flush=True)

    def run(count: int) -> None:
        pipelined(ours, batches(images[:count], size), generation)

    def captions(count: int) -> list[str]:
        return [c for batch in batches(images[:count], size) for c in ours.caption(batch, None, generation)]

    eager_captions = captions(size)
    eager_rate = measure([Side("eager encoder", len(images), partial(run, len(images)),
                               partial(run, size))], args.repeats)[0]
    if not fast.compile_encoder():  # as the worker does with CAPTIONER_COMPILE_ENCODER
        print("  compiled encoder: GPU only", flush=True)
        return
    started = time.perf_counter()
    compiled_captions = captions(size)
    print(f"  compiling (first batch) took {time.perf_counter() - started:.1f} s", flush=True)
    pixels = ours.pixel_values(images[: size])
    difference = (fast.encode(pixels).float() - fast.encode_eager(pixels).float()).abs().max().item()
    same = sum(a == b for a, b in zip(compiled_captions, eager_captions, strict=True))
    rate = measure([Side("compiled encoder", len(images), partial(run, len(images)),
                         partial(run, size))], args.repeats)[0]
    print(f"  compiled/eager {rate / eager_rate:.2f}x; captions identical {same}/{len(eager_captions)}; "
          f"encoder output max abs difference {difference:.3g}", flush=True)
    # The worker's batches are not all full: a batch of another size compiles once more, with the batch
    # dimension dynamic from then on. What that costs once, and in images/s after.
    other = size - size // 8
    started = time.perf_counter()
    ours.caption(images[:other], None, generation)
    sync()
    print(f"  first batch of {other} (compiles again) took {time.perf_counter() - started:.1f} s", flush=True)
    measure([Side(f"compiled encoder, batches of {other} and {size}, dynamic", 2 * (other + size),
                  partial(pipelined, ours, [images[:other], images[:size]] * 2, generation),
                  partial(run, size))], args.repeats)


def section(name: str, run: Callable[[], object]) -> None:
    """Run one measurement; a failure is printed and the others still run (GPU time is too scarce to rerun)."""
    try:
        run()
    except Exception:
        print(f"{name} FAILED:")
        traceback.print_exc()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--images", type=int, help="images per measurement (CUDA 4096, CPU 32)")
    parser.add_argument("--batch-size", type=int, help="captioner batch size (CUDA 512, CPU 16)")
    parser.add_argument("--baseline-images", type=int, help="images for the slow baseline (CUDA 64, CPU 8)")
    parser.add_argument("--generate-images", type=int, help="images for batched generate() (default: --images)")
    parser.add_argument("--no-generate-side", action="store_true", help="skip batched generate(), for context only")
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--decode-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--decode-processes", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--decode-niceness", type=int, nargs="*", default=[DECODING_NICENESS],
                        help="worker-path sides with decoding processes, one set per CPU priority (nice) value")
    parser.add_argument("--precision-images", type=int, default=512)
    parser.add_argument("--repeats", type=int, help="interleaved rounds per measurement, best kept (CUDA 1, CPU 3)")
    parser.add_argument("--sweep-batch-sizes", type=int, nargs="*", help="(CUDA 256 512 1024 2048, CPU 8 16)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                        help="the captioner's (CAPTIONER_DTYPE); the pipeline runs fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--sweep-dtypes", nargs="*", choices=list(DTYPES),
                        help="(CUDA float16 bfloat16, CPU float32 bfloat16)")
    parser.add_argument("--sweep-inputs", nargs="*", default=["images"], choices=["images", "arrays"],
                        help="what the sweep feeds the captioner: PIL images (decoding threads) or arrays "
                             "(decoding processes)")
    parser.add_argument("--step-modes", nargs="*", choices=["auto", "graph", "static", "dynamic"],
                        help="decoding step modes to compare (FastBlip.step_mode; default: the device's own, "
                             "CUDA auto, CPU dynamic)")
    parser.add_argument("--compile-batch-size", type=int,
                        help="batch size of the compiled-encoder sides (default: --batch-size)")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["stages", "model", "worker", "nvjpeg", "precision", "sweep", "compile"])
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    device_choice: DeviceChoice = args.device
    device = pick_device(device_choice)
    dtype = pick_dtype(device, args.dtype)
    # The pipeline as a user runs it: fp16 on a GPU, plain fp32 on a CPU.
    baseline_dtype = pick_dtype(device, "float16" if device.type == "cuda" else "float32")
    on_gpu = device.type == "cuda"
    args.sweep_dtypes = args.sweep_dtypes or (["float16", "bfloat16"] if on_gpu else ["float32", "bfloat16"])
    args.images = args.images or (4096 if on_gpu else 32)
    args.batch_size = args.batch_size or (512 if on_gpu else 16)
    args.compile_batch_size = args.compile_batch_size or args.batch_size
    args.repeats = args.repeats or (1 if on_gpu else 3)
    # generate() runs about a tenth as fast as the captioner on a GPU: a quarter of the images gives its rate.
    args.generate_images = min(args.generate_images or (args.images // 4 if on_gpu else args.images), args.images)
    args.sweep_batch_sizes = args.sweep_batch_sizes or ([256, 512, 1024, 2048] if on_gpu else [8, 16])
    args.step_modes = args.step_modes or (["auto"] if on_gpu else ["dynamic"])
    args.baseline_images = min(args.baseline_images or (64 if on_gpu else 8), args.images)
    print(f"date {date.today()}, machine {platform.node()}: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, transformers {__import__('transformers').__version__}, "
          f"{torch.get_num_threads()} torch threads, device {device}"
          + f" ({torch.cuda.get_device_name() if on_gpu else cpu_description()})"
          + f", captioner {args.dtype} ({dtype}), pipeline {baseline_dtype}", flush=True)
    print(f"images {args.images}, batch size {args.batch_size}, baseline images {args.baseline_images}, "
          f"new tokens {args.new_tokens}, rounds {args.repeats}", flush=True)
    started = time.perf_counter()
    with torch.inference_mode(), tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "blip-base-random"
        # All but precision need BLIP-base.
        if {"stages", "model", "worker", "nvjpeg", "sweep", "compile"} - set(args.skip):
            build_blip_base(model_dir)
        if {"stages", "model", "worker", "nvjpeg"} - set(args.skip):
            ours = BlipCaptioner.load(str(model_dir), device_choice, args.dtype)
            if "stages" not in args.skip:
                section("stages", lambda: stages(ours, args))
            if "model" not in args.skip:
                baseline = transformers_pipeline(model_dir, device, baseline_dtype)
                section("model path", lambda: model_path(ours, baseline, args))
                del baseline
            if "worker" not in args.skip:
                section("worker path", lambda: worker_path(ours, args))
            if "nvjpeg" not in args.skip:
                section("worker path with nvJPEG", lambda: gpu_jpeg_path(ours, args))
            del ours
        if "precision" not in args.skip:
            section("reduced precision", lambda: reduced_precision(device, args.precision_images))
        if "sweep" not in args.skip:
            section("sweep", lambda: sweep(model_dir, device_choice, args))
        if "compile" not in args.skip:
            # Last: compiling can take a minute or more, and whatever it does, the figures above are printed.
            section("compiled encoder", lambda: compiled_encoder(model_dir, device_choice, args))
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
