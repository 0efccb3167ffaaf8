"""A `RebalancePlan`'s data shares as whole sequences per rank: one rounding that both ends of the plan share.

The plan carries fractions of the global batch (`RebalancePlan.data_shares`); the rebalancer records what it
planned and the trainer applies it by rounding them here, so the two always agree on every rank's sequences.
Pure (numpy only).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sequences_from_fractions(fractions: Sequence[float], global_batch: int) -> list[int]:
    """A plan's `data_shares` back as whole sequences per rank (each ≥ 1), summing to `global_batch`."""
    ranks = len(fractions)
    return largest_remainder(
        [fraction * global_batch for fraction in fractions], global_batch, [1] * ranks, [global_batch] * ranks
    )


def largest_remainder(shares: Sequence[float], total: int, lower: Sequence[int], upper: Sequence[int]) -> list[int]:
    """Integers within [lower, upper] summing to `total`: floors first, then +1 by largest fractional part.

    The shares sum to `total` only up to rounding, so the correction may also have to take units away (from the
    smallest fractional parts); either way each rank moves by at most one unit from its floor in practice.
    """
    share = np.asarray(shares, dtype=np.float64)
    lo = np.asarray(lower, dtype=np.int64)
    hi = np.asarray(upper, dtype=np.int64)
    counts = np.minimum(np.maximum(np.floor(share).astype(np.int64), lo), hi)
    missing = total - int(counts.sum())
    # Largest fractional part first, ties to the lower rank.
    order = np.lexsort((np.arange(len(share)), counts - share))
    while missing > 0:
        room = order[counts[order] < hi[order]][:missing]
        if len(room) == 0:
            raise ValueError("the caps cannot hold the global batch")
        counts[room] += 1
        missing -= len(room)
    while missing < 0:
        room = order[::-1][counts[order[::-1]] > lo[order[::-1]]][:-missing]
        if len(room) == 0:
            raise ValueError("the global batch cannot give every rank its minimum")
        counts[room] -= 1
        missing += len(room)
    result: list[int] = counts.tolist()
    return result
