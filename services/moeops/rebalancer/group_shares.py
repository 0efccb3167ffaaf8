"""Data shares that know the expert-parallel groups: a sequence given to an EP group is expert work for all of it.

Under data × expert parallelism each GPU does two kinds of work in a step: the dense part of its own sequences
(n_r / w_r seconds at its rate w_r) and the expert part of *every* sequence its EP group took, routed to the
experts it holds (S_g · p_r seconds, S_g = Σ_{r∈g} n_r, p_r its expert seconds per group sequence at its own
speed). `plan_data_shares` treats the expert part as fixed, so a group full of stragglers keeps its share of the
global batch and its slow GPUs keep their expert work, however few sequences of their own they are given (at
least one each). Moving whole sequences *between groups* shrinks that work too. In `benchmarks/rebalance_sim.py`
an oracle with perfect knowledge reached 0.89 utilization at 1,024 GPUs with per-GPU shares and 0.98 with these.

The problem: minimise T such that S_g · p_r + n_r / w_r ≤ T for every rank, lo_r ≤ n_r ≤ hi_r, Σ n_r = N.
For a given T, a group's largest feasible total is the largest S with Σ_r min(hi_r, ⌊(T − S·p_r)·w_r⌋) ≥ S and
every term ≥ lo_r; both sides move monotonically in S, so it is found by bisection, for all groups at once. The
global batch fits when the groups' largest totals reach N; T is bisected over that. Then surplus sequences are
taken from the largest groups, and inside each group from the ranks that finish last. Every step is a numpy
operation over all ranks: 10,240 ranks in tens of milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from .data_shares import DataSharePlan, even_split

Floats = NDArray[np.float64]
T_BISECTIONS = 24
"""Halvings of the finishing-time interval (between the relaxation's bound and the current step time): the
plan's step time is within 2⁻²⁴ of that interval (well under a millionth of the step) of the best split's."""


def group_step_seconds(
    sequences: Sequence[int] | NDArray[np.int64], rates: Floats, per_group_sequence: Floats, group_size: int
) -> float:
    """max over ranks of S_g · p_r + n_r / w_r: the step time the model above predicts for a split."""
    n = np.asarray(sequences, dtype=np.float64)
    group_totals = np.repeat(n.reshape(-1, group_size).sum(axis=1), group_size)
    return float((group_totals * per_group_sequence + n / rates).max())


def plan_group_shares(
    sequences_per_second: Sequence[float] | Floats,
    seconds_per_group_sequence: Sequence[float] | Floats,
    group_size: int,
    global_batch: int,
    *,
    current: Sequence[int] | None = None,
    min_sequences_per_rank: int = 1,
    max_sequences_per_rank: int | None = None,
) -> DataSharePlan:
    """Sequences per rank (ranks of one EP group consecutive) minimising the slowest rank's S_g·p_r + n_r/w_r.

    `sequences_per_second` w_r: the dense work's rate; `seconds_per_group_sequence` p_r: expert seconds per
    sequence the rank's group takes, at the rank's speed. The plan's "before" is `current` (default: even)."""
    w = np.asarray(sequences_per_second, dtype=np.float64)
    p = np.asarray(seconds_per_group_sequence, dtype=np.float64)
    ranks = len(w)
    if ranks == 0 or group_size < 1 or ranks % group_size:
        raise ValueError(f"{ranks} ranks do not form groups of {group_size}")
    if p.shape != w.shape or not (np.all(w > 0) and np.all(np.isfinite(w))):
        raise ValueError("rates must be positive and finite, one per rank, as the expert seconds")
    if not (np.all(p >= 0) and np.all(np.isfinite(p))):
        raise ValueError("expert seconds per group sequence must be non-negative and finite")
    lo = min_sequences_per_rank
    hi = global_batch if max_sequences_per_rank is None else max_sequences_per_rank
    if not 0 <= lo <= hi or not lo * ranks <= global_batch <= hi * ranks:
        raise ValueError(f"a global batch of {global_batch} does not fit {ranks} ranks of {lo}..{hi}")
    before = np.asarray(list(current) if current is not None else even_split(global_batch, ranks), dtype=np.int64)
    if before.shape != (ranks,) or int(before.sum()) != global_batch:
        raise ValueError(f"current shares are not a split of {global_batch} over {ranks} ranks")
    groups = ranks // group_size
    # (group, rank in group) views: rates w and expert seconds per group sequence p.
    rate_gr, cost_gr = w.reshape(groups, group_size), p.reshape(groups, group_size)
    before_s = group_step_seconds(before, w, p, group_size)

    def caps(finish: float, totals: Floats) -> Floats:
        """(groups, size): the most sequences each rank can take by `finish` when its group takes `totals`."""
        room: Floats = np.minimum(np.floor((finish - totals[:, None] * cost_gr) * rate_gr), hi)
        return room

    least, most = float(lo * group_size), float(min(hi * group_size, global_batch))
    # Without the floors, minima and caps a group takes S = T·Σw / (1 + Σw·p) by T; each floor costs it less
    # than one sequence, so the integer answer lies in the `group_size` below that (unless a bound binds).
    slope = rate_gr.sum(axis=1) / (1.0 + (rate_gr * cost_gr).sum(axis=1))

    def largest_totals(finish: float) -> Floats:
        """Per group, the largest total it can take by `finish`; -1 where not even every rank's minimum fits."""
        high = np.clip(np.floor(slope * finish), least, most)
        guess = np.maximum(high - group_size, least)
        guessed = _fits(caps(finish, guess), guess, lo)
        low = np.where(guessed, guess, least)
        high = np.where(guessed, high, guess)  # the guess does not fit: the answer is below it
        fits_low = guessed | _fits(caps(finish, low), low, lo)
        while np.any(low < high):
            mid = np.floor((low + high + 1) / 2)
            fits = _fits(caps(finish, mid), mid, lo)
            low, high = np.where(fits, mid, low), np.where(fits, high, mid - 1)
        return np.where(fits_low, low, -1.0)

    def holds_batch(finish: float) -> bool:
        totals = largest_totals(finish)
        return bool(np.all(totals >= 0) and totals.sum() >= global_batch)

    # The continuous relaxation's T (Σ_g S_g = N) is a lower bound; the current split's step time is feasible.
    early, late = float(global_batch / slope.sum()), before_s * (1 + 1e-12)
    if not holds_batch(late):  # rounding at the edge
        late = before_s * (1 + 1e-9) + 1e-12
    for _ in range(T_BISECTIONS):
        middle = (early + late) / 2
        early, late = (early, middle) if holds_batch(middle) else (middle, late)
    totals = _trim_groups(largest_totals(late), global_batch, lo * group_size)
    counts = _trim_ranks(np.maximum(caps(late, totals), lo), totals, rate_gr, cost_gr, lo)
    after = counts.ravel().astype(np.int64)
    return DataSharePlan(
        sequences=tuple(after.tolist()),
        step_seconds_before=before_s,
        step_seconds_after=group_step_seconds(after, w, p, group_size),
    )


def _fits(room: Floats, totals: Floats, lo: int) -> NDArray[np.bool_]:
    fits: NDArray[np.bool_] = (room.min(axis=1) >= lo) & (room.sum(axis=1) >= totals)
    return fits


def _trim_groups(totals: Floats, global_batch: int, least: int) -> Floats:
    """Take the surplus over `global_batch` one sequence at a time from the largest groups (any group can give
    one back: fewer sequences never make a rank slower)."""
    totals = totals.copy()
    surplus = int(totals.sum()) - global_batch
    while surplus > 0:
        order = np.argsort(-totals, kind="stable")
        givers = order[totals[order] > least][:surplus]
        totals[givers] -= 1
        surplus -= len(givers)
    return totals


def _trim_ranks(counts: Floats, totals: Floats, rate_gr: Floats, cost_gr: Floats, lo: int) -> Floats:
    """Inside each group, take its surplus over its total from the ranks that finish last, one at a time."""
    counts = counts.copy()
    rows = np.arange(len(totals))
    while True:
        surplus = counts.sum(axis=1) - totals
        if not np.any(surplus > 0):
            return counts
        finish = np.where(counts > lo, totals[:, None] * cost_gr + counts / rate_gr, -np.inf)
        latest = np.argmax(finish, axis=1)
        giving = surplus > 0
        counts[rows[giving], latest[giving]] -= 1
