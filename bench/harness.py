"""What bench.model_path measures with: the BLIP-base model it builds, the images it makes, and the harness that
times sides in interleaved rounds and feeds the captioner batches. Needs only torch, transformers and pillow."""

from __future__ import annotations

import io
import platform
import random
import resource
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from PIL import Image
from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor, pipeline

try:  # transformers split image processors into backends in 2026; older releases have only the numpy one
    from transformers import BlipImageProcessorPil as BlipImageProcessor
except ImportError:
    from transformers import BlipImageProcessor  # type: ignore[assignment]

from tests.fixtures.shapes import random_scene, render
from worker.model.captioner import BlipCaptioner
from worker.model.fit import HostImage

T = TypeVar("T")


def build_blip_base(out: Path) -> None:
    """The BLIP-base architecture with random weights and a synthetic 30524-token vocabulary."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [f"w{i}" for i in range(30522 - len(specials))]
    vocab_dir = out / "vocab"
    vocab_dir.mkdir(parents=True)
    (vocab_dir / "vocab.txt").write_text("\n".join(specials + words) + "\n")
    tokenizer = BertTokenizer.from_pretrained(str(vocab_dir), bos_token="[DEC]")  # 30523
    tokenizer.add_tokens(["[ENC]"])  # 30524, as in the real checkpoint
    config = BlipConfig(
        text_config={"num_attention_heads": 12, "bos_token_id": tokenizer.convert_tokens_to_ids("[DEC]")}
    )
    model = BlipForConditionalGeneration(config)
    processor = BlipProcessor(image_processor(384), tokenizer)
    model.save_pretrained(out)
    processor.save_pretrained(out)


# The CPU flags that decide how fast the model runs: AVX-512, bf16 arithmetic (AVX-512 BF16, AMX) and int8 (VNNI).
CPU_FLAGS = ("avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu_description() -> str:
    """The processor's model name and which of CPU_FLAGS it has, from /proc/cpuinfo (Linux): figures differ by
    processor, and BENCHMARKS.md names it beside each."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in lines)}
    flags = set(fields.get("flags", "").split())
    has = [flag for flag in CPU_FLAGS if flag in flags]
    return f"{fields.get('model name', platform.machine())} [{' '.join(has) or 'no AVX-512, bf16 or VNNI'}]"


def image_processor(side: int) -> Any:
    """BLIP's image processor (PIL backend where transformers has backends) for `side` x `side` inputs."""
    return BlipImageProcessor(size={"height": side, "width": side})


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A noisy, photo-like image (random blocks, then blurred) so JPEG sizes are realistic."""
    rng = random.Random(seed)
    small = Image.new("RGB", (32, 24))
    small.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(32 * 24)])
    return small.resize((width, height), Image.Resampling.BICUBIC)


def grainy(width: int, height: int, seed: int) -> Image.Image:
    """harness.photo with sensor-like noise: its JPEG is the size of a real photo's (4.3 MB at 4000x3000, where a
    smooth photo() gives 0.8 MB), and the bytes to move and to entropy-decode grow with it."""
    noise = Image.merge("RGB", [Image.effect_noise((width, height), 60) for _ in range(3)])
    return Image.blend(photo(width, height, seed), noise, 0.2)


def jpeg(image: Image.Image, orientation: int = 1, **options: Any) -> bytes:
    """`image` as a quality-90 JPEG; with `orientation`, EXIF saying how to show it; `options` go to Pillow."""
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, **options)
    return buffer.getvalue()


def cycle(items: Sequence[Any], count: int) -> list[Any]:
    """`count` items from a few distinct ones: making thousands of distinct photos would take longer than the run."""
    return [items[i % len(items)] for i in range(count)]


def rendered_shapes(count: int, seed: int = 7) -> tuple[list[str], list[Image.Image]]:
    """`count` scenes of the kind the tiny model was trained on, rendered at assorted sizes: true captions, images."""
    rng = random.Random(seed)
    scenes = [random_scene(rng) for _ in range(count)]
    images = [render(scene, rng.choice([(64, 64), (640, 480), (300, 500)]), rng) for scene in scenes]
    return [scene.caption for scene in scenes], images


def identical(captions: Sequence[str], reference: Sequence[str]) -> str:
    """The share of `captions` identical to `reference`'s, as "97.7% (250/256)"."""
    same = sum(a == b for a, b in zip(captions, reference, strict=True))
    return f"{same / len(reference):6.1%} ({same}/{len(reference)})"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> str:
    if torch.cuda.is_available():
        return f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
    # ru_maxrss cannot be reset: it is the whole process's peak so far (both models loaded).
    return f"process peak RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"


