"""Dynamic batching: images from many jobs go to the model together, grouped by what they share.

A batch runs when its group holds `max_batch_size` items, or when its oldest item has waited `max_wait_s`,
whichever comes first (the scheme of Triton, BentoML and Ray Serve). Items are grouped by key (prompt and
generation options): BLIP gives wrong captions when different prompts share a batch.

A group short of a batch is held a little longer (a share of the model's time per batch, `hold_share`, at most
`max_hold_s`) where more work is known to be on its way: images that jobs have announced (`arriving`) but are
still fetching and decoding, or, just after a batch, the jobs that batch answered, whose clients send the next
ones, until there are as many as that batch and those that waited through it. Without it the model, free for an
instant, takes the few images that came first, and the rest wait a whole batch for them (a batch of 2 then one of
6 from 8 clients, instead of 8 at once). A job alone, on a model idle for longer than that, still waits only
`max_wait_s`.

Background items (bulk work) form groups of their own and run only when no foreground (interactive) group is
waiting (one held for more goes at once instead), so an interactive image waits at most for the one background
batch already on the model.

Within a group, a batch is shared out between tenants (each item's `share`) in turn, oldest first within each:
a tenant with hundreds of images queued fills the batch around another's single image rather than ahead of
it, so the other waits for one batch, not for the first tenant's whole backlog.

With `prepare_batch`, a second thread runs the model: while it runs one batch, the batching thread takes the
next and prepares it (on a GPU: stacks and uploads its pixels), so the model does not wait for that work. At
most one batch is prepared ahead, and a prepared background batch still yields to an interactive group that
is ready when the model comes free. A group short of a batch is taken only once the model is expected to come
free within the time preparing takes (the last batch's time, the last preparation's): until then what arrives
still joins it.

A batch may fail an item alone by giving an ItemFailed in its place (an image that turned out undecodable
while the batch was prepared, say); an exception from the whole batch instead retries its items one by one.
A WorkerFailure (the device is broken: common/errors.py) is not retried: it fails every item the batcher holds
and every later submit, and `on_worker_failure` is told, so that the worker stops taking work. `hand_back`, when the
worker is asked to stop, does the same with WorkerStopping but lets the batch on the model finish.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from common import log_context
from common.errors import WorkerFailure, WorkerStopping

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
I = TypeVar("I")  # noqa: E741 - item, by the convention of the other type variables
R = TypeVar("R")



@dataclass(frozen=True)
class ItemFailed:
    """A batch's result for an item that failed alone: the item's future raises `error`, its neighbours stand."""

    error: Exception


class BatchFuture(Future[R]):
    """A result to come, and when (time.monotonic) the batch that made it ran: for per-stage timings. `model_s`
    is its part of that batch's time, which is divided evenly among the items the batch gave a result (an item
    that failed alone gets none): what usage counts as the item's model time."""

    batch_started: float | None = None
    batch_ended: float | None = None
    model_s: float = 0.0


@dataclass
class _Pending(Generic[I, R]):
    item: I
    share: Hashable = None  # whose item it is: a batch is shared out between them in turn
    future: BatchFuture[R] = field(default_factory=BatchFuture)
    enqueued_at: float = field(default_factory=time.monotonic)
    # The log fields it was submitted under (its job or bulk run), so that its batch's lines can name them.
    context: Mapping[str, log_context.Value] = field(default_factory=log_context.current)


@dataclass
class _Prepared(Generic[K, I, R]):
    """A batch taken and prepared ahead; `run` is None when preparing it failed (it then runs unprepared)."""

    background: bool
    key: K
    pending: list[_Pending[I, R]]
    run: Callable[[], Sequence[R | ItemFailed]] | None
    fields: dict[str, log_context.Value]  # its log fields: the same batch id prepared and run


