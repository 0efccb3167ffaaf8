"""Ranks relabelled so that a new placement keeps experts where they are (EPLB's `keep_in_place`, every layer at
once): a fresh packing numbers its ranks arbitrarily; matched to the current placement's ranks by the experts they
share, most moves become no moves. Two ways with the same result: every pair of ranks at once (dense, for up to a
few hundred ranks) and rank by rank over the experts they hold (sparse: at 10,240 ranks the pairs took 48 GB).
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
from numpy.typing import NDArray

Bools = NDArray[np.bool_]
Ints = NDArray[np.int64]


def nonzero_3d(array: Bools) -> tuple[Ints, ...]:
    """`np.nonzero` of a 3-D array (a view too), in the same order: numpy's own is several times slower there than
    the flat search, a third of a planning round at 10,240 GPUs before this."""
    found: tuple[Ints, ...] = np.unravel_index(np.flatnonzero(array), array.shape)
    return found


def held_slots(holds: Bools) -> Ints:
    """(layers, ranks, most experts a rank holds): each rank's experts ascending, padded with `experts`."""
    layers, ranks, experts = holds.shape
    layer, rank, expert = nonzero_3d(holds)
    group = layer * ranks + rank
    sizes = np.bincount(group, minlength=layers * ranks)
    position = np.arange(len(group)) - (np.cumsum(sizes) - sizes)[group]
    slots = np.full((layers, ranks, int(sizes.max(initial=1))), experts, dtype=np.int64)
    slots[layer, rank, position] = expert
    return slots


def _overlap(holds: Bools, current: Bools) -> Ints:
    """(layers, new rank, old rank): experts a rank of `holds` shares with a rank of `current`. A join of the
    two placements' (layer, expert) holders (a few per expert), counted with one bincount: no dense product."""
    layers, ranks, experts = holds.shape
    new_layer, new_expert, new_rank = nonzero_3d(holds.transpose(0, 2, 1))  # sorted by (layer, expert)
    old_count = current.sum(axis=1).ravel()  # per (layer, expert)
    old_rank = nonzero_3d(current.transpose(0, 2, 1))[2]
    old_start = np.cumsum(old_count) - old_count
    group = new_layer * experts + new_expert
    pairs = old_count[group]  # per new holder, the old holders of its expert
    which = np.repeat(np.arange(len(group)), pairs)
    within = np.arange(int(pairs.sum())) - np.repeat(np.cumsum(pairs) - pairs, pairs)
    flat = (new_layer[which] * ranks + new_rank[which]) * ranks + old_rank[old_start[group[which]] + within]
    overlap: Ints = np.bincount(flat, minlength=layers * ranks * ranks).reshape(layers, ranks, ranks)
    return overlap


KEEP_IN_PLACE_DENSE_MAX_CELLS = 1 << 24
"""layers × ranks² up to which `keep_in_place` compares every pair of ranks at once (`_keep_dense`: arrays of
that many cells, 16 bytes each); above (48 GB at 10,240 ranks), rank by rank over the experts they hold
(`_keep_sparse`)."""


def keep_in_place(holds: Bools, current: Bools) -> Bools:
    """`experts.keep_in_place` with one block, every layer at once, with the same result: new ranks relabelled
    so that they keep as many of the experts the old ranks hold as the greedy finds (pairs of a new and an old
    rank by experts shared, most first, ties to the lower new_rank · ranks + old_rank, each rank in one pair),
    the rest in order."""
    layers, ranks, _ = holds.shape
    if layers * ranks * ranks <= KEEP_IN_PLACE_DENSE_MAX_CELLS:
        label = _keep_dense(holds, current)
    elif (holds.sum(axis=2) == 1).all() and (current.sum(axis=2) == 1).all():
        label = _keep_one_each(holds, current)
    else:
        label = np.array(
            [_keep_sparse(new, old) for new, old in zip(_held_sets(holds), _held_sets(current), strict=True)]
        )
    label = _labels_for_the_rest(label)
    relabelled = np.empty_like(holds)
    relabelled[np.arange(layers)[:, None], label] = holds
    return relabelled


def _keep_dense(holds: Bools, current: Bools) -> Ints:
    """(layers, new rank): the old rank each new rank takes the place of, or -1 (left to the rest).

    The sequential greedy takes pairs (new rank, old rank) by overlap, largest first, ties to the lower
    new_rank · ranks + old_rank, skipping pairs whose new or old rank is taken. A pair that comes first among the
    remaining pairs of both its row and its column is taken by it whatever happens before, so each round takes
    all such pairs at once (a few rounds instead of one a rank)."""
    layers, ranks, _ = holds.shape
    overlap = _overlap(holds, current)
    key = np.arange(ranks * ranks, dtype=np.int64).reshape(ranks, ranks)
    score = np.where(overlap > 0, overlap * ranks * ranks - key, -1).astype(np.int32)  # unique, > 0 if shared
    label = np.full((layers, ranks), -1, dtype=np.int64)
    columns = np.arange(ranks)[None, :]
    at = np.arange(layers)  # the layers with pairs left to take
    while len(at):
        part = score[at]
        best_old = np.argmax(part, axis=2)  # (layers, new rank)
        best_new = np.argmax(part, axis=1)  # (layers, old rank)
        taken = (np.take_along_axis(part, best_old[:, :, None], axis=2)[:, :, 0] > 0) & (
            np.take_along_axis(best_new, best_old, axis=1) == columns
        )
        layer_index, new_rank = np.nonzero(taken)
        old_rank = best_old[layer_index, new_rank]
        layer_index = at[layer_index]
        label[layer_index, new_rank] = old_rank
        score[layer_index, new_rank, :] = -1
        score[layer_index, :, old_rank] = -1
        at = at[taken.any(axis=1)]
    return label


