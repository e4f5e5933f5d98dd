"""The dynamic batcher: size and wait limits, grouping by key, failure isolation; each test runs both with and
without a prepare stage (batches prepared ahead on the batching thread, run on a model thread)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence

import pytest

from common.errors import DeviceFailure, WorkerFailure, WorkerStopping
from worker.jobs.batching import DynamicBatcher, ItemFailed


class Recorder:
    """A run_batch that records every batch it was given and answers item -> f"{key}:{item}"."""

    def __init__(self, fail_on: object = None) -> None:
        self.batches: list[tuple[str, list[int]]] = []
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def __call__(self, key: str, items: list[int]) -> list[str]:
        with self.lock:
            self.batches.append((key, list(items)))
        if self.fail_on in items:
            raise ValueError(f"poisoned by {self.fail_on}")
        return [f"{key}:{item}" for item in items]


Run = Callable[[str, list[int]], Sequence[str | ItemFailed]]


def make(
    run: Run, max_batch_size: int, max_wait_s: float, prepare_ahead: bool,
    on_worker_failure: Callable[[WorkerFailure], None] = lambda failure: None,
) -> DynamicBatcher[str, int, str]:
    """A started batcher; with `prepare_ahead`, its prepare stage defers the whole of `run` to the model thread."""

    def prepare(key: str, items: list[int]) -> Callable[[], Sequence[str | ItemFailed]]:
        return lambda: run(key, items)

    return DynamicBatcher(run, max_batch_size, max_wait_s, prepare if prepare_ahead else None,
                          on_worker_failure=on_worker_failure).start()


@pytest.fixture(params=[False, True], ids=["one-thread", "prepare-ahead"])
def prepare_ahead(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def batcher(recorder: Recorder, prepare_ahead: bool) -> Iterator[DynamicBatcher[str, int, str]]:
    b = make(recorder, max_batch_size=4, max_wait_s=0.2, prepare_ahead=prepare_ahead)
    yield b
    b.stop(timeout=5)


def test_a_full_group_runs_without_waiting(recorder: Recorder, prepare_ahead: bool) -> None:
    batcher = make(recorder, max_batch_size=4, max_wait_s=10, prepare_ahead=prepare_ahead)
    try:
        start = time.monotonic()
        futures = [batcher.submit("p", i) for i in range(4)]
        assert [f.result(timeout=9) for f in futures] == ["p:0", "p:1", "p:2", "p:3"]
        assert time.monotonic() - start < 5  # far less than the 10 s window it would otherwise sit out
    finally:
        batcher.stop(timeout=5)
    assert recorder.batches == [("p", [0, 1, 2, 3])]


def test_a_partial_group_runs_after_the_wait(batcher: DynamicBatcher[str, int, str],
                                             recorder: Recorder) -> None:
    start = time.monotonic()
    futures = [batcher.submit("p", i) for i in range(2)]
    assert [f.result(timeout=5) for f in futures] == ["p:0", "p:1"]
    assert time.monotonic() - start >= 0.19
    assert recorder.batches == [("p", [0, 1])]


def test_batches_never_exceed_the_maximum(batcher: DynamicBatcher[str, int, str],
                                          recorder: Recorder) -> None:
    futures = [batcher.submit("p", i) for i in range(10)]
    assert [f.result(timeout=5) for f in futures] == [f"p:{i}" for i in range(10)]
    assert all(len(items) <= 4 for _, items in recorder.batches)
    assert sorted(i for _, items in recorder.batches for i in items) == list(range(10))


def test_different_keys_never_share_a_batch(batcher: DynamicBatcher[str, int, str],
                                            recorder: Recorder) -> None:
    owner = {}  # item -> the key it was submitted under; items are unique across keys
    futures = []
    for i in range(6):
        for k, key in enumerate(("a", "b", "c")):
            item = 100 * k + i
            owner[item] = key
            futures.append((key, item, batcher.submit(key, item)))
    for key, item, future in futures:
        assert future.result(timeout=5) == f"{key}:{item}"
    for key, items in recorder.batches:
        assert {owner[item] for item in items} == {key}
    assert sorted(i for _, items in recorder.batches for i in items) == sorted(owner)


def test_one_poisonous_item_fails_alone(prepare_ahead: bool) -> None:
    recorder = Recorder(fail_on=2)
    batcher = make(recorder, 4, 0.05, prepare_ahead)
    try:
        futures = [batcher.submit("p", i) for i in range(4)]
        for i, future in enumerate(futures):
            if i == 2:
                with pytest.raises(ValueError, match="poisoned"):
                    future.result(timeout=5)
            else:
                assert future.result(timeout=5) == f"p:{i}"
    finally:
        batcher.stop(timeout=5)
    assert recorder.batches[0] == ("p", [0, 1, 2, 3])  # tried together first, then one by one


def test_an_item_the_batch_fails_alone_fails_without_its_neighbours_running_again(prepare_ahead: bool) -> None:
    runs: list[list[int]] = []

    def run(key: str, items: list[int]) -> list[str | ItemFailed]:
        runs.append(items)
        return [ItemFailed(ValueError(f"bad {item}")) if item == 1 else f"{key}:{item}" for item in items]

    batcher = make(run, 3, 0.05, prepare_ahead)
    try:
        futures = [batcher.submit("p", i) for i in range(3)]
        assert futures[0].result(timeout=5) == "p:0" and futures[2].result(timeout=5) == "p:2"
        with pytest.raises(ValueError, match="bad 1"):
            futures[1].result(timeout=5)
    finally:
        batcher.stop(timeout=5)
    assert runs == [[0, 1, 2]]


def test_a_batch_s_model_time_is_shared_by_the_items_it_gave_a_result(prepare_ahead: bool) -> None:
    def run(key: str, items: list[int]) -> list[str | ItemFailed]:
        time.sleep(0.2)
        return [ItemFailed(ValueError("bad")) if item == 1 else f"{key}:{item}" for item in items]

    batcher = make(run, 3, 0.05, prepare_ahead)
    try:
        futures = [batcher.submit("p", i) for i in range(3)]
        for future in futures:
            future.exception(timeout=5)
    finally:
        batcher.stop(timeout=5)
    batch_s = (futures[0].batch_ended or 0) - (futures[0].batch_started or 0)
    assert batch_s >= 0.2
    assert futures[0].model_s == futures[2].model_s == pytest.approx(batch_s / 2)
    assert futures[1].model_s == 0.0


def test_a_wrong_number_of_results_fails_the_items(prepare_ahead: bool) -> None:
    batcher = make(lambda k, items: [], 4, 0.05, prepare_ahead)
    try:
        futures = [batcher.submit("p", i) for i in range(2)]
        with pytest.raises(RuntimeError, match="results for"):
            futures[0].result(timeout=5)
    finally:
        batcher.stop(timeout=5)


def test_stop_finishes_queued_items(recorder: Recorder, prepare_ahead: bool) -> None:
    batcher = make(recorder, 100, 60.0, prepare_ahead)
    future = batcher.submit("p", 1)
    batcher.stop(timeout=5)
    assert future.result(timeout=0) == "p:1"
    with pytest.raises(RuntimeError, match="stopping"):
        batcher.submit("p", 2)


def test_interactive_batches_run_before_background_ones_that_came_first(prepare_ahead: bool) -> None:
    order: list[str] = []
    started = threading.Event()
    release = threading.Event()

    def run(key: str, items: list[int]) -> list[str]:
        order.append(key)
        started.set()
        release.wait(5)  # hold the model until both lanes have work waiting
        return [key] * len(items)

    batcher = make(run, max_batch_size=2, max_wait_s=0.01, prepare_ahead=prepare_ahead)
    try:
        first = batcher.submit("bulk", 0, background=True)
        started.wait(5)
        queued = [batcher.submit("bulk", i, background=True) for i in range(1, 5)]
        interactive = batcher.submit("job", 9)
        time.sleep(0.1)  # every group is past its wait: the interactive one must still go first
        release.set()
        assert interactive.result(5) == "job" and first.result(5) == "bulk"
        assert all(f.result(5) == "bulk" for f in queued)
        assert order[:2] == ["bulk", "job"], order
    finally:
        batcher.stop(timeout=5)


def test_a_batch_is_shared_out_between_tenants_in_turn(prepare_ahead: bool) -> None:
    """A tenant with a backlog fills batches around another's items, not ahead of them."""
    batches: list[list[int]] = []
    release = threading.Event()

    def run(key: str, items: list[int]) -> list[str]:
        batches.append(items)
        release.wait(5)  # hold the model until every item is queued
        return [str(item) for item in items]

    batcher = make(run, max_batch_size=4, max_wait_s=0.01, prepare_ahead=prepare_ahead)
    try:
        heavy = [batcher.submit("k", i, share="a") for i in range(12)]
        time.sleep(0.05)  # the first batch (all of a's) is on the model; the rest of a's wait
        light = [batcher.submit("k", 100 + i, share="b") for i in range(2)]
        other = batcher.submit("k", 200, share="c")
        release.set()
        assert [f.result(5) for f in [*heavy, *light, other]] == [str(i) for i in [*range(12), 100, 101, 200]]
        held = 1 if prepare_ahead else 0  # with a prepare stage, the next batch was taken before b and c came
        first_fair = batches[1 + held]  # the first batch taken after b's and c's items came
        # One of each tenant's oldest in turn, then again: a, b, c, then a again (b's second would be next).
        assert sorted(first_fair) == sorted([4 + 4 * held, 100, 200, 5 + 4 * held]), batches
        assert 101 in batches[2 + held], batches
    finally:
        batcher.stop(timeout=5)