class DynamicBatcher(Generic[K, I, R]):
    """Collects items on any thread; one background thread runs `run_batch(key, items)` for each batch."""

    # How long a group short of a batch may be held for work on its way, as a share of the model's time for the
    # last batch and at most: what it may cost the model in idle time, and a job in latency, when none comes.
    hold_share = 0.05
    max_hold_s = 0.25

    def __init__(
        self,
        run_batch: Callable[[K, list[I]], Sequence[R | ItemFailed]],
        max_batch_size: int,
        max_wait_s: float,
        prepare_batch: Callable[[K, list[I]], Callable[[], Sequence[R | ItemFailed]]] | None = None,
        on_worker_failure: Callable[[WorkerFailure], None] = lambda failure: None,
    ) -> None:
        """`prepare_batch(key, items)`, if given, does a batch's work that can run ahead and returns what runs
        the rest (its results as `run_batch` would give them); `run_batch` still runs batches that failed."""
        self._run_batch = run_batch
        self._on_worker_failure = on_worker_failure
        self._failure: WorkerFailure | None = None
        self._prepare_batch = prepare_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        # Keyed by (background, key): foreground groups sort first.
        self._groups: dict[tuple[bool, K], list[_Pending[I, R]]] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._threads = [threading.Thread(target=self._loop, name="batcher", daemon=True)]
        # The batch prepared ahead, handed from the batching thread to the model thread.
        self._prepared: _Prepared[K, I, R] | None = None
        self._feeding = True
        # What the holding rules know (_due): images announced but not yet submitted; the last batch's model time
        # and end, and how many images to expect after it (its own, whose clients may send more, and those that
        # waited through it); the batch on the model (when it should end, its size); the last preparation's time.
        self._arriving = 0
        self._expected = 0
        self._last_run_s = 0.0
        self._last_end = 0.0
        self._busy_until: float | None = None
        self._running_size = 0
        self._prepare_s = 0.0
        if prepare_batch is not None:
            self._threads = [threading.Thread(target=self._feed, name="batcher", daemon=True),
                             threading.Thread(target=self._run_prepared, name="batcher-model", daemon=True)]

    def start(self) -> DynamicBatcher[K, I, R]:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is queued, then stop the batching thread(s)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def hand_back(self, reason: str = "This worker is stopping.") -> None:
        """The worker is stopping: the batch on the model finishes, while everything queued or prepared ahead, and
        every later submit, fails with WorkerStopping, for its job or chunk to go back to the queue at once."""
        stopping = WorkerStopping(reason)
        with self._cond:
            if self._failure is not None:
                return
            prepared, queued = self._withdraw(stopping)
        self._fail_all(stopping, prepared, queued)

    @contextmanager
    def arriving(self, images: int) -> Iterator[None]:
        """Announce `images` items that will be submitted within the block (a job's images, being fetched and
        decoded): a group short of a batch waits a little for them rather than leave them the next batch."""
        with self._cond:
            self._arriving += images
        try:
            yield
        finally:
            with self._cond:
                self._arriving -= images
                self._cond.notify_all()

    def submit(self, key: K, item: I, *, background: bool = False, share: Hashable = None) -> BatchFuture[R]:
        """Queue an item for a batch of `key`; `share` says whose it is (a tenant), for fair shares of a batch."""
        pending: _Pending[I, R] = _Pending(item, share)
        with self._cond:
            if self._failure is not None:
                raise self._failure
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
                    return key, self._take(key)
                soonest = min(self._due(group) for group in self._groups.values())
                self._cond.wait(max(0.0, soonest - time.monotonic()))

    def _take(self, key: tuple[bool, K]) -> list[_Pending[I, R]]:
        """Remove and return up to a batch of the group's items, shared out between their owners in turn, oldest
        first within each (the caller holds the lock)."""
        group = self._groups[key]
        if len(group) <= self.max_batch_size:
            del self._groups[key]
            return group
        queues: dict[Hashable, list[_Pending[I, R]]] = {}
        for pending in group:  # in order of arrival, so each owner's queue is oldest first, and so are owners
            queues.setdefault(pending.share, []).append(pending)
        taken: set[int] = set()
        depth = 0
        while len(taken) < self.max_batch_size:
            for queue in queues.values():
                if depth < len(queue) and len(taken) < self.max_batch_size:
                    taken.add(id(queue[depth]))
            depth += 1
        batch = [p for p in group if id(p) in taken]
        self._groups[key] = [p for p in group if id(p) not in taken]
        return batch

    def _ready_key(self) -> tuple[bool, K] | None:
        """Foreground before background; within each, a full group first, else the oldest that is due. A
        foreground group not yet due goes rather than let a background batch take the model."""
        now = time.monotonic()
        foreground: tuple[bool, K] | None = None
        for background in (False, True):
            groups = [(key, group) for key, group in self._groups.items() if key[0] == background]
            if not groups:
                continue
            for key, group in groups:
                if len(group) >= self.max_batch_size:
                    return foreground or key
            key, group = min(groups, key=lambda kv: kv[1][0].enqueued_at)
            if self._stopping or now >= self._due(group):
                return foreground or key
            if not background:
                foreground = key
        return None

    def _due(self, group: list[_Pending[I, R]]) -> float:
        """When a group short of a batch runs (time.monotonic): once its oldest item has waited `max_wait_s`,
        held while announced images are still arriving or the last batch's jobs may be coming back, and, with
        the model busy, not before preparing would end just as the model comes free (the caller holds the lock)."""
        if len(group) >= self.max_batch_size:
            return 0.0
        due = group[0].enqueued_at + self.max_wait_s
        hold_s = min(self.max_hold_s, self.hold_share * self._last_run_s)
        if self._arriving > 0:
            due += hold_s
        if self._busy_until is not None:  # prepared ahead: taken just in time to be prepared as the model frees
            due = max(due, self._busy_until - self._prepare_s)
            if len(group) < self._running_size:  # or after the running batch's jobs may have come back
                due = max(due, self._busy_until + hold_s)
        elif len(group) < self._expected:
            due = max(due, self._last_end + hold_s)
        return due

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            (_, key), pending = batch
            live = [p for p in pending if p.future.set_running_or_notify_cancel()]
            if live:
                with log_context.bound(**_batch_fields(live)):
                    self._run(key, live)

    def _feed(self) -> None:
        """With prepare_batch: take the next batch once the model thread has taken the last, prepare it, hand it
        over. Taking it only then keeps a single batch ahead of the model."""
        assert self._prepare_batch is not None
        while True:
            with self._cond:
                while self._prepared is not None:
                    self._cond.wait()
            batch = self._next_batch()
            if batch is None:
                break
            (background, key), pending = batch
            live = [p for p in pending if p.future.set_running_or_notify_cancel()]
            if not live:
                continue
            fields = _batch_fields(live)  # the batch's lines, prepared here and run there, carry its id and jobs
            with log_context.bound(**fields):
                preparing = time.monotonic()
                try:
                    run: Callable[[], Sequence[R | ItemFailed]] | None = self._prepare_batch(
                        key, [p.item for p in live])
                except Exception as exc:  # the model thread runs it the plain way, which isolates a bad item
                    log.warning("preparing a batch of %d failed (%s); it runs unprepared", len(live), exc)
                    run = None
            with self._cond:
                self._prepare_s = time.monotonic() - preparing
                self._prepared = _Prepared(background, key, live, run, fields)
                self._cond.notify_all()
        with self._cond:
            self._feeding = False
            self._cond.notify_all()

    def _run_prepared(self) -> None:
        """With prepare_batch: run what the batching thread prepared; an interactive group that is ready when
        the model comes free goes before a prepared background batch (it runs unprepared)."""
        while True:
            with self._cond:
                while self._prepared is None and self._feeding:
                    self._cond.wait()
                prepared = self._prepared
                if prepared is None:
                    return
                ready = self._ready_key() if prepared.background and self._groups else None
                if ready is not None and not ready[0]:
                    pending = [p for p in self._take(ready) if p.future.set_running_or_notify_cancel()]
                    key, run, fields = ready[1], None, None
                else:
                    key, pending, run, fields = prepared.key, prepared.pending, prepared.run, prepared.fields
                    self._prepared = None
                    self._cond.notify_all()
            if pending:
                with log_context.bound(**(fields or _batch_fields(pending))):
                    self._run(key, pending, run)

    def _run(
        self, key: K, pending: list[_Pending[I, R]], prepared: Callable[[], Sequence[R | ItemFailed]] | None = None
    ) -> None:
        started = time.monotonic()
        with self._cond:  # expected to take as long as the last batch
            self._busy_until = started + self._last_run_s
            self._running_size = len(pending)
        try:
            results = prepared() if prepared is not None else self._run_batch(key, [p.item for p in pending])
            if len(results) != len(pending):
                raise RuntimeError(f"batch returned {len(results)} results for {len(pending)} items")
        except WorkerFailure as failure:
            self._fail_everything(failure, pending)
            return
        except Exception as exc:
            if len(pending) == 1:
                pending[0].future.set_exception(exc)
                return
            # One poisonous item must not fail its neighbours: retry them one at a time.
            log.warning("batch of %d failed (%s); retrying its items one by one", len(pending), exc)
            for p in pending:
                if self._failure is not None:  # one of them found the device broken
                    p.future.set_exception(self._failure)
                else:
                    self._run(key, [p])
            return
        finally:
            with self._cond:
                self._busy_until = None
        ended = time.monotonic()
        with self._cond:  # what the holding rules go by (_due)
            waiting = sum(len(group) for group in self._groups.values())
            self._expected = min(self.max_batch_size, len(pending) + waiting)
            self._last_run_s, self._last_end = ended - started, ended
            self._cond.notify_all()
        each_s = (ended - started) / max(1, sum(not isinstance(result, ItemFailed) for result in results))
        for p, result in zip(pending, results, strict=True):
            p.future.batch_started, p.future.batch_ended = started, ended
            if isinstance(result, ItemFailed):
                p.future.set_exception(result.error)
            else:
                p.future.model_s = each_s
                p.future.set_result(result)

    def _fail_everything(self, failure: WorkerFailure, running: list[_Pending[I, R]]) -> None:
        """The device is broken: fail the running batch, everything queued or prepared, and every later submit."""
        with self._cond:
            first = self._failure is None or isinstance(self._failure, WorkerStopping)
            prepared, queued = self._withdraw(failure)
        if first:  # told before the jobs learn of it: the worker stops taking work as they give theirs back
            log.critical("the worker cannot caption any more: %s", failure.message)
            self._on_worker_failure(failure)
        self._fail_all(failure, [*running, *prepared], queued)

    def _withdraw(self, failure: WorkerFailure) -> tuple[list[_Pending[I, R]], list[_Pending[I, R]]]:
        """Refuse every later submit with `failure`, and take out what waits: (the batch prepared ahead, the items
        queued). The caller holds the lock."""
        self._failure = failure
        queued = [p for group in self._groups.values() for p in group]
        self._groups.clear()
        prepared = self._prepared.pending if self._prepared is not None else []
        self._prepared = None
        self._cond.notify_all()
        return prepared, queued

    @staticmethod
    def _fail_all(failure: WorkerFailure, started: list[_Pending[I, R]], queued: list[_Pending[I, R]]) -> None:
        """Fail items already taken for a batch (running) and items still queued (pending: not if cancelled)."""
        for p in started:
            p.future.set_exception(failure)
        for p in queued:
            if p.future.set_running_or_notify_cancel():
                p.future.set_exception(failure)


def _batch_fields(pending: Sequence[_Pending[I, R]]) -> dict[str, log_context.Value]:
    """A new batch's log fields: a fresh id, and its jobs' and bulk runs' (its items retried one by one keep them)."""
    return log_context.batch_fields(secrets.token_hex(6), [p.context for p in pending])
