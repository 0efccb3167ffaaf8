"""Data-parallel ranks following the rebalancer's plans step by step (shared by the rebalancer's unit tests)."""

from __future__ import annotations

from collections.abc import Callable

from bus_records import worker_metrics
from moeops.bus.messages import RebalancePlan
from moeops.bus.plan_acks import AckOutcome, PlanAck, RunningParts
from moeops.bus.plan_shares import sequences_from_fractions
from moeops.rebalancer.jobs import JobState


def follow_plans(
    state: JobState,
    speed: Callable[[int, int], float],
    steps: int,
    *,
    ranks: int = 4,
    global_batch: int = 32,
    seconds_per_sequence: float,
    acknowledge: bool = False,
) -> list[tuple[int, list[int]]]:
    """`ranks` ranks at `speed(rank, step)`, each step reporting to `state` and running one planning round,
    applying each plan at its step (rank 0 acknowledging it with `acknowledge`); (step, shares) of each plan
    as it applied."""
    shares = [global_batch // ranks] * ranks
    pending: list[RebalancePlan] = []
    applied: list[tuple[int, list[int]]] = []
    for step in range(steps):
        for plan in [plan for plan in pending if plan.apply_at_step <= step]:
            pending.remove(plan)
            shares = sequences_from_fractions(plan.data_shares, global_batch)
            applied.append((step, shares))
            if acknowledge:
                running = RunningParts(data=plan.epoch)
                state.acknowledged(PlanAck(namespace="ns", job="j", epoch=plan.epoch, outcome=AckOutcome.APPLIED,
                                           step=step, running=running, acked_at_unix_s=0.0))  # fmt: skip
        compute = [seconds_per_sequence * n / speed(rank, step) for rank, n in enumerate(shares)]
        for rank, seconds in enumerate(compute):
            state.aggregator.ingest(worker_metrics(rank, step, job="j", world_size=ranks, tokens=100 * shares[rank],
                                                   step_seconds=max(compute), compute_seconds=seconds,
                                                   comm_seconds=max(compute) - seconds))  # fmt: skip
        outcome = state.next_outcome(float(step))
        if outcome.plan is not None:
            state.adopt(outcome.plan, outcome.plan.epoch + 1, full=outcome.full, parts=outcome.parts)
            pending.append(outcome.plan)
    return applied
