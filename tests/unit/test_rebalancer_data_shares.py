"""Data shares: exact sums, proportional to speed, within memory caps; unbiased loss weights."""

from __future__ import annotations

import random

import pytest

from moeops.bus.plan_shares import largest_remainder
from moeops.rebalancer.data_shares import (
    LossNormalisation,
    even_split,
    ideal_shares,
    loss_weights,
    plan_data_shares,
    predicted_step_seconds,
)


def test_shares_sum_to_the_global_batch_and_respect_bounds_on_random_cases() -> None:
    rng = random.Random(0)
    for _ in range(300):
        ranks = rng.randint(1, 40)
        rates = [rng.uniform(0.1, 10.0) for _ in range(ranks)]
        cap = rng.choice([None, rng.randint(1, 64)])
        upper = cap if cap is not None else 10**9
        global_batch = rng.randint(ranks, ranks * min(upper, 64))
        plan = plan_data_shares(rates, global_batch, max_sequences_per_rank=cap)
        assert sum(plan.sequences) == global_batch
        assert all(1 <= n <= upper for n in plan.sequences)
        assert sum(plan.fractions) == pytest.approx(1.0)
        # Never worse than the even split it replaces, up to one sequence of rounding on the slowest rank.
        assert plan.step_seconds_after <= plan.step_seconds_before + 1 / min(rates) + 1e-9


def test_a_straggler_at_0_6x_gets_0_6x_the_share() -> None:
    rates = [1.0] * 7 + [0.6]
    plan = plan_data_shares(rates, 7600)
    assert plan.sequences == (1000,) * 7 + (600,)
    assert plan.step_seconds_before == pytest.approx(950 / 0.6)
    assert plan.step_seconds_after == pytest.approx(1000.0)
    assert plan.predicted_gain == pytest.approx(1 - 1000 / (950 / 0.6))


def test_rounding_gives_the_extra_sequences_to_the_ranks_that_finish_first() -> None:
    plan = plan_data_shares([1.0, 1.0, 1.0], 10)
    assert plan.sequences == (4, 3, 3)  # equal rates: the lowest rank gets the extra one
    plan = plan_data_shares([1.0, 2.0, 3.5], 13)  # ideal 2, 4, 7
    assert plan.sequences == (2, 4, 7)
    # Ideal 1.5 and 7.5: largest remainder (a tie, to rank 0) would give (2, 7), 1.0 s; one more sequence
    # costs the fast rank 0.1 s and the slow one 0.5 s, so the fast one takes it: (1, 8), 0.8 s.
    plan = plan_data_shares([2.0, 10.0], 9)
    assert plan.sequences == (1, 8) and plan.step_seconds_after == pytest.approx(0.8)
    assert largest_remainder([1.5, 7.5], 9, [1, 1], [9, 9]) == [2, 7]


def test_memory_cap_moves_the_excess_to_the_others_in_proportion() -> None:
    plan = plan_data_shares([10.0, 1.0, 2.0], 30, max_sequences_per_rank=12)
    assert plan.sequences == (12, 6, 12)
    plan = plan_data_shares([10.0, 1.0, 2.0], 30, max_sequences_per_rank=[20, 20, 5])
    assert plan.sequences == (20, 5, 5)


def test_every_rank_keeps_at_least_one_sequence() -> None:
    plan = plan_data_shares([1000.0, 0.001], 8)
    assert plan.sequences == (7, 1)


def test_infeasible_batches_are_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        plan_data_shares([1.0, 1.0], 1)
    with pytest.raises(ValueError, match="does not fit"):
        plan_data_shares([1.0, 1.0], 9, max_sequences_per_rank=4)
    with pytest.raises(ValueError, match="positive"):
        plan_data_shares([1.0, 0.0], 4)


def test_before_is_predicted_from_the_current_split() -> None:
    plan = plan_data_shares([1.0, 2.0], 30, current=[10, 20])
    assert plan.step_seconds_before == pytest.approx(10.0)
    assert plan.predicted_gain == pytest.approx(0.0)
    assert even_split(10, 4) == [3, 3, 2, 2]
    assert predicted_step_seconds([3, 3], [1.0, 3.0]) == 3.0


def test_loss_weights_keep_each_sequence_at_one_over_n() -> None:
    sequences = [5, 3, 8]
    assert loss_weights(sequences, LossNormalisation.GLOBAL_SUM) == [1.0, 1.0, 1.0]
    weights = loss_weights(sequences, LossNormalisation.RANK_MEAN)
    # Per-sequence gradients g; rank mean × weight, averaged over ranks == the global mean.
    rng = random.Random(1)
    grads = [[rng.gauss(0, 1) for _ in range(n)] for n in sequences]
    averaged = sum(w * sum(g) / len(g) for w, g in zip(weights, grads, strict=True)) / len(sequences)
    assert averaged == pytest.approx(sum(sum(g) for g in grads) / sum(sequences))


def _bisected_shares(
    weights: list[float], total: int, lower: list[int], upper: list[int], offsets: list[float]
) -> list[float]:
    """Reference: the same clipped shares found by bisection on the common finishing time."""

    def shares(scale: float) -> list[float]:
        return [min(max(w * (scale - o), lo), hi) for w, lo, hi, o in zip(weights, lower, upper, offsets, strict=True)]

    low, high = 0.0, 1.0
    while sum(shares(high)) < total:
        high *= 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        low, high = (middle, high) if sum(shares(middle)) < total else (low, middle)
    return shares(high)


def test_ideal_shares_match_a_bisection_with_and_without_offsets() -> None:
    rng = random.Random(7)
    for _ in range(60):
        ranks = rng.randint(1, 30)
        weights = [rng.uniform(0.1, 10.0) for _ in range(ranks)]
        lower = [rng.choice([0, 1, 2]) for _ in range(ranks)]
        upper = [lo + rng.randint(0, 40) for lo in lower]
        total = rng.randint(sum(lower), sum(upper))
        offsets = [rng.choice([0.0, rng.uniform(0.0, 5.0)]) for _ in range(ranks)]
        for offs in (None, offsets):
            got = ideal_shares(weights, total, lower, upper, offsets=offs)
            want = _bisected_shares(weights, total, lower, upper, offs or [0.0] * ranks)
            assert sum(got) == pytest.approx(total, abs=1e-6)
            assert got == pytest.approx(want, abs=1e-6)


def test_fixed_seconds_equalise_the_finishing_times() -> None:
    # Rank 1 also spends 2 s on its experts: it gets fewer sequences, so both finish at the same time.
    plan = plan_data_shares([1.0, 1.0], 10, fixed_seconds=[0.0, 2.0])
    assert plan.sequences == (6, 4)
    assert plan.step_seconds_after == pytest.approx(6.0)
    assert plan.step_seconds_before == pytest.approx(7.0)  # the even split: 5 and 2 + 5
    assert predicted_step_seconds([6, 4], [1.0, 1.0], [0.0, 2.0]) == 6.0
    # A rank whose fixed work alone exceeds the others' finishing time keeps only its minimum.
    assert plan_data_shares([1.0, 1.0, 1.0], 12, fixed_seconds=[0.0, 0.0, 20.0]).sequences == (6, 5, 1)
    with pytest.raises(ValueError, match="fixed seconds"):
        plan_data_shares([1.0, 1.0], 10, fixed_seconds=[0.0, -1.0])
