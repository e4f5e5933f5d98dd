"""Decoding and resizing in processes of their own (CAPTIONER_DECODE_PROCESSES).

On a GPU host the model's thread needs the GIL to launch every kernel, and decoding threads in the same
process hold it for Pillow's Python parts: on one H200, 16 decoding threads cut the model path from 1371 to 953
images/s (BENCHMARKS.md). Processes take that work off the worker's GIL; what comes back is the fitted image,
the same pixels the worker's own decoding gives (tests check it).

A decoding process that dies (a decoder crashing on a hostile file, the kernel's OOM killer) breaks the whole
pool: it is replaced, and each image that was in flight is tried again alone, one at a time, on a process of its
own; the one that kills that process too is reported as undecodable. One bad file fails alone; the worker lives.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from multiprocessing import get_context

from PIL.Image import Image, Resampling

from common.errors import ImageDecodeError
from worker.images import decode_fitted

log = logging.getLogger(__name__)


class DecodePool:
    """`decode(data)` on one of `processes` spawned processes; safe to call from many threads."""

    def __init__(self, processes: int, size: tuple[int, int], resample: Resampling,
                 work: Callable[..., Image] = decode_fitted) -> None:
        # What the processes run: a module-level function, so spawned processes can import it.
        self._work = partial(work, size=size, resample=resample)
        self._processes = processes
        self._lock = threading.Lock()
        self._pool = _spawned_pool(processes)
        self._alone_lock = threading.Lock()
        self._alone: ProcessPoolExecutor | None = None

    def decode(self, data: bytes) -> Image:
        """The fitted image; per-image problems raise ImageError, as decoding on the calling thread would."""
        while True:
            pool = self._pool
            try:
                return pool.submit(self._work, data).result()
            except BrokenProcessPool:
                self._replace(pool)
                return self._decode_alone(data)
            except RuntimeError:
                if pool is self._pool:
                    raise  # shut down for good: the worker is stopping
                # Another thread replaced the pool between our read and our submit: use the new one.

    def _decode_alone(self, data: bytes) -> Image:
        """After a death, each image that was in flight once more, one at a time on a process of its own: if that
        process dies too, this image killed it."""
        with self._alone_lock:
            if self._alone is None:
                self._alone = _spawned_pool(1)
            try:
                return self._alone.submit(self._work, data).result()
            except BrokenProcessPool:
                self._alone.shutdown(wait=False)
                self._alone = None
                raise ImageDecodeError("A decoding process died on this image; it cannot be decoded.") from None

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken:  # the first thread to see it replaces it; the others reuse the new one
                log.warning("a decoding process died; starting a new pool")
                broken.shutdown(wait=False)  # its futures have all failed already
                self._pool = _spawned_pool(self._processes)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._alone_lock:
            if self._alone is not None:
                self._alone.shutdown(wait=True)


def _spawned_pool(processes: int) -> ProcessPoolExecutor:
    # spawn: a forked child of a process that has initialised CUDA cannot use it, and need not load torch.
    return ProcessPoolExecutor(processes, mp_context=get_context("spawn"))
