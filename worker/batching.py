"""Dynamic batching: images from many jobs go to the model together, grouped by what they share.

A batch runs when its group holds `max_batch_size` items, or when its oldest item has waited `max_wait_s`,
whichever comes first (the scheme of Triton, BentoML and Ray Serve). Items are grouped by key (prompt and
generation options): BLIP gives wrong captions when different prompts share a batch.

Background items (bulk work) form groups of their own and run only when no foreground (interactive) group is
ready, so an interactive image waits at most for the one background batch already on the model.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
I = TypeVar("I")  # noqa: E741 - item, by the convention of the other type variables
R = TypeVar("R")


class BatchFuture(Future[R]):
    """A result to come, and when (time.monotonic) the batch that made it ran: for per-stage timings."""

    batch_started: float | None = None
    batch_ended: float | None = None


@dataclass
class _Pending(Generic[I, R]):
    item: I
    future: BatchFuture[R] = field(default_factory=BatchFuture)
    enqueued_at: float = field(default_factory=time.monotonic)


class DynamicBatcher(Generic[K, I, R]):
    """Collects items on any thread; one background thread runs `run_batch(key, items)` for each batch."""

    def __init__(
        self,
        run_batch: Callable[[K, list[I]], list[R]],
        max_batch_size: int,
        max_wait_s: float,
    ) -> None:
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        # Keyed by (background, key): foreground groups sort first.
        self._groups: dict[tuple[bool, K], list[_Pending[I, R]]] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)

    def start(self) -> DynamicBatcher[K, I, R]:
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is queued, then stop the batching thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def submit(self, key: K, item: I, *, background: bool = False) -> BatchFuture[R]:
        pending: _Pending[I, R] = _Pending(item)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the batcher is stopping")
            self._groups.setdefault((background, key), []).append(pending)
            self._cond.notify_all()
        return pending.future

    def _next_batch(self) -> tuple[tuple[bool, K], list[_Pending[I, R]]] | None:
        with self._cond:
            while True:
                if not self._groups:
                    if self._stopping:
                        return None
                    self._cond.wait()
                    continue
                key = self._ready_key()
                if key is not None:
                    group = self._groups[key]
                    batch, rest = group[: self.max_batch_size], group[self.max_batch_size :]
                    if rest:
                        self._groups[key] = rest
                    else:
                        del self._groups[key]
                    return key, batch
                oldest = min(g[0].enqueued_at for g in self._groups.values())
                self._cond.wait(max(0.0, oldest + self.max_wait_s - time.monotonic()))

    def _ready_key(self) -> tuple[bool, K] | None:
        """Foreground before background; within each, a full group first, else the oldest that waited enough."""
        now = time.monotonic()
        for background in (False, True):
            groups = [(key, group) for key, group in self._groups.items() if key[0] == background]
            if not groups:
                continue
            for key, group in groups:
                if len(group) >= self.max_batch_size:
                    return key
            key, group = min(groups, key=lambda kv: kv[1][0].enqueued_at)
            if self._stopping or now - group[0].enqueued_at >= self.max_wait_s:
                return key
        return None

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            (_, key), pending = batch
            live = [p for p in pending if p.future.set_running_or_notify_cancel()]
            if live:
                self._run(key, live)

    def _run(self, key: K, pending: list[_Pending[I, R]]) -> None:
        started = time.monotonic()
        try:
            results = self._run_batch(key, [p.item for p in pending])
            if len(results) != len(pending):
                raise RuntimeError(f"batch returned {len(results)} results for {len(pending)} items")
        except Exception as exc:
            if len(pending) == 1:
                pending[0].future.set_exception(exc)
                return
            # One poisonous item must not fail its neighbours: retry them one at a time.
            log.warning("batch of %d failed (%s); retrying its items one by one", len(pending), exc)
            for p in pending:
                self._run(key, [p])
            return
        ended = time.monotonic()
        for p, result in zip(pending, results, strict=True):
            p.future.batch_started, p.future.batch_ended = started, ended
            p.future.set_result(result)
