"""A rank cut for a noisy neighbour gets its share back once it recovers, and no more: its jump in speed is not
extrapolated (a trend fitted to the jump forecast it at twice its speed and handed it 14 of 32 sequences)."""

from __future__ import annotations

from moeops.rebalancer.jobs import JobSettings, JobState
from moeops.rebalancer.policy import Hysteresis
from rebalancer_runs import follow_plans

RECOVERS_AT = 40
SECONDS_PER_SEQUENCE = 0.01


def _speed(rank: int, step: int) -> float:
    return 0.25 if rank == 3 and step < RECOVERS_AT else 1.0


def test_a_recovered_rank_gets_its_share_back_without_an_overshoot() -> None:
    hysteresis = Hysteresis(min_gain=0.05, interval_steps=50, apply_margin_steps=5, data_interval_steps=5)
    state = JobState.of(JobSettings("ns", "j", 32, hysteresis, min_samples=3))
    applied = follow_plans(state, _speed, 100, seconds_per_sequence=SECONDS_PER_SEQUENCE, acknowledge=True)
    cut_at, cut = applied[0]
    assert cut == [10, 10, 10, 2] and cut_at < RECOVERS_AT
    after = applied[1:]
    assert after, "the recovered rank never got its share back"
    assert all(shares[3] <= 8 for _, shares in after), after  # not handed more than the others
    back_at, back = after[0]
    assert back == [8, 8, 8, 8]
    # The plan's apply margin is 2 s of steps (policy.APPLY_LEAD_S; 20 of these 0.1-s steps) after the few steps
    # the smoothed speed needs to show the recovery.
    assert back_at <= RECOVERS_AT + 25
