"""Group-aware data shares: optimal against brute force, and the reason they exist (a straggler-heavy EP group
gives sequences away, which shrinks every one of its GPUs' expert work)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from moeops.rebalancer.data_shares import plan_data_shares
from moeops.rebalancer.group_shares import group_step_seconds, plan_group_shares


@pytest.mark.parametrize("seed", range(40))
def test_no_split_of_a_small_job_is_faster_than_the_plan(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size, groups, batch = 2, 2, 9
    rates, per_sequence = rng.uniform(0.5, 2.0, size * groups), rng.uniform(0.0, 0.3, size * groups)
    best = min(
        group_step_seconds(split, rates, per_sequence, size)
        for split in itertools.product(range(1, batch), repeat=size * groups)
        if sum(split) == batch
    )
    plan = plan_group_shares(rates, per_sequence, size, batch)
    assert sum(plan.sequences) == batch and min(plan.sequences) >= 1
    assert plan.step_seconds_after == pytest.approx(group_step_seconds(plan.sequences, rates, per_sequence, size))
    assert plan.step_seconds_after <= best * (1 + 1e-6)


def test_a_group_of_stragglers_gives_sequences_to_the_healthy_group() -> None:
    size = 4
    rates = np.array([1.0] * size + [0.6] * size)  # group 1: every GPU at 0.6×
    per_sequence = np.full(2 * size, 0.05) / np.concatenate([np.ones(size), np.full(size, 0.6)])
    plan = plan_group_shares(rates, per_sequence, size, 64)
    healthy, slow = sum(plan.sequences[:size]), sum(plan.sequences[size:])
    assert healthy + slow == 64 and healthy > slow
    # Per-GPU shares alone, with the expert work held where it is, cannot do as well.
    fixed = 32 * per_sequence
    alone = plan_data_shares(rates, 64, fixed_seconds=fixed)  # type: ignore[arg-type]
    alone_s = group_step_seconds(alone.sequences, rates, per_sequence, size)
    assert plan.step_seconds_after < 0.97 * alone_s
    assert plan.predicted_gain > 0


def test_without_expert_work_the_shares_follow_the_rates() -> None:
    rates = np.array([1.0, 1.0, 2.0, 4.0])
    plan = plan_group_shares(rates, np.zeros(4), 2, 16)
    assert plan.sequences == (2, 2, 4, 8)


def test_bounds_and_the_current_split_are_respected() -> None:
    rates = np.array([0.2, 1.0, 1.0, 1.0])
    plan = plan_group_shares(rates, np.full(4, 0.01), 2, 16, min_sequences_per_rank=2, max_sequences_per_rank=5)
    assert min(plan.sequences) >= 2 and max(plan.sequences) <= 5 and sum(plan.sequences) == 16
    same = plan_group_shares(rates, np.full(4, 0.01), 2, 16, current=plan.sequences, max_sequences_per_rank=5,
                             min_sequences_per_rank=2)  # fmt: skip
    assert same.predicted_gain == pytest.approx(0.0, abs=1e-9)


def test_a_large_job_is_planned_with_a_gain() -> None:
    rng = np.random.default_rng(3)
    ranks = 64 * 32
    speeds = np.where(rng.random(ranks) < 0.2, 0.6, 1.0)
    plan = plan_group_shares(4 * speeds, 0.004 / speeds, 64, 16 * ranks)
    assert sum(plan.sequences) == 16 * ranks and min(plan.sequences) >= 1
    assert plan.step_seconds_after < plan.step_seconds_before


@pytest.mark.parametrize(
    ("rates", "per_sequence", "size", "batch", "message"),
    [
        ([1.0, 1.0, 1.0], [0.0] * 3, 2, 6, "groups of 2"),
        ([1.0, 0.0], [0.0, 0.0], 2, 4, "positive"),
        ([1.0, 1.0], [0.0, -1.0], 2, 4, "non-negative"),
        ([1.0, 1.0], [0.0, 0.0], 2, 1, "does not fit"),
    ],
)
def test_bad_input_is_refused_clearly(
    rates: list[float], per_sequence: list[float], size: int, batch: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        plan_group_shares(rates, per_sequence, size, batch)