def _keep_one_each(holds: Bools, current: Bools) -> Ints:
    """`_keep_sparse` where every rank holds one expert in both placements (as many slots as ranks: 10,240 ranks
    with 256 experts), every layer at once: a pair shares that expert or nothing, so an expert's new holders
    ascending take its old holders ascending, one each, as far as both go (the greedy's order, and no pair of
    one expert can take a rank another expert's pairs need). Ranks' experts by argmax, holders by a stable sort
    per layer: no pass over the (layers, experts, ranks) transpose."""
    layers, ranks, experts = holds.shape
    rows = np.arange(layers)[:, None]
    new_expert, old_expert = holds.argmax(axis=2), current.argmax(axis=2)  # (layers, ranks)
    new_order = np.argsort(new_expert, axis=1, kind="stable")  # ranks by (expert, rank)
    old_order = np.argsort(old_expert, axis=1, kind="stable")
    new_sorted = np.take_along_axis(new_expert, new_order, axis=1)
    starts = np.arange(experts)[None, :]
    new_start = np.stack([np.searchsorted(new_sorted[layer], starts[0]) for layer in range(layers)])
    old_sorted = np.take_along_axis(old_expert, old_order, axis=1)
    old_start = np.stack([np.searchsorted(old_sorted[layer], starts[0]) for layer in range(layers)])
    old_count = np.diff(old_start, axis=1, append=ranks)  # (layers, experts)
    position = np.arange(ranks)[None, :] - np.take_along_axis(new_start, new_sorted, axis=1)  # among its holders
    kept = position < np.take_along_axis(old_count, new_sorted, axis=1)
    at = np.take_along_axis(old_start, new_sorted, axis=1) + position
    label = np.full((layers, ranks), -1, dtype=np.int64)
    layer_index = np.broadcast_to(rows, kept.shape)[kept]
    label[layer_index, new_order[kept]] = old_order[layer_index, at[kept]]
    return label


def _held_sets(holds: Bools) -> list[list[tuple[int, ...]]]:
    """Per layer, per rank, the experts it holds ascending."""
    experts = holds.shape[2]
    return [[tuple(e for e in row if e < experts) for row in layer] for layer in held_slots(holds).tolist()]


def _keep_sparse(new_sets: list[tuple[int, ...]], old_sets: list[tuple[int, ...]]) -> list[int]:
    """`_keep_dense` for one layer without the ranks × ranks pairs: the same greedy, one overlap at a time.

    With overlap v, the pairs left come in order of new rank, then old rank; a new rank still free when its
    pairs come takes the lowest free old rank it shares v experts with. Any free pair shares at most v (one that
    shared more would have been taken at its overlap), so that is the lowest free old rank holding one of the
    new rank's v-subsets of experts: per subset, its holders ascending, a pointer past the taken ones."""
    ranks = len(new_sets)
    label = [-1] * ranks
    old_taken = [False] * ranks
    for shared in range(max(map(len, new_sets), default=0), 0, -1):
        holders: dict[tuple[int, ...], list[int]] = {}
        for old, experts in enumerate(old_sets):
            if not old_taken[old]:
                for subset in combinations(experts, shared):
                    holders.setdefault(subset, []).append(old)
        seen = dict.fromkeys(holders, 0)
        for new, experts in enumerate(new_sets):
            if label[new] >= 0:
                continue
            best = ranks
            for subset in combinations(experts, shared):
                candidates = holders.get(subset)
                if candidates is None:
                    continue
                at = seen[subset]
                while at < len(candidates) and old_taken[candidates[at]]:
                    at += 1
                seen[subset] = at
                if at < len(candidates) and candidates[at] < best:
                    best = candidates[at]
            if best < ranks:
                label[new], old_taken[best] = best, True
    return label


def _labels_for_the_rest(label: Ints) -> Ints:
    """`label` with its -1s filled: the unlabelled new ranks ascending onto the free old ranks ascending."""
    layers, ranks = label.shape
    label = label.copy()
    used = np.zeros((layers, ranks), dtype=bool)
    labelled = label >= 0
    used[np.nonzero(labelled)[0], label[labelled]] = True
    unlabelled_first = np.argsort(labelled, axis=1, kind="stable")
    free_first = np.argsort(used, axis=1, kind="stable")
    fill = np.arange(ranks)[None, :] < (~labelled).sum(axis=1, keepdims=True)
    rows = np.broadcast_to(np.arange(layers)[:, None], fill.shape)
    label[rows[fill], unlabelled_first[fill]] = free_first[fill]
    return label
