"""Following the rebalancer's plans: every rank switches to the same plan at the same step.

Only rank 0 reads plans (a `PlanSource`, the NATS plan watcher in production). Once per step the ranks already
agree on preemption with one tiny all-reduce; rank 0 adds the epoch of the newest plan it holds to it. When that
epoch is new, rank 0 broadcasts the plan (rare: a few times per run), every rank interprets it identically
(plans.py) and keeps it pending until its `apply_at_step`. A plan that arrives after its step is applied at the
next one: ranks cannot disagree on what they run, they can only be late together.

Rank 0 acknowledges every plan it received (`PlanSource.acknowledge`, moeops.bus.plan_acks): refused when
nothing of it applies, else applied (or partly, a part refused) once it is applied, with the epoch of the plan
whose setting each part now runs; the rebalancer plans from that, not from what it published.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

import torch
import torch.distributed as dist

from moeops.bus.messages import RebalancePlan
from moeops.bus.plan_acks import AckOutcome, PlanAck, RunningParts

from .distributed import World, all_reduce_sum
from .plans import PlanChanges, TrainerShape, interpret

log = logging.getLogger("moeops.trainer")


class PlanSource(Protocol):
    def newest(self) -> RebalancePlan | None: ...

    def acknowledge(self, ack: PlanAck) -> None: ...


class PlanFollower:
    def __init__(self, world: World, source: PlanSource | None) -> None:
        self.world = world
        self.source = source if world.is_main else None
        self.seen_epoch = -1
        """The newest epoch every rank has received (and interpreted)."""
        self.pending: PlanChanges | None = None
        self.running = RunningParts()
        """Per part, the epoch of the plan whose setting runs (kept on every rank, acknowledged by rank 0)."""
        self.plan: RebalancePlan | None = None
        """The newest plan received (for its names in an acknowledgement)."""

    def agree(self, preempt: bool, shape: Callable[[], TrainerShape]) -> bool:
        """One all-reduce: whether any rank must stop (SIGTERM), and whether rank 0 holds a new plan (then
        broadcast and interpreted, and pending from now on). Returns the agreed preemption flag."""
        plan = self.source.newest() if self.source is not None else None
        offered = plan.epoch + 1 if plan is not None and plan.epoch > self.seen_epoch else 0
        flags = all_reduce_sum(
            torch.tensor([1.0 if preempt else 0.0, float(offered)], device=self.world.device), self.world
        )
        if flags[1] > 0:
            self._receive(plan, shape())
        return bool(flags[0] > 0)

    def _receive(self, plan: RebalancePlan | None, shape: TrainerShape) -> None:
        box: list[RebalancePlan | None] = [plan]
        if self.world.distributed:
            device = None if self.world.device.type == "cpu" else self.world.device
            dist.broadcast_object_list(box, src=0, device=device)
        received = box[0]
        assert received is not None, "rank 0 offered a plan it then did not send"
        self.seen_epoch, self.plan = received.epoch, received
        changes = interpret(received, shape)
        if self.world.is_main:
            for reason in changes.refused:
                log.warning("plan epoch %d: not applied: %s", received.epoch, reason)
            log.info("plan epoch %d received; applies at step %d", received.epoch, received.apply_at_step)
        self.pending = None if changes.empty else changes
        if changes.empty:  # nothing to apply: acknowledged now (refused, or a plan that changes nothing)
            outcome = AckOutcome.REFUSED if changes.refused else AckOutcome.APPLIED
            self._acknowledge(changes, outcome, received.apply_at_step)

    def due(self, next_step: int) -> PlanChanges | None:
        """The pending changes when step `next_step` is the plan's step or later (then no longer pending)."""
        if self.pending is None or next_step < self.pending.apply_at_step:
            return None
        due, self.pending = self.pending, None
        if self.world.is_main and next_step > due.apply_at_step:
            log.warning("plan epoch %d applied at step %d, after its step %d", due.epoch, next_step, due.apply_at_step)
        self.running = RunningParts(
            data=self.running.data if due.shares is None else due.epoch,
            experts=self.running.experts if due.placements is None else due.epoch,
            stages=self.running.stages if due.stage_layers is None else due.epoch,
        )
        self._acknowledge(due, AckOutcome.PARTLY if due.refused else AckOutcome.APPLIED, next_step)
        return due

    def _acknowledge(self, changes: PlanChanges, outcome: AckOutcome, step: int) -> None:
        if self.source is None or self.plan is None:
            return
        ack = PlanAck(
            namespace=self.plan.namespace,
            job=self.plan.job,
            epoch=changes.epoch,
            outcome=outcome,
            refused=list(changes.refused),
            step=max(0, step),
            running=self.running,
            acked_at_unix_s=time.time(),
        )
        self.source.acknowledge(ack)
