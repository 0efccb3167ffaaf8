"""One planning round: a load snapshot → the next `RebalancePlan`, or None when re-planning is not worth it.

Pure (no NATS): the edge calls it after folding in new metrics. Only the data-parallel shares are re-planned here;
the pipeline stages and the expert placement are carried over unchanged from the previous plan (or the job's
current layout), so a plan never moves layers or experts the trainer cannot yet move on the fly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from moeops.bus.messages import RebalancePlan

from .data_shares import largest_remainder, plan_data_shares
from .load import LoadSnapshot
from .policy import Hysteresis, Verdict, build_plan


@dataclass(frozen=True)
class ReplanOutcome:
    """What a round decided, and why (the edge counts verdicts)."""

    plan: RebalancePlan | None
    verdict: Verdict | None
    """None when there was nothing to judge yet (no complete snapshot)."""
    sequences: tuple[int, ...] | None = None
    """The planned sequences per rank when `plan` is set."""


def sequences_from_fractions(fractions: Sequence[float], global_batch: int) -> list[int]:
    """A plan's `data_shares` back as whole sequences per rank (each ≥ 1), summing to `global_batch`."""
    ranks = len(fractions)
    return largest_remainder(
        [fraction * global_batch for fraction in fractions], global_batch, [1] * ranks, [global_batch] * ranks
    )


def replan_outcome(
    snapshot: LoadSnapshot,
    *,
    global_batch: int,
    current_shares: Sequence[int] | None,
    hysteresis: Hysteresis,
    last_applied_step: int | None,
    previous: RebalancePlan | None,
    namespace: str,
    job: str,
    now_unix_s: float,
    stage_layers: Sequence[tuple[int, int]] = ((0, 1),),
    max_sequences_per_rank: int | Sequence[int] | None = None,
    min_samples: int = 1,
) -> ReplanOutcome:
    """The next plan (`.plan`, or None), with the verdict and the planned sequences. No plan: no complete
    snapshot yet (a rank never reported), inside the minimum interval
    since `last_applied_step`, a predicted gain not above `hysteresis.min_gain`, or rebalancing disabled.

    `current_shares` (sequences per rank; None: an even split) is what the gain is measured against. The new
    plan's epoch follows `previous` (0 without one); stages and expert placement are carried over from
    `previous`, else `stage_layers` and no placement. No plan either until every rank has folded in at least
    `min_samples` steps.
    """
    if snapshot.world_size < 1 or not snapshot.complete or snapshot.max_step < 0:
        return ReplanOutcome(None, None)
    if min(load.samples for load in snapshot.ranks) < min_samples:
        return ReplanOutcome(None, None)
    if current_shares is not None and len(current_shares) != snapshot.world_size:
        current_shares = None  # the world changed size: the old split means nothing, compare with an even one
    shares = plan_data_shares(
        snapshot.throughput(),
        global_batch,
        current=current_shares,
        max_sequences_per_rank=max_sequences_per_rank,
    )
    gain = shares.predicted_gain
    verdict = hysteresis.verdict(
        current_step=snapshot.max_step, last_applied_step=last_applied_step, predicted_gain=gain
    )
    if verdict is not Verdict.PLAN:
        return ReplanOutcome(None, verdict)
    plan = build_plan(
        namespace=namespace,
        job=job,
        previous=previous,
        max_step=snapshot.max_step,
        apply_margin_steps=hysteresis.apply_margin_steps,
        data_shares=shares.fractions,
        stage_layers=previous.stage_layers if previous is not None else stage_layers,
        expert_placement=previous.expert_placement if previous is not None else [],
        predicted_gain=gain,
        now_unix_s=now_unix_s,
    )
    return ReplanOutcome(plan, verdict, shares.sequences)
