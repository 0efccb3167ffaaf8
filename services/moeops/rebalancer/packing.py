"""EPLB's two steps for every layer at once (numpy), each two ways with the same result, whichever is cheaper at
the size: `replicate` (spare slots to the experts with the most load per replica) and `pack` (replicas heaviest
first onto the least-loaded rank with a free slot that does not hold the expert yet). `placement.place_layers`
runs them; they give `experts.place_experts`' placements layer by layer.

At 10,240 EP ranks one slot at a time took minutes (a numpy call over every layer and rank for each of 10,000+
slots); by threshold and one expert at a time it is a fraction of a second (benchmarks/placement_pack.py).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Floats = NDArray[np.float64]
Bools = NDArray[np.bool_]
Ints = NDArray[np.int64]


REPLICATE_BY_SLOT_MAX = 1024
"""Spare slots up to which `_replicate` hands them out one at a time (a numpy call over layers × experts each);
beyond, by threshold (about 64 bisection steps of a few such calls, whatever the count)."""


def replicate(loads: Floats, slots: int, max_replicas: int) -> Ints:
    """Replicas per expert: one each, then each spare slot to the expert with the most load per replica (ties
    to the lower expert), never more than `max_replicas`."""
    experts = loads.shape[1]
    if not experts <= slots <= experts * max_replicas:
        raise ValueError(f"{slots} slots cannot hold {experts} experts with 1..{max_replicas} replicas each")
    if slots - experts <= REPLICATE_BY_SLOT_MAX:
        return _replicate_by_slot(loads, slots, max_replicas)
    return _replicate_by_threshold(loads, slots, max_replicas)


def _replicate_by_slot(loads: Floats, slots: int, max_replicas: int) -> Ints:
    layers, experts = loads.shape
    rows = np.arange(layers)
    copies = np.ones((layers, experts), dtype=np.int64)
    for _ in range(slots - experts):
        per_replica = np.where(copies < max_replicas, loads / copies, -np.inf)
        copies[rows, np.argmax(per_replica, axis=1)] += 1
    return copies


def _replicate_by_threshold(loads: Floats, slots: int, max_replicas: int) -> Ints:
    """`_replicate` without a loop over the spare slots: slot by slot, an expert's k-th extra replica is taken
    at the value load / k, and those values fall with k, so the slots go to the largest values load / k over
    every expert and k < max_replicas, the equal ones to the lower expert first. Per layer, the threshold (the
    value of the last slot) is found by bisection on the floats' bits, counting the values at or above a
    threshold per expert in closed form; the values equal to it go to the lower experts."""
    layers, experts = loads.shape
    if not (np.isfinite(loads).all() and (loads >= 0).all()):
        raise ValueError("expert loads must be finite and not negative")
    copies = np.ones((layers, experts), dtype=np.int64)
    spare, cap = slots - experts, max_replicas - 1
    low = np.zeros(layers, dtype=np.int64)  # the bits of a threshold with at least `spare` values at or above it
    high = loads.max(axis=1).view(np.int64) + 1  # ... and of one with fewer (above every value)
    while (high - low > 1).any():
        middle = low + (high - low) // 2
        enough = _values_above(loads, middle.view(np.float64), cap, strict=False).sum(axis=1) >= spare
        low, high = np.where(enough, middle, low), np.where(enough, high, middle)
    threshold = low.view(np.float64)
    above = _values_above(loads, threshold, cap, strict=True)
    tied = _values_above(loads, threshold, cap, strict=False) - above
    left = spare - above.sum(axis=1, keepdims=True)  # ≥ 1 of the tied values, lower experts first
    taken = np.clip(left - (np.cumsum(tied, axis=1) - tied), 0, tied)
    copies += above + taken
    return copies


def _values_above(loads: Floats, threshold: Floats, cap: int, *, strict: bool) -> Ints:
    """(layers, experts): how many k in 1..cap have load / k ≥ threshold (> with `strict`), per layer's
    threshold; load / k (rounded) falls with k, so it is a count from k = 1: estimated, then corrected."""
    limit = threshold[:, None]

    def within(k: Ints) -> Bools:
        value = loads / np.maximum(k, 1)
        found: Bools = ((value > limit) if strict else (value >= limit)) & (k >= 1) & (k <= cap)
        return found

    at_zero = np.where(strict & (loads == 0), 0, cap)  # every value is ≥ 0; > 0 unless the load is 0
    with np.errstate(over="ignore"):  # a tiny threshold: an estimate past the cap, clipped below
        estimate = np.where(limit > 0, np.floor(loads / np.where(limit > 0, limit, 1.0)), at_zero)
    count = np.clip(estimate, 0, cap).astype(np.int64)
    for _ in range(2):
        count += within(count + 1)
    for _ in range(2):
        count -= ~within(count) & (count >= 1)
    return count


def pack(loads: Floats, copies: Ints, ranks: int) -> tuple[Bools, Bools]:
    """Greedy packing of every layer; also which layers got stuck (no open rank without the expert): one slot at
    a time over every layer (`_pack_by_slot`) for a few hundred ranks, else one expert at a time per layer
    (`_pack_by_expert`), whichever costs less; the same placements.
    """
    if int(copies[0].sum()) * ranks <= PACK_BY_SLOT_MAX_WORK:
        return _pack_by_slot(loads, copies, ranks)
    return _pack_by_expert(loads, copies, ranks)


PACK_BY_SLOT_MAX_WORK = 1 << 16
"""slots × ranks up to which `_pack_by_slot` (a numpy call over layers × ranks a slot) is the cheaper; above,
`_pack_by_expert` (a few calls over the ranks per layer and batch of experts). Measured on 58 layers × 256
experts: 64 ranks × 5 slots 9 ms against 208 ms; 256 × 2 27 against 15 ms; 1,024 × 2 522 against 22 ms."""


def _pack_by_slot(loads: Floats, copies: Ints, ranks: int) -> tuple[Bools, Bools]:
    """`_pack` one slot at a time, every layer at once: the cheaper way for a few hundred ranks (a numpy call
    over (layers, ranks) a slot), where `_pack_by_expert`'s calls per layer cost more."""
    layers, experts = loads.shape
    slots = int(copies[0].sum())
    per_rank = slots // ranks
    rows = np.arange(layers)
    item_expert = np.stack([np.repeat(np.arange(experts), copies[layer]) for layer in range(layers)])
    item_load = (loads / copies)[rows[:, None], item_expert]
    order = np.lexsort((item_expert, -item_load), axis=-1)
    item_expert = np.take_along_axis(item_expert, order, axis=1)
    item_load = np.take_along_axis(item_load, order, axis=1)
    # Flat views, indexed by layer · ranks + rank: one index per update instead of a (rows, rank) pair.
    holds = np.zeros((layers, ranks, experts), dtype=bool)
    flat_holds = holds.reshape(-1)
    rank_load = np.zeros(layers * ranks)
    count = np.zeros(layers * ranks, dtype=np.int64)
    open_load = np.zeros((layers, ranks))  # a rank's load while it has a free slot, then ∞
    flat_open = open_load.reshape(-1)
    stuck = np.zeros(layers, dtype=bool)
    # Only a replicated expert can already be on a rank: the other items need no check.
    replicated: Bools = np.asarray((np.take_along_axis(copies, item_expert, axis=1) > 1).any(axis=0))
    first = rows * ranks
    by_item_expert, by_item_load = np.ascontiguousarray(item_expert.T), np.ascontiguousarray(item_load.T)
    for item in range(slots):
        expert = by_item_expert[item]
        if replicated[item]:
            candidates = np.where(holds[rows, :, expert], np.inf, open_load)
            at = first + candidates.argmin(axis=1)
            stuck |= np.isinf(candidates.reshape(-1)[at])
        else:
            at = first + open_load.argmin(axis=1)
        flat_holds[at * experts + expert] = True
        rank_load[at] += by_item_load[item]
        count[at] += 1
        flat_open[at] = np.where(count[at] < per_rank, rank_load[at], np.inf)
    return holds, stuck


