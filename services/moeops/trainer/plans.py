"""What a rebalance plan changes in this trainer, decided the same way on every rank (pure: no collectives).

A plan has three parts and each is judged on its own, so one part this trainer cannot apply does not cost the
others; a refused part keeps the current setting and says why (logged once per plan):
- data shares → whole sequences per data-parallel rank (the global batch is unchanged; the loss is already
  normalised by the global answer-token count, so an uneven split leaves the gradient unbiased: loop.py);
- expert placement → a `Placement` per layer: each expert on one or more EP ranks (a hot expert replicated), at
  most once per rank, every rank exactly E/P + `rebalance.expertSpareSlots` slots (parameter shapes are fixed);
- stage layers → a new pipeline split, applied by rebuilding the stages from a checkpoint (loop.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from moeops.bus.messages import RebalancePlan
from moeops.bus.plan_shares import sequences_from_fractions

from .expert_placement import Placement

StageLayers = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class TrainerShape:
    """The facts about the running job a plan is checked against."""

    global_batch: int
    data: int
    """Data-parallel degree (ranks that split the batch)."""
    micro_batches: int
    pipeline: int
    expert: int
    layers: int
    experts: int
    stage_layers: StageLayers
    spare_slots: int = 0
    """Expert slots per EP rank beyond E/P (rebalance.expertSpareSlots): room for replicas of hot experts."""

    @property
    def expert_slots(self) -> int:
        """Expert slots per EP rank."""
        return self.experts // self.expert + self.spare_slots


@dataclass(frozen=True)
class PlanChanges:
    epoch: int
    apply_at_step: int
    shares: tuple[int, ...] | None = None
    """Sequences per data-parallel rank; None keeps the current split."""
    placements: tuple[Placement, ...] | None = None
    """Per layer; None keeps the current placement."""
    stage_layers: StageLayers | None = None
    refused: tuple[str, ...] = field(default_factory=tuple)

    @property
    def empty(self) -> bool:
        return self.shares is None and self.placements is None and self.stage_layers is None


def _shares(plan: RebalancePlan, shape: TrainerShape) -> tuple[tuple[int, ...] | None, str | None]:
    if len(plan.data_shares) != shape.data:
        return None, f"data shares for {len(plan.data_shares)} ranks, but the job has {shape.data} data-parallel ranks"
    shares = tuple(sequences_from_fractions(plan.data_shares, shape.global_batch))
    if shape.pipeline > 1:
        if shares == even_shares(shape.global_batch, shape.data):
            return None, None
        # Every stage of a pipeline must see micro-batches of one shape, fixed when the schedule is built.
        return None, "uneven data shares are not applied under pipeline parallelism"
    if min(shares) < shape.micro_batches:
        return None, f"a share of {min(shares)} sequences cannot make {shape.micro_batches} micro-batches"
    return shares, None


def _placements(plan: RebalancePlan, shape: TrainerShape) -> tuple[tuple[Placement, ...] | None, str | None]:
    if not plan.expert_placement:
        return None, None
    if shape.expert == 1:
        return None, "an expert placement for a job without expert parallelism"
    if len(plan.expert_placement) != shape.layers:
        return None, f"an expert placement for {len(plan.expert_placement)} layers; the model has {shape.layers}"
    try:
        placements = []
        for layer, replicas in enumerate(plan.expert_placement):
            if len(replicas) != shape.experts:
                raise ValueError(f"layer {layer} places {len(replicas)} experts; the model has {shape.experts}")
            placements.append(Placement.from_replicas(replicas, shape.expert, shape.expert_slots))
    except ValueError as exc:
        slots = f"{shape.experts // shape.expert} experts + {shape.spare_slots} spare slots per EP rank"
        return None, f"expert placement: {exc} ({slots})"
    return tuple(placements), None


def _stages(plan: RebalancePlan, shape: TrainerShape) -> tuple[StageLayers | None, str | None]:
    stages = tuple((start, stop) for start, stop in plan.stage_layers)
    if shape.pipeline == 1 or stages == shape.stage_layers:
        return None, None  # nothing to re-partition (a one-stage plan may name any layer count: ignored)
    if not splits_layers(stages, shape.pipeline, shape.layers):
        return None, f"stage layers {list(stages)} do not split {shape.layers} layers over {shape.pipeline} stages"
    return stages, None


def splits_layers(stages: Sequence[Sequence[int]], pipeline: int, layers: int) -> bool:
    """Whether `stages` are `pipeline` contiguous non-empty ranges covering layers 0..layers-1."""
    if len(stages) != pipeline:
        return False
    expected = 0
    for stage in stages:
        if len(stage) != 2 or stage[0] != expected or stage[1] <= stage[0]:
            return False
        expected = stage[1]
    return expected == layers


def interpret(plan: RebalancePlan, shape: TrainerShape) -> PlanChanges:
    """The parts of `plan` this trainer applies at `plan.apply_at_step`, and why any other part is refused."""
    shares, shares_refusal = _shares(plan, shape)
    placements, placement_refusal = _placements(plan, shape)
    stages, stage_refusal = _stages(plan, shape)
    refused = tuple(reason for reason in (shares_refusal, placement_refusal, stage_refusal) if reason)
    return PlanChanges(plan.epoch, plan.apply_at_step, shares, placements, stages, refused)


def even_shares(global_batch: int, data: int) -> tuple[int, ...]:
    return (global_batch // data,) * data


def first_row(shares: Sequence[int], rank: int) -> int:
    """The first row of the global batch that data-parallel `rank` takes."""
    return sum(shares[:rank])