def test_the_next_batch_is_prepared_while_the_model_runs_one_and_no_further() -> None:
    events: list[tuple[str, int]] = []
    running, release = threading.Event(), threading.Event()

    def prepare(key: str, items: list[int]) -> Callable[[], Sequence[str | ItemFailed]]:
        events.append(("prepare", items[0]))

        def run() -> list[str]:
            events.append(("run", items[0]))
            if items[0] == 0:
                running.set()
                release.wait(5)  # hold the model on the first batch
            return [f"{key}:{item}" for item in items]

        return run

    batcher = DynamicBatcher(Recorder(), 2, 0.01, prepare).start()
    try:
        futures = [batcher.submit("p", i) for i in range(6)]  # three full batches
        assert running.wait(5)
        time.sleep(0.2)
        # While batch 0 runs, batch 2 is prepared; batch 4 is not taken yet (one batch ahead at most).
        assert events[0] == ("prepare", 0) and sorted(events[1:]) == [("prepare", 2), ("run", 0)]
        assert not futures[4].running()
        release.set()
        assert [f.result(5) for f in futures] == [f"p:{i}" for i in range(6)]
    finally:
        release.set()
        batcher.stop(timeout=5)
    assert [e for e in events if e[0] == "run"] == [("run", 0), ("run", 2), ("run", 4)]