def _pack_by_expert(loads: Floats, copies: Ints, ranks: int) -> tuple[Bools, Bools]:
    """`_pack` per layer, one expert at a time.

    The greedy takes replicas heaviest first (ties to the lower expert) onto the least-loaded open rank (ties to
    the lower rank) that does not hold the expert yet. An expert's replicas weigh the same, so they come one after
    another, and none of them is on a rank before the first: each goes to the least-loaded open rank the ones
    before it did not take. Together they take the expert's first `copies` open ranks in (load, rank) order. So a
    layer is packed one expert at a time (not one slot at a time) over its open ranks kept in that order: the
    ranks taken get the load, and those still open go back in their place (a merge)."""
    layers, experts = loads.shape
    per_rank = int(copies[0].sum()) // ranks
    holds = np.zeros((layers, ranks, experts), dtype=bool)
    stuck = np.zeros(layers, dtype=bool)
    per_replica = loads / copies
    for layer in range(layers):
        stuck[layer] = not _pack_layer(per_replica[layer], copies[layer], per_rank, holds[layer])
    return holds, stuck


def _pack_layer(per_replica: Floats, copies: Ints, per_rank: int, holds: Bools) -> bool:
    """One layer of `_pack` into `holds` (ranks, experts); False if it got stuck.

    Several experts at once where that changes nothing: the next experts take the next slices of the open ranks
    as long as each slice's heaviest rank stays lighter than every rank taken before it that is still open (so
    none of those would come first). With loads the replication has evened out, a round of the ranks (one slot
    each) is one such batch: a few batches a layer."""
    ranks = holds.shape[0]
    order = np.lexsort((np.arange(len(copies)), -per_replica))
    takes, weights = copies[order], per_replica[order]
    open_rank = np.arange(ranks)  # the open ranks by (load, rank)
    open_load = np.zeros(ranks)
    count = np.zeros(ranks, dtype=np.int64)
    first = 0
    while first < len(order):
        ends = np.cumsum(takes[first:])
        batch = int(np.searchsorted(ends, len(open_rank), side="right"))
        if batch == 0:
            return False  # fewer open ranks than the expert's replicas
        ends = ends[:batch]
        taken = open_rank[: ends[-1]]
        load = open_load[: ends[-1]] + np.repeat(weights[first : first + batch], takes[first : first + batch])
        still = count[taken] + 1 < per_rank
        starts = ends - takes[first : first + batch]
        # Per expert, the lightest of its ranks that stay open; an expert may join the batch if its heaviest rank
        # is lighter than all of those before it.
        reopened = np.minimum.reduceat(np.where(still, load, np.inf), starts)
        before = np.concatenate(([np.inf], np.minimum.accumulate(reopened)[:-1]))
        fits = open_load[ends - 1] < before
        batch = int(np.argmin(fits)) if not fits.all() else batch
        end = int(ends[batch - 1])
        taken, load, still = taken[:end], load[:end], still[:end]
        holds[taken, np.repeat(order[first : first + batch], takes[first : first + batch])] = True
        count[taken] += 1
        open_rank, open_load = open_rank[end:], open_load[end:]
        if still.any():
            open_rank, open_load = _merge(open_rank, open_load, taken[still], load[still])
        first += batch
    return True


