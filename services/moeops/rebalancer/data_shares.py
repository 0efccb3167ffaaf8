"""Data parallel: split a fixed global batch over ranks in proportion to their measured speed.

Sequences per rank are integers summing exactly to the global batch, each ≥ 1 (a rank with no data would skip the
collectives' shapes the others expect) and ≤ a memory cap. The ideal real-valued shares are proportional to
throughput and clipped to [1, cap] (water-filling: the clipped ranks' excess goes to the others in proportion);
the integers come from rounding those so that the slowest rank finishes as early as it can
(`round_finishing_first`; `moeops.bus.plan_shares` rounds a plan's fractions back to sequences).

Keeping the gradient unbiased. The trainer sums the per-token losses on every rank and divides by the token count
of the *global* batch (all-reduced), so each sequence weighs 1/N wherever it runs and the all-reduced gradient is
the full-batch mean whatever the split: the loss weight is 1 on every rank. Were each rank to take the *mean* over
its own n_r sequences, and the ranks' gradients then averaged (÷ R), a sequence would weigh 1/(R·n_r): uneven
shares would over-weight the slow ranks' data. Multiplying rank r's mean by n_r·R/N restores 1/N per sequence:
(1/R)·Σ_r (n_r·R/N)·(1/n_r)·Σ_i g_i = (1/N)·Σ_all g_i.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np


class LossNormalisation(Enum):
    GLOBAL_SUM = "global_sum"
    """Per-rank loss sums divided by the global token count (what moeops' trainer does): weight 1."""
    RANK_MEAN = "rank_mean"
    """Per-rank means, averaged over ranks by the gradient all-reduce: weight n_r·R/N."""


@dataclass(frozen=True)
class DataSharePlan:
    sequences: tuple[int, ...]
    """Per rank, sequences of the global batch it processes each step."""
    step_seconds_before: float
    step_seconds_after: float
    """Predicted step time: max over ranks of sequences / throughput (the slowest rank sets the pace)."""

    @property
    def global_batch(self) -> int:
        return sum(self.sequences)

    @property
    def fractions(self) -> list[float]:
        """Per rank, its fraction of the global batch (`RebalancePlan.data_shares`)."""
        return [count / self.global_batch for count in self.sequences]

    @property
    def predicted_gain(self) -> float:
        """Relative step-time reduction: 0.1 = 10% faster."""
        if self.step_seconds_before <= 0:
            return 0.0
        return 1.0 - self.step_seconds_after / self.step_seconds_before

    def loss_weights(self, normalisation: LossNormalisation = LossNormalisation.GLOBAL_SUM) -> list[float]:
        return loss_weights(self.sequences, normalisation)


def loss_weights(sequences: Sequence[int], normalisation: LossNormalisation) -> list[float]:
    """The factor on each rank's loss that keeps the gradient the full-batch mean (see the module docstring)."""
    if normalisation is LossNormalisation.GLOBAL_SUM:
        return [1.0] * len(sequences)
    total, ranks = sum(sequences), len(sequences)
    return [count * ranks / total for count in sequences]


def predicted_step_seconds(
    sequences: Sequence[int], sequences_per_second: Sequence[float], fixed_seconds: Sequence[float] | None = None
) -> float:
    """max over ranks of fixed_r + sequences_r / rate_r (fixed: 0 when not given)."""
    seconds = np.asarray(sequences, dtype=np.float64) / np.asarray(sequences_per_second, dtype=np.float64)
    if fixed_seconds is not None:
        seconds = seconds + np.asarray(fixed_seconds, dtype=np.float64)
    return float(seconds.max())


def even_split(global_batch: int, ranks: int) -> list[int]:
    """The split before any rebalancing: equal, the first global_batch % ranks ranks one more."""
    base, extra = divmod(global_batch, ranks)
    return [base + (1 if rank < extra else 0) for rank in range(ranks)]


def _caps(max_sequences_per_rank: int | Sequence[int] | None, ranks: int, global_batch: int) -> list[int]:
    if max_sequences_per_rank is None:
        return [global_batch] * ranks
    if isinstance(max_sequences_per_rank, int):
        return [max_sequences_per_rank] * ranks
    if len(max_sequences_per_rank) != ranks:
        raise ValueError(f"{len(max_sequences_per_rank)} memory caps for {ranks} ranks")
    return list(max_sequences_per_rank)


def ideal_shares(
    weights: Sequence[float],
    total: int,
    lower: Sequence[int],
    upper: Sequence[int],
    *,
    offsets: Sequence[float] | None = None,
) -> list[float]:
    """clip(w_r·(λ − o_r), lower_r, upper_r) with λ chosen so they sum to `total` (offsets o: 0 when not given).

    With w the rates and o each rank's fixed seconds, λ is the common finishing time o_r + share_r / w_r.
    The sum is piecewise linear and non-decreasing in λ, with a kink where a rank leaves its floor (λ = o + lo/w)
    or reaches its cap (λ = o + hi/w): sort the kinks, accumulate the slope (Σ w of the ranks in between) and
    the constant part (the clipped ranks' bounds, minus w·o of the ranks in between) over them, and solve the
    first linear piece that reaches `total`. O(R log R), in numpy: 10,240 ranks in a few milliseconds.
    """
    hi = np.asarray(upper, dtype=np.float64)
    if total >= hi.sum():
        capped: list[float] = hi.tolist()
        return capped
    w = np.asarray(weights, dtype=np.float64)
    lo = np.asarray(lower, dtype=np.float64)
    o = np.asarray(offsets, dtype=np.float64) if offsets is not None else np.zeros_like(w)
    ranks = np.arange(len(w))
    # Events (λ, kind, rank): kind 0 = leaves its floor, 1 = reaches its cap; a floor event sorts first at a tie.
    # A cap of `total` or more never binds (the others keep their floors, ≥ 0): no event for it.
    binds = hi < total
    at = np.concatenate([o + lo / w, (o + hi / w)[binds]])
    kind = np.concatenate([np.zeros(len(w)), np.ones(int(binds.sum()))])
    rank = np.concatenate([ranks, ranks[binds]])
    order = np.lexsort((rank, kind, at))
    at, kind, rank = at[order], kind[order], rank[order]
    floor = kind == 0
    step_constant = np.where(floor, -(lo[rank] + w[rank] * o[rank]), hi[rank] + w[rank] * o[rank])
    step_slope = np.where(floor, w[rank], -w[rank])
    # State before event i: the sums of the steps of the events before it.
    constant = lo.sum() + np.concatenate([[0.0], np.cumsum(step_constant)])
    slope = np.concatenate([[0.0], np.cumsum(step_slope)])
    reached = np.flatnonzero(constant[:-1] + slope[:-1] * at >= total)
    piece = int(reached[0]) if len(reached) else len(at)  # the piece ending at event `piece` holds the target
    if slope[piece] > 0:
        scale = (total - constant[piece]) / slope[piece]
    else:  # a flat piece: the target was already reached at the previous kink (or nothing is free to move)
        scale = at[piece - 1] if piece > 0 else (float(o.min()) if len(o) else 0.0)
    result: list[float] = np.minimum(np.maximum(w * (scale - o), lo), hi).tolist()
    return result


def round_finishing_first(
    shares: Sequence[float],
    total: int,
    lower: Sequence[int],
    upper: Sequence[int],
    rates: Sequence[float],
    offsets: Sequence[float] | None = None,
) -> list[int]:
    """Integers within [lower, upper] summing to `total` that keep the slowest rank fast: floors first, then
    the missing sequences one each to the ranks that would finish soonest with one more (o_r + (n_r + 1) / w_r,
    ties to the lower rank), or surplus ones taken from the ranks that finish last.

    Largest-remainder rounding gives the extra sequences by fractional part alone, but a sequence costs a slow
    rank more time than a fast one (0.42 s against 0.25 s at 0.6×): handing the +1s to the ranks with the most
    room left lowers the step time, which is the maximum of the finishing times."""
    share = np.asarray(shares, dtype=np.float64)
    lo = np.asarray(lower, dtype=np.int64)
    hi = np.asarray(upper, dtype=np.int64)
    w = np.asarray(rates, dtype=np.float64)
    o = np.asarray(offsets, dtype=np.float64) if offsets is not None else np.zeros_like(w)
    counts = np.minimum(np.maximum(np.floor(share).astype(np.int64), lo), hi)
    missing = total - int(counts.sum())
    ranks = np.arange(len(share))
    while missing > 0:
        room = ranks[counts < hi]
        if len(room) == 0:
            raise ValueError("the caps cannot hold the global batch")
        order = room[np.lexsort((room, o[room] + (counts[room] + 1) / w[room]))][:missing]
        counts[order] += 1
        missing -= len(order)
    while missing < 0:
        room = ranks[counts > lo]
        if len(room) == 0:
            raise ValueError("the global batch cannot give every rank its minimum")
        order = room[np.lexsort((room, -(o[room] + counts[room] / w[room])))][:-missing]
        counts[order] -= 1
        missing += len(order)
    result: list[int] = counts.tolist()
    return result


def plan_data_shares(
    sequences_per_second: Sequence[float],
    global_batch: int,
    *,
    current: Sequence[int] | None = None,
    max_sequences_per_rank: int | Sequence[int] | None = None,
    min_sequences_per_rank: int = 1,
    fixed_seconds: Sequence[float] | None = None,
) -> DataSharePlan:
    """Shares proportional to throughput; any unit works (tokens/s for fixed-length sequences) since only ratios
    set the shares, but the predicted step times are in seconds only when the rates are sequences per second.

    `current` (default: an even split) is what the "before" step time is predicted from.

    `fixed_seconds` (rates then in sequences per second): per rank, time it spends whatever its share, e.g. the
    expert layers' work its experts receive from the whole EP group. The shares then equalise fixed_r + n_r /
    rate_r instead (a straggler holding experts gets fewer sequences than its rate alone would give it).
    """
    ranks = len(sequences_per_second)
    if ranks == 0:
        raise ValueError("no ranks")
    rates = np.asarray(sequences_per_second, dtype=np.float64)
    if not (np.all(rates > 0) and np.all(np.isfinite(rates))):
        raise ValueError(f"throughputs must be positive and finite: {list(sequences_per_second)}")
    upper = _caps(max_sequences_per_rank, ranks, global_batch)
    lower = [min_sequences_per_rank] * ranks
    if min_sequences_per_rank > min(upper) or not sum(lower) <= global_batch <= sum(upper):
        raise ValueError(
            f"a global batch of {global_batch} does not fit {ranks} ranks of {min_sequences_per_rank}..{upper}"
        )
    before = list(current) if current is not None else even_split(global_batch, ranks)
    if sum(before) != global_batch or len(before) != ranks:
        raise ValueError(f"current shares {before} are not a split of {global_batch} over {ranks} ranks")
    fixed = np.asarray(fixed_seconds, dtype=np.float64) if fixed_seconds is not None else None
    if fixed is not None and (fixed.shape != (ranks,) or not (np.all(fixed >= 0) and np.all(np.isfinite(fixed)))):
        raise ValueError(f"fixed seconds must be {ranks} non-negative finite values")
    shares = ideal_shares(sequences_per_second, global_batch, lower, upper, offsets=fixed_seconds)
    counts = round_finishing_first(shares, global_batch, lower, upper, sequences_per_second, fixed_seconds)
    return DataSharePlan(
        sequences=tuple(counts),
        step_seconds_before=predicted_step_seconds(before, sequences_per_second, fixed_seconds),
        step_seconds_after=predicted_step_seconds(counts, sequences_per_second, fixed_seconds),
    )