def test_a_batch_whose_preparation_fails_runs_unprepared() -> None:
    recorder = Recorder()

    def prepare(key: str, items: list[int]) -> Callable[[], Sequence[str | ItemFailed]]:
        raise OSError("no room for the upload")

    batcher = DynamicBatcher(recorder, 4, 0.05, prepare).start()
    try:
        futures = [batcher.submit("p", i) for i in range(3)]
        assert [f.result(5) for f in futures] == ["p:0", "p:1", "p:2"]
    finally:
        batcher.stop(timeout=5)
    assert recorder.batches == [("p", [0, 1, 2])]


def test_a_broken_device_fails_everything_held_and_to_come_without_retrying(prepare_ahead: bool) -> None:
    """A WorkerFailure is not retried image by image (each would fail too): it fails the running batch, what is
    queued behind it and every later submit, and the worker is told once."""
    started, release = threading.Event(), threading.Event()
    calls: list[list[int]] = []
    told: list[WorkerFailure] = []

    def run(key: str, items: list[int]) -> list[str]:
        calls.append(list(items))
        started.set()
        release.wait(5)
        raise DeviceFailure("The device failed: CUDA error: device-side assert triggered")

    b = make(run, 2, 0.01, prepare_ahead, on_worker_failure=told.append)
    try:
        running = [b.submit("k", 1), b.submit("k", 2)]
        assert started.wait(5)
        queued = [b.submit("k", 3), b.submit("other", 4)]
        release.set()
        for future in running + queued:
            with pytest.raises(DeviceFailure):
                future.result(timeout=5)
        with pytest.raises(DeviceFailure):
            b.submit("k", 5)
        assert len(told) == 1 and told[0].code == "device_failed"
        assert calls[0] == [1, 2] and [1] not in calls and [2] not in calls  # no one-by-one retry
    finally:
        b.stop(timeout=5)


