"""What the rebalancer plans from: the newest plan until rank 0 acknowledges it, then per part what runs."""

from __future__ import annotations

from moeops.bus.messages import RebalancePlan
from moeops.bus.plan_acks import AckOutcome, PlanAck, RunningParts
from moeops.rebalancer.jobs import PUBLISHED_KEPT, JobSettings, JobState

SETTINGS = JobSettings("ns", "j", 16, stage_layers=((0, 2), (2, 4)))
MOVED = [[[1], [0], [3], [2]]] * 4


def _plan(
    epoch: int, shares: list[float], experts: list[list[list[int]]], stages: list[tuple[int, int]]
) -> RebalancePlan:
    return RebalancePlan(
        namespace="ns", job="j", epoch=epoch, apply_at_step=10 * (epoch + 1), data_shares=shares, stage_layers=stages,
        expert_placement=experts, predicted_gain=0.1, created_at_unix_s=0.0,
    )  # fmt: skip


def _ack(epoch: int, running: RunningParts, refused: list[str]) -> PlanAck:
    outcome = AckOutcome.PARTLY if refused else AckOutcome.APPLIED
    return PlanAck(namespace="ns", job="j", epoch=epoch, outcome=outcome, refused=refused, step=10 * (epoch + 1),
                   running=running, acked_at_unix_s=0.0)  # fmt: skip


def test_refused_parts_are_not_believed_and_applied_ones_are() -> None:
    state = JobState.of(SETTINGS)
    first = _plan(0, [0.5, 0.5], MOVED, [(0, 1), (1, 4)])
    state.adopt(first, 1)
    assert state.awaiting_ack and state.belief() == (first, [8, 8])  # not acknowledged yet: it will apply
    # Epoch 0: shares and stages applied, experts refused.
    state.acknowledged(_ack(0, RunningParts(data=0, stages=0), ["expert placement: ranks hold [3, 3] slots"]))
    believed, shares = state.belief()
    assert not state.awaiting_ack and believed is not None and shares == [8, 8]
    assert believed.epoch == 0 and believed.expert_placement == [] and believed.stage_layers == [(0, 1), (1, 4)]
    # Epoch 1 changes the shares only; its experts (carried over from 0) are refused again, the stages still run
    # from epoch 0.
    state.adopt(_plan(1, [0.75, 0.25], MOVED, [(0, 1), (1, 4)]), 2)
    state.acknowledged(_ack(1, RunningParts(data=1, stages=0), ["expert placement: again"]))
    believed, shares = state.belief()
    assert believed is not None and believed.epoch == 1 and shares == [12, 4]
    assert believed.expert_placement == [] and believed.stage_layers == [(0, 1), (1, 4)]
    assert state.last_refusal is not None and state.last_refusal.refused == ["expert placement: again"]
    # A stale acknowledgement does not undo a newer one.
    state.acknowledged(_ack(0, RunningParts(), []))
    assert state.ack is not None and state.ack.epoch == 1


def test_a_part_that_runs_from_the_start_is_the_jobs_own_setting() -> None:
    state = JobState.of(SETTINGS)
    state.adopt(_plan(0, [0.75, 0.25], MOVED, [(0, 1), (1, 4)]), 1)
    state.acknowledged(_ack(0, RunningParts(), ["all refused"]))
    believed, shares = state.belief()
    assert believed is not None and shares is None  # even split
    assert believed.stage_layers == [(0, 2), (2, 4)] and believed.expert_placement == []


def test_only_recent_plans_are_remembered() -> None:
    state = JobState.of(SETTINGS)
    for epoch in range(PUBLISHED_KEPT + 4):
        state.adopt(_plan(epoch, [0.5, 0.5], [], [(0, 2), (2, 4)]), epoch + 1)
    assert sorted(state.published) == list(range(4, PUBLISHED_KEPT + 4))
