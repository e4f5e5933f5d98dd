"""How many, when a setting says "auto": decoding processes, images per batch, jobs held at once.

A module apart from the worker's wiring (which needs Redis, S3 and Celery), so that the benches for GPU machines,
which have only torch, transformers and pillow, size things as the worker does.
"""

from __future__ import annotations

import os

import torch


def automatic_decode_processes(device: torch.device) -> int:
    """CAPTIONER_DECODE_PROCESSES=auto: on a GPU, one per core but two, at most 32; on CPU, none."""
    return min(32, max(1, (os.cpu_count() or 1) - 2)) if device.type == "cuda" else 0


def automatic_batch_size(device: torch.device) -> int:
    """CAPTIONER_BATCH_SIZE=auto: 16 on CPU, where a batch's images share a few cores; on a GPU, 256 where it has
    20 GiB or more, which takes in the "24 GB" cards that report 22.5 (BLIP-base, fp16: ~12 GB at 256, where an
    H200 captions far more images/s than at 64: bench/results/2026-11-29-gpu-h200.md), else 64."""
    if device.type != "cuda":
        return 16
    index = device.index if device.index is not None else torch.cuda.current_device()
    return 256 if torch.cuda.get_device_properties(index).total_memory >= 20 * 2**30 else 64


def automatic_concurrency(batch_size: int) -> int:
    """CAPTIONER_WORKER_CONCURRENCY=auto: jobs held at once. A batch can hold no more single-image jobs than the
    worker holds, so twice the batch size (one batch running, the next filling), at least 32, at most 1024."""
    return min(1024, max(32, 2 * batch_size))