def test_a_failure_found_in_the_one_by_one_retry_stops_the_retry(prepare_ahead: bool) -> None:
    """Out of memory on a batch of several is retried image by image; when a single image finds the device broken,
    the rest of the batch is failed with it rather than tried on a broken device."""
    calls: list[list[int]] = []

    def run(key: str, items: list[int]) -> list[str]:
        calls.append(list(items))
        if len(items) > 1:
            raise RuntimeError("out of memory on the batch")
        raise DeviceFailure("Out of memory on a batch of one image")

    b = make(run, 3, 0.01, prepare_ahead)
    try:
        futures = [b.submit("k", item) for item in (1, 2, 3)]
        for future in futures:
            with pytest.raises(DeviceFailure):
                future.result(timeout=5)
        assert calls == [[1, 2, 3], [1]]
    finally:
        b.stop(timeout=5)


def test_handing_back_lets_the_batch_on_the_model_finish_and_fails_the_rest(prepare_ahead: bool) -> None:
    """A worker asked to stop: the running batch ends with its captions; what waits behind it, and every later
    submit, fails with WorkerStopping for its job to go back to the queue; the worker is not reported broken."""
    started, release = threading.Event(), threading.Event()
    told: list[WorkerFailure] = []

    def run(key: str, items: list[int]) -> list[str]:
        started.set()
        release.wait(5)
        return [f"{key}:{item}" for item in items]

    b = make(run, 2, 0.01, prepare_ahead, on_worker_failure=told.append)
    try:
        running = [b.submit("k", 1), b.submit("k", 2)]
        assert started.wait(5)
        waiting = [b.submit("k", 3), b.submit("k", 4), b.submit("other", 5)]
        time.sleep(0.05)  # with a prepare stage, one of them is prepared ahead by now
        b.hand_back()
        for future in waiting:
            with pytest.raises(WorkerStopping):
                future.result(timeout=5)
        release.set()
        assert [f.result(timeout=5) for f in running] == ["k:1", "k:2"]
        with pytest.raises(WorkerStopping):
            b.submit("k", 6)
        assert told == []
    finally:
        b.stop(timeout=5)


class SlowModel(Recorder):
    """A Recorder whose every batch takes `seconds`, as a model's would."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def __call__(self, key: str, items: list[int]) -> list[str]:
        time.sleep(self.seconds)
        return super().__call__(key, items)


def holding(model: SlowModel, max_batch_size: int, prepare_ahead: bool) -> DynamicBatcher[str, int, str]:
    """A batcher that holds a short group for up to the whole of the last batch's time (at most 1 s), so that
    the tests' timings are far from its edges."""
    batcher = make(model, max_batch_size, max_wait_s=0.01, prepare_ahead=prepare_ahead)
    batcher.hold_share, batcher.max_hold_s = 1.0, 1.0
    return batcher


def test_the_jobs_a_batch_answered_join_the_next_one_rather_than_follow_it(prepare_ahead: bool) -> None:
    # Eight closed-loop clients: the first batch held six, two came while it ran. As the six come back (each
    # 50 ms after its answer), the two wait for them: one batch of eight, not one of two then one of six.
    model = SlowModel(0.3)
    batcher = holding(model, 16, prepare_ahead)
    try:
        batcher.submit("p", 99).result(timeout=5)  # the model's time per batch is known: 0.3 s
        time.sleep(0.5)
        first = [batcher.submit("p", i) for i in range(6)]
        time.sleep(0.1)  # the six are on the model
        late = [batcher.submit("p", i) for i in (6, 7)]
        for future in first:
            future.result(timeout=5)
        time.sleep(0.05)
        back = [batcher.submit("p", i) for i in range(10, 16)]
        for future in late + back:
            future.result(timeout=5)
    finally:
        batcher.stop(timeout=5)
    assert [sorted(items) for _, items in model.batches] == [[99], [0, 1, 2, 3, 4, 5], [6, 7, 10, 11, 12, 13, 14, 15]]


