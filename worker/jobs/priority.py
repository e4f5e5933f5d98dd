"""Interactive first: bulk work holds back while interactive jobs are in progress on this worker.

The batcher already runs interactive batches before bulk ones; this gate also stops bulk chunks from starting
new fetches and decodes meanwhile, so on a worker whose CPU is busy (a CPU-only worker, or decoding beside a
GPU) an interactive job is not slowed by a bulk run's image decoding either.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ForegroundGate:
    def __init__(self) -> None:
        self._busy = 0
        self._cond = threading.Condition()

    @contextmanager
    def interactive(self) -> Iterator[None]:
        """Hold the gate while an interactive job runs."""
        with self._cond:
            self._busy += 1
        try:
            yield
        finally:
            with self._cond:
                self._busy -= 1
                self._cond.notify_all()

    def wait_until_idle(self, timeout_s: float) -> bool:
        """For bulk work: True once no interactive job is in progress, False if that took too long."""
        with self._cond:
            return self._cond.wait_for(lambda: self._busy == 0, timeout_s)
