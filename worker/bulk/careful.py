"""Careful runs: how a chunk that a worker died holding runs again, so that poison costs only itself.

A chunk's lease that runs out in a worker's hands blames the chunk (common/bulk_scripts.py, REAP): one of its objects
may crash the decoder or the model every time. From then on the chunk runs carefully: alone on its worker's bulk
lane, one object at a time, naming the object in hand in Redis as it goes (`Lease.hold`), so a further death is
blamed on that object alone. An object that has cost CAPTIONER_MAX_ATTEMPTS workers is recorded as failed, with
`image_killed_workers`, without being tried again; the chunk and its run finish. A chunk never blamed runs as ever:
side by side with others, its images in flight together, and no Redis call per object.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from common.bulkstore import ChunkBlame
from common.errors import ImageKilledWorkers


@dataclass(frozen=True)
class Careful:
    """A careful run of a chunk: the deaths blamed on it and its objects, and how many an object may cost."""

    blame: ChunkBlame
    max_attempts: int

    def spent(self, part: str) -> ImageKilledWorkers | None:
        """The object's error when it has cost too many workers to be tried again; None when it is tried."""
        cost = self.blame.cost(part)
        if cost < self.max_attempts:
            return None
        return ImageKilledWorkers(f"A worker died captioning this image {cost} times, the last times captioning it "
                                  "alone: it crashes the worker. It is not tried again.")


class BulkLane:
    """A worker's bulk threads: chunks run side by side, but a careful one runs alone, so that a death while it runs
    is its object's doing (or an interactive job's, which the lane cannot rule out). A careful chunk waiting for
    the lane goes before the chunks that come after it."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._running = 0  # items running side by side
        self._alone = False  # a careful chunk runs
        self._waiting_alone = 0

    def open(self, timeout_s: float) -> bool:
        """Wait until the lane would let a chunk run beside others: a thread takes no work that would then wait."""
        with self._changed:
            return self._changed.wait_for(lambda: not (self._alone or self._waiting_alone), timeout_s)

    @contextmanager
    def enter(self, alone: bool, keep: Callable[[], None]) -> Iterator[None]:
        """Run an item on the lane, alone or beside others, calling `keep` (its lease) every second it waits."""
        if alone:
            self._wait(lambda: not (self._alone or self._running), keep, waiting_alone=True)
        else:
            self._wait(lambda: not (self._alone or self._waiting_alone), keep, waiting_alone=False)
        try:
            yield
        finally:
            with self._changed:
                if alone:
                    self._alone = False
                else:
                    self._running -= 1
                self._changed.notify_all()

    def _wait(self, free: Callable[[], bool], keep: Callable[[], None], *, waiting_alone: bool) -> None:
        with self._changed:
            self._waiting_alone += waiting_alone
        try:
            while True:
                with self._changed:
                    if self._changed.wait_for(free, 1.0):
                        if waiting_alone:
                            self._alone = True
                        else:
                            self._running += 1
                        return
                keep()  # outside the lock: it calls Redis
        finally:
            with self._changed:
                self._waiting_alone -= waiting_alone
                self._changed.notify_all()
