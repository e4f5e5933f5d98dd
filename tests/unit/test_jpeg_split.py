"""How a batch's JPEGs are split between the decoding processes and the GPU (worker/decode/jpeg_split.py)."""

from __future__ import annotations

import pytest

from worker.decode.jpeg_split import PROCESS_S_PER_MEGAPIXEL, SHARED_FROM_PIXELS, DecodeCosts, processes_share

TWELVE_MP = 4000 * 3000


def makespans(pixels: list[int], shared: set[int], processes: int, costs: DecodeCosts) -> tuple[float, float]:
    """(the GPU's seconds for what it keeps, the busiest process's seconds), assigning as the rule does."""
    loads = [0.0] * processes
    for index in sorted(shared, key=lambda i: -pixels[i]):
        loads[loads.index(min(loads))] += pixels[index] / 1e6 * costs.process
    kept = sum(count for index, count in enumerate(pixels) if index not in shared)
    return kept / 1e6 * costs.gpu, max(loads)


def test_a_few_large_jpegs_stay_on_the_gpu_which_is_done_before_a_process_would_finish_one() -> None:
    assert processes_share([TWELVE_MP] * 4, 15, DecodeCosts()) == set()


def test_a_full_batch_of_large_jpegs_is_split_so_both_finish_together() -> None:
    costs, pixels = DecodeCosts(), [TWELVE_MP] * 256
    shared = processes_share(pixels, 15, costs)
    gpu_s, processes_s = makespans(pixels, shared, 15, costs)
    # With the H200's figures (1.87 ms on the GPU, 33 ms on a process): 7 rounds of 15, then 9 of an eighth.
    assert len(shared) == 114
    assert processes_s <= gpu_s < processes_s + 33e-3  # one more round would make the processes last
    alone = 256 * TWELVE_MP / 1e6 * costs.gpu
    assert gpu_s < 0.56 * alone  # the batch decodes in 55% of the GPU's time alone


def test_small_jpegs_always_stay_on_the_gpu_and_large_ones_go_largest_first() -> None:
    small, large, larger = SHARED_FROM_PIXELS - 1, SHARED_FROM_PIXELS, 2 * SHARED_FROM_PIXELS
    pixels = [small] * 3 + [large, larger]  # 12 MP: 12 s on the GPU alone
    # The larger to the process (7.6 s on it, 8 s left to the GPU); the large one would make the process last.
    assert processes_share(pixels, 1, DecodeCosts(gpu=1.0, process=1.9)) == {4}
    assert processes_share([small] * 500, 8, DecodeCosts(gpu=1.0, process=1e-6)) == set()


@pytest.mark.parametrize("processes", [0, -1])
def test_without_processes_nothing_is_shared(processes: int) -> None:
    assert processes_share([TWELVE_MP] * 256, processes, DecodeCosts()) == set()


def test_costs_move_a_fifth_of_the_way_to_each_measurement_and_one_outlier_moves_them_little() -> None:
    costs = DecodeCosts(gpu=1.0, process=1.0)
    costs.learn_gpu(2_000_000, 4.0)  # 2 s a megapixel
    costs.learn_process(0, 5.0)  # no pixels: nothing learned
    assert costs.gpu == pytest.approx(1.2) and costs.process == 1.0
    costs.learn_process(1_000_000, 500.0)  # a process starting, say: taken as 4 s a megapixel
    assert costs.process == pytest.approx(1.6)


def test_processes_given_nothing_drift_back_to_the_prior_and_are_tried_again() -> None:
    costs = DecodeCosts()
    for _ in range(8):
        costs.learn_process(TWELVE_MP, 10.0)  # slow while busy with something else
    for batches in range(1000):  # noqa: B007  # the count is the point
        if processes_share([TWELVE_MP] * 256, 15, costs):
            break
        costs.forget_process()
    assert 20 < batches < 300  # tried again: neither at once nor never
    for _ in range(1000):
        costs.forget_process()
    assert costs.process == pytest.approx(PROCESS_S_PER_MEGAPIXEL)


def test_a_jpeg_too_large_for_the_processes_leaves_room_for_smaller_ones() -> None:
    two_mp = SHARED_FROM_PIXELS
    pixels = [4 * two_mp] + [two_mp] * 4  # 16 MP: 16 s on the GPU alone
    # The 8 MP one would take the process 12 s against the GPU's 8 left; three of the 2 MP ones fit (9 s, 10 left).
    assert processes_share(pixels, 1, DecodeCosts(gpu=1.0, process=1.5)) == {1, 2, 3}