@dataclass
class Side:
    """One thing to time: `run` captions `count` images; `warm_up` pays for first-call allocations first."""

    label: str
    count: int
    run: Callable[[], object]
    warm_up: Callable[[], object]


def measure(sides: Sequence[Side], repeats: int) -> list[float]:
    """Best images/s of each side over `repeats` interleaved rounds.

    Interleaving puts both sides under the same background load; the best round is the least disturbed one
    (on a shared 2-core machine other processes can take a core for seconds).
    """
    for side in sides:
        side.warm_up()
    rates: list[list[float]] = [[] for _ in sides]
    peaks = [""] * len(sides)
    for _ in range(repeats):
        for index, side in enumerate(sides):
            sync()
            reset_peak()
            started = time.perf_counter()
            side.run()
            sync()
            rates[index].append(side.count / (time.perf_counter() - started))
            peaks[index] = peak_memory()
    for side, side_rates, peak in zip(sides, rates, peaks, strict=True):
        rounds = ", ".join(f"{rate:.2f}" for rate in side_rates)
        print(f"  {side.label:<50} {max(side_rates):9.2f} images/s  (rounds: {rounds}; {peak})", flush=True)
    return [max(side_rates) for side_rates in rates]


def transformers_pipeline(model_dir: Path, device: torch.device, dtype: torch.dtype) -> Any:
    """The baseline the benches compare against: transformers' own `pipeline("image-text-to-text")`."""
    return pipeline("image-text-to-text", model=str(model_dir), device=device, dtype=dtype)


def caption_one_at_a_time(baseline: Any, images: Sequence[Image.Image], generation: Mapping[str, int]) -> None:
    """Caption `images` through the pipeline, one call per image, as a user of transformers would."""
    for image in images:
        # A copy: the pipeline adds keys to the dict it is given (transformers 5.17 adds
        # generation_config), and the captioner sends options it does not know to generate().
        baseline(images=image, text="", generate_kwargs=dict(generation))


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def prefetched(
    items: Sequence[T], size: int, prepare: Callable[[T], HostImage], pool: Executor, ahead: int
) -> Iterator[list[HostImage]]:
    """Batches of prepared images, with up to `ahead` batches being prepared on the pool while the caller works."""
    pending: deque[list[Future[HostImage]]] = deque()
    chunks = batches(items, size)
    for chunk in chunks:
        pending.append([pool.submit(prepare, blob) for blob in chunk])
        if len(pending) > ahead:
            yield [future.result() for future in pending.popleft()]
    while pending:
        yield [future.result() for future in pending.popleft()]


def pipelined(ours: BlipCaptioner, batches_in: Iterable[Sequence[HostImage]], generation: dict[str, int]) -> None:
    """Caption batches with each batch's pixels stacked and uploaded on another thread while the model runs the
    previous batch: on a GPU the model then never waits for the CPU between batches."""
    with ThreadPoolExecutor(1, thread_name_prefix="upload") as uploader:
        previous: tuple[Sequence[HostImage], Future[torch.Tensor]] | None = None
        for batch in batches_in:
            upload = uploader.submit(ours.pixel_values, batch)
            if previous is not None:
                ours.caption(previous[0], None, generation, pixel_values=previous[1].result())
            previous = (batch, upload)
        if previous is not None:
            ours.caption(previous[0], None, generation, pixel_values=previous[1].result())
