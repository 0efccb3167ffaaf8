"""One planning round: a load snapshot → the next `RebalancePlan`, or None when re-planning is not worth it.

Pure (no NATS): the edge calls it after folding in new metrics. Three parts, each judged on its own predicted
gain against `Hysteresis.min_gain`; a part that does not pay keeps the previous plan's setting:
- data shares per data-parallel replica, from the replicas' measured speeds (not under pipeline parallelism,
  where every stage needs micro-batches of one shape: the trainer refuses uneven shares there);
- expert placement per MoE layer (EP > 1), from the smoothed token counts: EPLB's replication into
  `JobLayout.spare_slots` spare slots per rank and packing (`placement.place_layers`, every layer at once), ranks
  relabelled to keep experts in place; a layer moves only when it pays: the layers whose moves, taken together
  (the ranks receive in parallel), save more step time until the next re-plan than moving their weights and
  optimizer state takes (`placement.choose_layers`); the other layers keep their placement;
- pipeline stages (PP > 1), re-split from per-layer times estimated from the stages' compute times.
The plan's predicted gain combines the parts that pay: 1 − Π(1 − gain). Speeds are forecast along each rank's
trend to the middle of the steps the plan will run (`Hysteresis.forecast_steps`), so a rank that is slowing
down gets the share it will need, not the one it needed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from moeops.bus.expert_start import starting_replicas
from moeops.bus.messages import RebalancePlan

from .data_shares import DataSharePlan, even_split, plan_data_shares
from .group_shares import Floats, plan_group_shares
from .layout import JobLayout, replica_rates, stage_times
from .load import LoadSnapshot
from .placement import holdings, plan_layers, rank_loads, replicas_of
from .policy import Hysteresis, Verdict, build_plan
from .stages import layer_seconds_from_stages, partition_layers

Placement = list[list[list[int]]]
"""Per layer, per expert, the ranks holding it (`RebalancePlan.expert_placement`)."""


@dataclass(frozen=True)
class ReplanOutcome:
    """What a round decided, and why (the edge counts verdicts)."""

    plan: RebalancePlan | None
    verdict: Verdict | None
    """None when there was nothing to judge yet (no complete snapshot)."""
    sequences: tuple[int, ...] | None = None
    """The planned sequences per data-parallel replica when `plan` is set."""
    parts: tuple[str, ...] = ()
    """Which parts the plan changes: "data", "experts", "stages"."""
    full: bool = False
    """The round could re-plan every part (not only the data shares): `JobState.adopt(full=...)`."""


def starting_placement(layers: int, experts: int, ranks: int, spare: int = 0) -> Placement:
    """How the trainer starts (`moeops.bus.expert_start`, which it builds its placement from too): rank r holds
    experts r·E/P … (r+1)·E/P − 1 of every layer, and replicas of the following experts in its `spare` slots."""
    layer = starting_replicas(experts, ranks, spare)
    return [[list(holders) for holders in layer] for _ in range(layers)]


def _starting(layout: JobLayout) -> Placement:
    """The job's starting placement, or none (not an EP job)."""
    if layout.expert < 2 or not layout.experts:
        return []
    return starting_placement(layout.layers, layout.experts, layout.expert, layout.spare_slots)


def expert_part(
    expert_tokens: Sequence[Sequence[float]],
    layout: JobLayout,
    current: Placement,
    *,
    step_seconds: float,
    steps_until_next_plan: int,
) -> tuple[Placement | None, float]:
    """A better placement (every layer; those that do not move as in `current`) and its predicted step-time
    gain, or (None, 0) when no layer's move pays (`placement.plan_layers`). `current` may hold replicas; a fresh
    placement fills `layout.spare_slots` spare slots per rank.

    The expert phase of a layer takes as long as its busiest rank: a layer's gain is the drop of its maximum
    relative to the summed per-layer maxima, times the share of the step spent in experts
    (`JobLayout.expert_time_share`); the plan's gain is the sum over the layers that move."""
    ranks = layout.expert
    loads = np.asarray(expert_tokens, dtype=np.float64)
    now = holdings(current, ranks, loads.shape[1])
    busiest = rank_loads(now, loads).max(axis=1).sum()
    if busiest <= 0 or step_seconds <= 0:
        return None, 0.0
    placed, gain_seconds = plan_layers(
        loads,
        now,
        redundant_slots=layout.spare_slots * ranks,
        seconds_per_token=layout.expert_time_share * step_seconds / busiest,
        seconds_per_expert=layout.bytes_per_expert / layout.link_bytes_per_s,
        steps_until_next_plan=steps_until_next_plan,
    )
    gain = float(gain_seconds.sum()) / step_seconds
    if gain <= 0:
        return None, 0.0
    return replicas_of(placed), gain


def ep_rank_loads(expert_tokens: Sequence[Sequence[float]], placement: Placement, layout: JobLayout) -> Floats | None:
    """(expert,) tokens per step each EP rank computes, summed over layers; None when not an EP job with counts."""
    if layout.expert < 2 or not expert_tokens or not layout.experts:
        return None
    loads = np.asarray(expert_tokens, dtype=np.float64)
    if loads.shape != (layout.layers, layout.experts) or len(placement) != layout.layers:
        return None
    per_rank: Floats = rank_loads(holdings(placement, layout.expert, layout.experts), loads).sum(axis=0)
    return per_rank if per_rank.sum() > 0 else None


