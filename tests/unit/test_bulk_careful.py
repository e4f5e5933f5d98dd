"""Careful runs of bulk chunks (and batch chunks, which start their captions alike): one image at a time, each named
in Redis while in hand; an object that has cost too many workers fails untried; and a careful chunk has its worker's
bulk lane to itself, so a death while it runs is its object's doing."""

from __future__ import annotations

import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from common.bulkstore import BulkStore, ChunkBlame, WorkItem
from common.errors import ImageKilledWorkers
from worker.bulk.careful import BulkLane, Careful
from worker.bulk.chunks import ChunkDeps, start_captions
from worker.bulk.planner import Lease
from worker.jobs.batches import BatchKey
from worker.jobs.batching import BatchFuture
from worker.jobs.priority import ForegroundGate
from worker.model.output import Caption


def test_an_object_that_has_cost_max_attempts_workers_is_not_tried_again() -> None:
    careful = Careful(ChunkBlame(1, {"7": 1, "8": 2}), max_attempts=3)
    assert careful.spent("0") is None and careful.spent("7") is None
    spent = careful.spent("8")
    assert spent is not None and spent.code == "image_killed_workers" and "3 times" in spent.message


class Recorder:
    """Stands in for the bulk store (what the lease names in hand) and the batcher (which images are in flight)."""

    lease_s = 30.0

    def __init__(self) -> None:
        self.events: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0

    def hold(self, item: WorkItem, token: str, part: str | None) -> str:
        self.events.append(f"hold {part}")
        return "running"

    def renew(self, item: WorkItem, token: str, progress: object = None) -> str:
        return "running"

    def load(self, data: bytes) -> bytes:
        return data

    def submit(self, key: BatchKey, image: bytes, background: bool) -> BatchFuture[Caption]:
        self.events.append(f"caption {image.decode()}")
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        future: BatchFuture[Caption] = BatchFuture()

        def done() -> None:
            self.in_flight -= 1
            future.set_result(Caption(f"caption of {image.decode()}", 3))

        threading.Timer(0.05, done).start()
        return future


def test_a_careful_run_takes_one_image_at_a_time_named_in_hand_and_skips_the_spent() -> None:
    recorder = Recorder()
    with ThreadPoolExecutor(4) as pool:
        deps = ChunkDeps(cast(BulkStore, recorder), cast(Any, None), cast(Any, recorder), cast(Any, recorder), pool,
                         "model", 1 << 20, ForegroundGate())
        lease = Lease(cast(BulkStore, recorder), WorkItem("chunk", "b", 0), "token")
        key = BatchKey.of(None, {})
        work = [(part, functools.partial(str.encode, part), key) for part in ("0", "1", "2")]
        careful = Careful(ChunkBlame(1, {"1": 1}), max_attempts=2)
        futures = start_captions(work, lease, deps, careful)
    assert recorder.events == ["hold 0", "caption 0", "hold None", "hold 2", "caption 2", "hold None"]
    assert recorder.most_in_flight == 1
    assert [futures[0].result().text, futures[2].result().text] == ["caption of 0", "caption of 2"]
    assert isinstance(futures[1].exception(), ImageKilledWorkers)


def test_a_careful_chunk_waits_for_the_chunks_beside_it_and_those_after_it_wait_for_it() -> None:
    lane = BulkLane()
    order: list[str] = []
    kept: list[float] = []
    release_first = threading.Event()

    def run(name: str, alone: bool, hold: threading.Event | None = None) -> threading.Thread:
        def body() -> None:
            with lane.enter(alone, keep=lambda: kept.append(time.monotonic())):
                order.append(f"{name} in")
                if hold is not None:
                    hold.wait(5)
                order.append(f"{name} out")

        thread = threading.Thread(target=body)
        thread.start()
        return thread

    threads = [run("first", False, release_first)]
    while "first in" not in order:
        time.sleep(0.01)
    threads.append(run("careful", True))
    time.sleep(0.1)
    assert not lane.open(timeout_s=0.1)  # a careful chunk is waiting: the workers' threads take no more work
    threads.append(run("later", False))
    time.sleep(1.2)  # the careful chunk has waited more than a second: its lease was kept meanwhile
    assert order == ["first in"] and kept
    release_first.set()
    for thread in threads:
        thread.join(5)
    assert order == ["first in", "first out", "careful in", "careful out", "later in", "later out"]
    assert lane.open(timeout_s=0)