def _merge(ranks: Ints, loads: Floats, new_ranks: Ints, new_loads: Floats) -> tuple[Ints, Floats]:
    """`ranks` (sorted by (load, rank)) with `new_ranks` put in their places."""
    order = np.lexsort((new_ranks, new_loads))  # adding one weight may make two loads equal: re-sort
    new_ranks, new_loads = new_ranks[order], new_loads[order]
    if len(ranks) == 0:
        return new_ranks, new_loads
    at = np.searchsorted(loads, new_loads, side="left")
    inside = np.minimum(at, len(loads) - 1)
    tie = (at < len(loads)) & (loads[inside] == new_loads)
    if tie.any():  # equal loads: after the lower ranks. Runs of equal loads numbered, then (run, rank) searched
        run = np.concatenate(([0], np.cumsum(loads[1:] != loads[:-1])))
        scale = int(max(ranks.max(), new_ranks.max())) + 1
        at[tie] = np.searchsorted(run * scale + ranks, run[inside[tie]] * scale + new_ranks[tie])
    size = len(ranks) + len(new_ranks)
    place = at + np.arange(len(new_ranks))
    rest = np.ones(size, dtype=bool)
    rest[place] = False
    merged_ranks, merged_loads = np.empty(size, dtype=ranks.dtype), np.empty(size)
    merged_ranks[place], merged_loads[place] = new_ranks, new_loads
    merged_ranks[rest], merged_loads[rest] = ranks, loads
    return merged_ranks, merged_loads