def group_data_part(
    rates: Sequence[float],
    expert_load: Floats,
    layout: JobLayout,
    global_batch: int,
    current: Sequence[int] | None,
    max_sequences_per_rank: int | Sequence[int] | None,
) -> DataSharePlan:
    """Data shares over the EP groups (`group_shares`): replicas i·E … i·E + E − 1 form an EP group (the data
    dimension is (edp, ep), ep innermost). Each replica's measured time splits into a dense part (its own
    sequences) and an expert part (its EP rank's share of the group's tokens), `layout.expert_time_share` of the
    step at an even split and balanced experts: from the current split and the measured rates follow each
    replica's speed, its dense rate w and its expert seconds per group sequence p."""
    data, ep = len(rates), layout.expert
    if data % ep or not isinstance(max_sequences_per_rank, int | None):
        return plan_data_shares(rates, global_batch, current=current, max_sequences_per_rank=max_sequences_per_rank)
    n = np.asarray(current if current is not None else even_split(global_batch, data), dtype=np.float64)
    share = layout.expert_time_share
    dense = 1.0 - share  # per sequence, at speed 1
    expert = share * np.tile(expert_load / expert_load.mean(), data // ep) / ep  # per group sequence, at speed 1
    group_totals = np.repeat(n.reshape(-1, ep).sum(axis=1), ep)
    # rates: sequences per second each replica did; its speed = the work it did per second.
    speed = (n * dense + group_totals * expert) * np.asarray(rates, dtype=np.float64) / n
    return plan_group_shares(
        speed / dense,
        expert / speed,
        ep,
        global_batch,
        current=None if current is None else list(current),
        max_sequences_per_rank=max_sequences_per_rank,
    )


def stage_part(
    compute_seconds: Sequence[float],
    layout: JobLayout,
    current: Sequence[tuple[int, int]],
    layer_costs: Sequence[float] = (),
) -> tuple[tuple[tuple[int, int], ...] | None, float]:
    """A pipeline split with a faster slowest stage and its predicted gain, or (None, 0); each stage's time is
    spread over its layers by their measured `layer_costs` when every layer has one (`LayerCosts.seconds`)."""
    measured = stage_times(compute_seconds, layout)
    if len(current) != layout.pipeline or max(measured) <= 0:
        return None, 0.0
    plan = partition_layers(layer_seconds_from_stages(measured, current, layer_costs), layout.pipeline)
    gain = 1.0 - plan.bottleneck_seconds / max(measured)
    if plan.ranges == tuple(current) or gain <= 0:
        return None, 0.0
    return plan.ranges, gain


@dataclass(frozen=True)
class ReplanSettings:
    """A job's planning knobs from configuration: its description (rank 0's) and the rebalancer's flags."""

    namespace: str
    job: str
    global_batch: int
    hysteresis: Hysteresis
    stage_layers: Sequence[tuple[int, int]] = ((0, 1),)
    """The job's pipeline layout, carried into its first plan (later plans keep the previous one's)."""
    max_sequences_per_rank: int | Sequence[int] | None = None
    min_samples: int = 1
    """Steps every rank must have folded in before a plan."""
    layout: JobLayout | None = None
    """The job's parallel layout; None: pure data parallelism over `stage_layers`' layers."""
    forecast_steps: tuple[float, float] | None = None
    """The (first, last) steps past the newest one the speeds are forecast over; None: `hysteresis.forecast_steps`
    for the data interval; (0, 0): the smoothed speeds as measured."""
    layer_costs: Sequence[float] = ()
    """Per layer of the model, its measured compute seconds (`stages.LayerCosts`); (): none measured."""
    min_gain_scale: Mapping[str, float] = field(default_factory=dict)
    """Per part ("data", "experts", "stages"), a factor on `hysteresis.min_gain` for that part: the closed loop's
    back-off for a kind of re-plan that did not deliver its predicted gain (outcomes.py)."""


def replan_outcome(
    snapshot: LoadSnapshot,
    settings: ReplanSettings,
    *,
    current_shares: Sequence[int] | None,
    last_applied_step: int | None,
    previous: RebalancePlan | None,
    now_unix_s: float,
    last_full_step: int | None = None,
) -> ReplanOutcome:
    """The next plan (`.plan`, or None), with the verdict and the planned sequences. No plan: no complete
    snapshot yet (a rank never reported), inside the minimum interval since `last_applied_step`, no part with
    a predicted gain above `hysteresis.min_gain`, or rebalancing disabled (`settings`' knobs throughout).

    `current_shares` (sequences per data-parallel replica; None: an even split) is what the data part's gain is
    measured against. `settings.layout` (default: pure data parallelism over `stage_layers`' layers) says which
    parts apply. The new plan's epoch follows `previous` (0 without one); parts that are not re-planned keep
    `previous`'s setting, else the job's (`stage_layers`, `starting_placement`). No plan either until every rank
    has folded in at least `min_samples` steps. Rank speeds are forecast `forecast_steps` steps past the newest
    one: the lowest forecast over that (first, last) window (default `hysteresis.forecast_steps`, the steps the
    plan will run over; (0, 0): the smoothed speeds as measured).

    Cadence: a plan needs `hysteresis.data_interval` steps since `last_applied_step`; expert placement and
    stages are re-planned only `hysteresis.interval_steps` after `last_full_step` (the last round that could;
    None: `last_applied_step`), other rounds plan the data shares alone.
    """
    hysteresis, global_batch = settings.hysteresis, settings.global_batch
    stage_layers, max_sequences_per_rank = settings.stage_layers, settings.max_sequences_per_rank
    forecast_steps = settings.forecast_steps
    if snapshot.world_size < 1 or not snapshot.complete or snapshot.max_step < 0:
        return ReplanOutcome(None, None)
    if min(load.samples for load in snapshot.ranks) < settings.min_samples:
        return ReplanOutcome(None, None)
    since_any = math.inf if last_applied_step is None else snapshot.max_step - last_applied_step
    if hysteresis.enabled and since_any < hysteresis.data_interval:
        return ReplanOutcome(None, Verdict.TOO_SOON)
    full_anchor = last_applied_step if last_full_step is None else last_full_step
    full = full_anchor is None or snapshot.max_step - full_anchor >= hysteresis.interval_steps
    layout = settings.layout or JobLayout(layers=stage_layers[-1][1])
    data = layout.data(snapshot.world_size)
    if current_shares is not None and len(current_shares) != data:
        current_shares = None  # the world changed size: the old split means nothing, compare with an even one
    loads = sorted(snapshot.ranks, key=lambda load: load.rank)
    gains: dict[str, float] = {}

    placement = None
    placed_before = list(previous.expert_placement) if previous is not None else []
    expert_counts = snapshot.expert_tokens
    if (
        full
        and layout.expert > 1
        and layout.experts
        and [len(layer) for layer in expert_counts] == [layout.experts] * layout.layers
    ):
        current = placed_before or _starting(layout)
        placement, gains["experts"] = expert_part(
            expert_counts,
            layout,
            current,
            step_seconds=math.fsum(load.step_seconds for load in loads) / len(loads),
            steps_until_next_plan=hysteresis.interval_steps,
        )
    shares = None
    if layout.pipeline == 1:  # after the experts: the data part splits the batch for the placement that will run
        first, last = hysteresis.forecast_window(hysteresis.data_interval) if forecast_steps is None else forecast_steps
        rates = replica_rates(snapshot.throughput(first, last), layout)
        held = placement or placed_before or _starting(layout)
        expert_load = ep_rank_loads(expert_counts, held, layout) if held else None
        if expert_load is not None:
            shares = group_data_part(rates, expert_load, layout, global_batch, current_shares, max_sequences_per_rank)
        else:
            shares = plan_data_shares(
                rates, global_batch, current=current_shares, max_sequences_per_rank=max_sequences_per_rank
            )
        gains["data"] = shares.predicted_gain
    stages = None
    staged_before = list(previous.stage_layers) if previous is not None else list(stage_layers)
    if full and layout.pipeline > 1:
        compute = [load.compute_seconds for load in loads]
        stages, gains["stages"] = stage_part(compute, layout, staged_before, settings.layer_costs)

    scale = settings.min_gain_scale
    paying = {part: gain for part, gain in gains.items() if gain > hysteresis.min_gain * scale.get(part, 1.0)}
    planned_before = current_shares is not None and list(current_shares) != even_split(global_batch, data)
    if "experts" in paying and "data" in gains and planned_before:
        # The shares that run were split for the placement that moves away (a rank with a hot expert got fewer
        # sequences): kept, they made an expert plan that paid on its own cost utilization in the simulator.
        paying["data"] = gains["data"]
    combined = 1.0 - math.prod(1.0 - gain for gain in paying.values())
    verdict = hysteresis.verdict(
        current_step=snapshot.max_step,
        last_applied_step=last_applied_step,
        predicted_gain=combined,
        interval=hysteresis.data_interval,
    )
    if verdict is not Verdict.PLAN:
        return ReplanOutcome(None, verdict)
    sequences = shares.sequences if shares is not None and "data" in paying else None
    sequences = sequences or tuple(current_shares or even_split(global_batch, data))
    plan = build_plan(
        namespace=settings.namespace,
        job=settings.job,
        previous=previous,
        max_step=snapshot.max_step,
        apply_margin_steps=hysteresis.apply_margin_steps,
        data_shares=[count / global_batch for count in sequences],
        stage_layers=stages if stages is not None and "stages" in paying else staged_before,
        expert_placement=placement if placement is not None and "experts" in paying else placed_before,
        predicted_gain=combined,
        now_unix_s=now_unix_s,
    )
    return ReplanOutcome(plan, verdict, tuple(sequences), tuple(sorted(paying)), full)
