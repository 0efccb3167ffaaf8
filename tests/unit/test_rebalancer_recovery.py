"""A rank cut for a noisy neighbour gets its share back once it recovers, and no more: its jump in speed is not
extrapolated (a trend fitted to the jump forecast it at twice its speed and handed it 14 of 32 sequences)."""

from __future__ import annotations

from bus_records import worker_metrics
from moeops.bus.messages import RebalancePlan
from moeops.bus.plan_acks import AckOutcome, PlanAck, RunningParts
from moeops.bus.plan_shares import sequences_from_fractions
from moeops.rebalancer.jobs import JobSettings, JobState
from moeops.rebalancer.policy import Hysteresis

RECOVERS_AT = 40
SECONDS_PER_SEQUENCE = 0.01


def _speeds(step: int) -> list[float]:
    return [1.0, 1.0, 1.0, 0.25 if step < RECOVERS_AT else 1.0]


def _follow(state: JobState, steps: int) -> list[tuple[int, list[int]]]:
    """Four data-parallel ranks applying the service's plans at their step; (step, shares) of each plan applied."""
    shares = [8, 8, 8, 8]
    pending: RebalancePlan | None = None
    applied: list[tuple[int, list[int]]] = []
    for step in range(steps):
        if pending is not None and step >= pending.apply_at_step:
            shares = sequences_from_fractions(pending.data_shares, 32)
            applied.append((step, shares))
            running = RunningParts(data=pending.epoch)
            state.acknowledged(PlanAck(namespace="ns", job="j", epoch=pending.epoch, outcome=AckOutcome.APPLIED,
                                       step=step, running=running, acked_at_unix_s=0.0))  # fmt: skip
            pending = None
        compute = [SECONDS_PER_SEQUENCE * n / speed for n, speed in zip(shares, _speeds(step), strict=True)]
        for rank, seconds in enumerate(compute):
            state.aggregator.ingest(worker_metrics(rank, step, job="j", world_size=4, tokens=100 * shares[rank],
                                                   step_seconds=max(compute), compute_seconds=seconds,
                                                   comm_seconds=max(compute) - seconds))  # fmt: skip
        outcome = state.next_outcome(float(step))
        if outcome.plan is not None:
            state.adopt(outcome.plan, outcome.plan.epoch + 1, full=outcome.full, parts=outcome.parts)
            pending = outcome.plan
    return applied


def test_a_recovered_rank_gets_its_share_back_without_an_overshoot() -> None:
    hysteresis = Hysteresis(min_gain=0.05, interval_steps=50, apply_margin_steps=5, data_interval_steps=5)
    state = JobState.of(JobSettings("ns", "j", 32, hysteresis, min_samples=3))
    applied = _follow(state, 100)
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
