"""Model-path benchmark: our BlipCaptioner against transformers' own pipeline, in the same run.

    python -m bench.model_path [--images 32] [--batch-size 16] [--device auto] [--dtype auto]

Both sides run the Salesforce/blip-image-captioning-base architecture (ViT-B/16 at 384 px, a 12-layer
BERT-base decoder with 12 heads, vocabulary 30524) with random weights: no hub is reachable here, and speed
does not depend on the weights. Generation is forced to exactly --new-tokens tokens on both sides, so both do
the same work. The baseline is `pipeline("image-text-to-text")`, one image at a time, same device and dtype.

"model path" starts from decoded PIL images; "worker path" starts from JPEG bytes (640x480 and 4000x3000),
so decoding and resizing count. Needs only torch, transformers and pillow.
"""

from __future__ import annotations

import argparse
import io
import platform
import random
import resource
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessorPil,
    BlipProcessor,
    pipeline,
)

from worker.captioner import BlipCaptioner, pick_device
from worker.images import decode_image


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
    processor = BlipProcessor(BlipImageProcessorPil(size={"height": 384, "width": 384}), tokenizer)
    model.save_pretrained(out)
    processor.save_pretrained(out)


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A noisy, photo-like image (random blocks, then blurred) so JPEG sizes are realistic."""
    rng = random.Random(seed)
    small = Image.new("RGB", (32, 24))
    small.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(32 * 24)])
    return small.resize((width, height), Image.Resampling.BICUBIC)


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def timed(label: str, count: int, run: Callable[[], list[str]]) -> tuple[float, list[str]]:
    run()  # warm-up: first calls pay for allocation and kernel selection
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    captions = run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    rate = count / (time.perf_counter() - started)
    print(f"  {label:<44} {rate:9.2f} images/s")
    return rate, captions


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--baseline-images", type=int, default=None, help="images for the (slow) baseline")
    args = parser.parse_args(argv)

    device, dtype = pick_device(args.device)
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else "") + f", dtype {dtype}")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "blip-base-random"
        build_blip_base(model_dir)
        ours = BlipCaptioner.load(str(model_dir), args.device)
        baseline = pipeline("image-text-to-text", model=str(model_dir), device=device, dtype=dtype)

        images = [photo(640, 480, seed) for seed in range(args.images)]
        base_images = images[: args.baseline_images or args.images]
        for beams in (1, 3):
            generation = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "num_beams": beams}
            print(f"model path, {'greedy' if beams == 1 else f'beam-{beams}'}, {args.new_tokens} new tokens:")

            def run_ours(imgs: list[Image.Image] = images, gen: dict[str, int] = generation) -> list[str]:
                out: list[str] = []
                for start in range(0, len(imgs), args.batch_size):
                    out += ours.caption(imgs[start : start + args.batch_size], None, gen)
                return out

            def run_baseline(gen: dict[str, int] = generation) -> list[str]:
                return [baseline(images=image, text="", generate_kwargs=gen)[0]["generated_text"]
                        for image in base_images]

            ours_rate, _ = timed(f"captioner, batches of {args.batch_size}", len(images), run_ours)
            base_rate, _ = timed("pipeline('image-text-to-text'), one at a time", len(base_images), run_baseline)
            print(f"  ratio {ours_rate / base_rate:.2f}x, peak memory {peak_memory_mb():.0f} MiB")

        print("worker path (JPEG bytes -> caption), greedy:")
        for width, height in ((640, 480), (4000, 3000)):
            blobs = [jpeg(photo(width, height, seed)) for seed in range(args.images)]
            generation = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}

            def from_bytes(data: list[bytes] = blobs, gen: dict[str, int] = generation) -> list[str]:
                out: list[str] = []
                for start in range(0, len(data), args.batch_size):
                    decoded = [decode_image(b) for b in data[start : start + args.batch_size]]
                    out += ours.caption(decoded, None, gen)
                return out

            timed(f"captioner from {width}x{height} JPEG", len(blobs), from_bytes)


if __name__ == "__main__":
    main()