def test_a_batch_s_jobs_coming_back_join_those_that_waited_through_it() -> None:
    # Five clients' jobs on the model, three more waiting: as the five come back, two quickly and three later,
    # the eight go together. Holding only until there were five again ran three and two, then three alone.
    model = SlowModel(0.3)
    batcher = holding(model, 16, prepare_ahead=False)
    try:
        batcher.submit("p", 99).result(timeout=5)
        time.sleep(0.5)
        first = [batcher.submit("p", i) for i in range(5)]
        time.sleep(0.1)
        waited = [batcher.submit("p", i) for i in (5, 6, 7)]
        for future in first:
            future.result(timeout=5)
        time.sleep(0.02)
        back = [batcher.submit("p", i) for i in (10, 11)]
        time.sleep(0.1)
        back += [batcher.submit("p", i) for i in (12, 13, 14)]
        for future in waited + back:
            future.result(timeout=5)
    finally:
        batcher.stop(timeout=5)
    assert [sorted(items) for _, items in model.batches] == [[99], [0, 1, 2, 3, 4], [5, 6, 7, 10, 11, 12, 13, 14]]


def test_a_group_waits_for_the_images_its_jobs_announced(prepare_ahead: bool) -> None:
    model = SlowModel(0.3)
    batcher = holding(model, 16, prepare_ahead)
    try:
        batcher.submit("p", 0).result(timeout=5)  # the model's time per batch is known: 0.3 s
        time.sleep(0.5)  # long enough ago that the last batch's jobs are not waited for
        with batcher.arriving(3):  # e.g. a job of three images, fetched one after another
            futures = [batcher.submit("p", 1)]
            time.sleep(0.1)
            futures += [batcher.submit("p", 2), batcher.submit("p", 3)]
        for future in futures:
            future.result(timeout=5)
    finally:
        batcher.stop(timeout=5)
    assert [sorted(items) for _, items in model.batches] == [[0], [1, 2, 3]]


def test_a_job_alone_on_an_idle_model_still_waits_only_the_window(prepare_ahead: bool) -> None:
    model = SlowModel(0.3)
    batcher = holding(model, 16, prepare_ahead)
    try:
        batcher.submit("p", 0).result(timeout=5)
        time.sleep(0.5)
        start = time.monotonic()
        with batcher.arriving(1):
            future = batcher.submit("p", 1)
        future.result(timeout=5)
        # The window (0.01 s) and the model (0.3 s), not a hold of up to 0.3 s more.
        assert time.monotonic() - start < 0.5
    finally:
        batcher.stop(timeout=5)


def test_while_the_model_runs_the_next_batch_is_taken_only_as_it_comes_free() -> None:
    # Prepared ahead, the next batch used to be taken as soon as the model took the last one: the first image
    # to arrive went alone and the rest waited for it. Now what arrives while the model runs joins one batch.
    model = SlowModel(0.4)
    batcher = holding(model, 16, prepare_ahead=True)
    batcher.hold_share = 0.0  # only the rule for a busy model
    try:
        batcher.submit("p", 0).result(timeout=5)  # the model's time per batch is known: 0.4 s
        running = batcher.submit("p", 1)
        time.sleep(0.05)  # item 1 is on the model
        futures = []
        for item in (2, 3, 4):
            futures.append(batcher.submit("p", item))
            time.sleep(0.08)
        for future in [running, *futures]:
            future.result(timeout=5)
    finally:
        batcher.stop(timeout=5)
    assert [sorted(items) for _, items in model.batches] == [[0], [1], [2, 3, 4]]
