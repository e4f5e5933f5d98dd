"""Which of a batch's JPEGs the decoding processes take while the GPU decodes the rest, when the worker has both
(CAPTIONER_DECODE_JPEG_ON_GPU beside CAPTIONER_DECODE_PROCESSES).

On an H200 host the GPU alone and the decoding processes alone each decode 12 MP photos at a similar rate, far
below what the model captions (BENCHMARKS.md, "Worker path from JPEG bytes, one H200"), so a worker fed large
photos is bound by what the two decode together. The batch preparer therefore splits each batch as it begins:
the processes take large JPEGs for as long as they would finish no later than the GPU finishes the rest (longest
first, each to the least loaded process), and both decode at once. A small batch stays on the GPU, which is done
with it before a process would finish one photo; small JPEGs always do, as handing one to a process costs the
worker's GIL more than nvJPEG takes to decode it.

Deciding per batch, where the work is, replaced deciding per job as it arrived ("an idle process first"): jobs
arrive in bursts as a batch's results come back, so the processes took the first few of each burst and sat idle
while the GPU decoded the rest. With the device stood in for by an H200's times (bench/hybrid_split.py), 12 MP
JPEGs went through far faster this way than that way, or than on the GPU or the processes alone
(bench/results/2026-11-30-jpeg-split.md).

The costs start from the H200's figures and are learned from each batch: processes busy with other images, or a
slower GPU, take their share down or up within a batch or two.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

# Seconds per megapixel that the learned costs start from: a 12 MP JPEG's time on an H200 host, for nvJPEG in
# calls of 32 and for one decoding process on a core (BENCHMARKS.md, "Worker path from JPEG bytes, one H200";
# bench/results/2026-11-30-jpeg-split.md).
GPU_S_PER_MEGAPIXEL = 1.87e-3 / 12
PROCESS_S_PER_MEGAPIXEL = 33e-3 / 12
# From this size up a JPEG may go to a process: nvJPEG decodes small JPEGs far faster than the model captions, and
# in less time than a process's hand-off costs the worker's GIL (BENCHMARKS.md, "Worker path from JPEG bytes, one
# H200" and "Decoding in processes"). Full HD is 2.07 MP.
SHARED_FROM_PIXELS = 2_000_000
# How much each new measurement moves a learned cost, and how far one measurement may be from it: a process
# restarted, or a JPEG that waited for a process busy with a large PNG, must not make the processes look slow.
LEARNING_RATE = 0.2
MOST_MOVED = 4.0
# How much a batch that gave the processes nothing moves their cost back towards the prior: slowly, as each time
# it comes back in reach, a batch tries them with a JPEG (if they are still slow, it waits for that one JPEG).
FORGETTING_RATE = 0.02


@dataclass
class DecodeCosts:
    """Seconds per megapixel of decoding a JPEG: on the GPU (in calls of several), and on one process."""

    gpu: float = GPU_S_PER_MEGAPIXEL
    process: float = PROCESS_S_PER_MEGAPIXEL
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def learn_gpu(self, pixels: int, seconds: float) -> None:
        with self._lock:
            self.gpu = _moved(self.gpu, pixels, seconds)

    def learn_process(self, pixels: int, seconds: float) -> None:
        with self._lock:
            self.process = _moved(self.process, pixels, seconds)

    def forget_process(self) -> None:
        """A batch gave the processes nothing: their cost moves back towards the prior. Costs are learned only
        from JPEGs the processes took, so without this, processes once slow (busy, or starting) would never be
        given another JPEG to show they are fast again."""
        with self._lock:
            self.process = (1 - FORGETTING_RATE) * self.process + FORGETTING_RATE * PROCESS_S_PER_MEGAPIXEL


def _moved(cost: float, pixels: int, seconds: float) -> float:
    if pixels <= 0:
        return cost
    measured = min(max(seconds / (pixels / 1e6), cost / MOST_MOVED), cost * MOST_MOVED)
    return (1 - LEARNING_RATE) * cost + LEARNING_RATE * measured


def processes_share(pixels: Sequence[int], processes: int, costs: DecodeCosts) -> set[int]:
    """The indices of the JPEGs (of these pixel counts) for `processes` processes to decode while the GPU decodes
    the others: each large one, longest first, to the least loaded process, as long as every process would still
    finish no later than the GPU."""
    if processes <= 0:
        return set()
    gpu_s = sum(pixels) / 1e6 * costs.gpu
    loads = [0.0] * processes  # a heap: seconds of work given to each process
    busiest = 0.0
    shared: set[int] = set()
    for index in sorted((i for i, count in enumerate(pixels) if count >= SHARED_FROM_PIXELS), key=lambda i: -pixels[i]):
        megapixels = pixels[index] / 1e6
        load = loads[0] + megapixels * costs.process
        gpu_after = gpu_s - megapixels * costs.gpu
        if max(load, busiest) > gpu_after:
            continue  # the processes would finish last: a smaller JPEG may still fit
        heapq.heapreplace(loads, load)
        busiest, gpu_s = max(load, busiest), gpu_after
        shared.add(index)
    return shared
