"""Expert placement for every MoE layer at once (numpy), and which layers' moves are worth making.

`place_layers` is `experts.place_experts` (global, not hierarchical) vectorised over layers: the same replication
(spare slots to the most load per replica, ties to the lower expert), the same packing (replicas heaviest first,
ties to the lower expert, onto the least-loaded rank with a free slot that does not hold the expert yet, ties to
the lower rank) and the same greedy `keep_in_place` relabelling, so it gives the same placements; a layer where
the greedy packing paints itself into a corner (rare) is re-planned by `place_experts` itself. Replication and
packing are `packing.py`'s (every layer at once, the cheaper of two exact ways at the size): 58 layers × 256
experts in milliseconds on 64 ranks, in a fraction of a second on 10,240.

A placement is held as a boolean array `holds[layer, rank, expert]` (the bus schema allows an expert once per
rank, so that is all a placement says).

`choose_layers`: moves of different layers are received in parallel over each rank's link, so their cost is not
the sum of the layers' costs but the busiest rank's total. Layers are taken by predicted gain, largest first, and
the prefix whose gain over the steps until the next plan exceeds its joint migration time by the most is moved
(none when no prefix pays), and with it every further layer whose receivers stay under that prefix's busiest
rank (free); every other layer keeps its current placement.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice

import numpy as np
from numpy.typing import NDArray

from .experts import place_experts
from .packing import pack, replicate
from .relabel import held_slots, keep_in_place, nonzero_3d

Floats = NDArray[np.float64]
Bools = NDArray[np.bool_]
Ints = NDArray[np.int64]


def holdings(placement: Sequence[Sequence[Sequence[int]]], ranks: int, experts: int) -> Bools:
    """(layers, ranks, experts) from the bus form (per layer, per expert, the ranks holding it)."""
    holds = np.zeros((len(placement), ranks, experts), dtype=bool)
    per_expert = [len(holders) for replicas in placement for holders in replicas]
    if len(per_expert) != len(placement) * experts:
        raise ValueError(f"a placement of {len(per_expert)} experts' holders for {len(placement)} × {experts}")
    flat = np.arange(len(per_expert)).repeat(per_expert)
    rank_index = [rank for replicas in placement for holders in replicas for rank in holders]
    holds[flat // experts, rank_index, flat % experts] = True
    return holds


def replicas_of(holds: Bools) -> list[list[list[int]]]:
    """The bus form of `holds`: per layer, per expert, its ranks ascending."""
    layers, _, experts = holds.shape
    by_expert = holds.transpose(0, 2, 1)
    ranks = iter(nonzero_3d(by_expert)[2].tolist())
    flat = [list(islice(ranks, count)) for count in by_expert.sum(axis=2).ravel().tolist()]
    return [flat[layer * experts : (layer + 1) * experts] for layer in range(layers)]


def rank_loads(holds: Bools, loads: Floats) -> Floats:
    """(layers, ranks): tokens each rank computes when an expert's load is split evenly over its replicas."""
    copies = holds.sum(axis=1)
    per_replica = np.divide(loads, copies, out=np.zeros_like(loads), where=copies > 0)
    result: Floats = np.einsum("lre,le->lr", holds, per_replica)
    return result


def received(current: Bools, proposed: Bools) -> Ints:
    """(layers, ranks): experts each rank must receive to go from `current` to `proposed`."""
    result: Ints = (proposed & ~current).sum(axis=2, dtype=np.int64)
    return result


def place_layers(
    expert_loads: Floats, ep_ranks: int, *, redundant_slots: int = 0, current: Bools | None = None
) -> Bools:
    """EPLB's global placement of every layer of `expert_loads` (layers, experts) over `ep_ranks` ranks with
    `redundant_slots` spare slots per layer; with `current` (layers, ranks, experts), ranks relabelled to keep
    replicas in place. Equal to `place_experts` layer by layer."""
    loads = np.asarray(expert_loads, dtype=np.float64)
    layers, experts = loads.shape
    slots = experts + redundant_slots
    if ep_ranks < 1 or slots % ep_ranks:
        raise ValueError(f"{experts} experts + {redundant_slots} spare slots do not fill {ep_ranks} ranks equally")
    if layers == 0:
        return np.zeros((0, ep_ranks, experts), dtype=bool)
    holds, stuck = pack(loads, replicate(loads, slots, ep_ranks), ep_ranks)
    if current is not None:
        holds = keep_in_place(holds, current)
    for layer in np.flatnonzero(stuck).tolist():
        now = replicas_of(current[layer : layer + 1])[0] if current is not None else None
        placed = place_experts(loads[layer].tolist(), ep_ranks, redundant_slots=redundant_slots, current=now)
        holds[layer] = holdings([placed.replicas()], ep_ranks, experts)[0]
    return holds


def choose_layers(
    gain_seconds: Floats, received_experts: Ints, seconds_per_expert: float, steps_until_next_plan: int
) -> Bools:
    """Which layers to move: `gain_seconds` (layers,) the step time each layer's move saves, `received_experts`
    (layers, ranks) what each rank receives for it. The prefix (by gain, largest first) whose saving until the
    next plan beats its joint migration time (the busiest rank's received experts × `seconds_per_expert`) by the
    most, plus the other layers (by gain) whose moves fit under that prefix's busiest rank without raising it (they
    take no extra time); a layer with no gain is never moved."""
    gains = np.asarray(gain_seconds, dtype=np.float64)
    chosen = np.zeros(len(gains), dtype=bool)
    order = np.argsort(-gains, kind="stable")
    order = order[gains[order] > 0]
    if len(order) == 0:
        return chosen
    saved = np.cumsum(gains[order]) * steps_until_next_plan
    cost = np.cumsum(received_experts[order], axis=0).max(axis=1) * seconds_per_expert
    net = saved - cost
    best = int(np.argmax(net))
    if net[best] <= 0:
        return chosen
    chosen[order[: best + 1]] = True
    # Then any other layer whose move fits under the busiest rank's load as it stands: it costs no extra time.
    load = received_experts[order[: best + 1]].sum(axis=0)
    ceiling = load.max()
    for layer in order[best + 1 :].tolist():
        if (load + received_experts[layer]).max() <= ceiling:
            load = load + received_experts[layer]
            chosen[layer] = True
    return chosen


def repair_layers(
    expert_loads: Floats, current: Bools, *, max_swaps: int = 32, min_improvement: float = 0.0, partners: int = 8
) -> Bools:
    """A cheap alternative to re-placing: `current` improved by swaps, every layer at once. Each swap exchanges
    one replica of the busiest rank for one of another rank (or moves it into a free slot there), trying the
    `partners` least-loaded ranks: of all such pairs, the one that leaves the busier of the two ranks lightest,
    and only when that is below the busiest;
    a layer stops when no swap lowers it by `min_improvement` of the mean rank load (a transfer for less is not
    worth it), or after `max_swaps`. Replica counts stay as they are, and each swap makes
    two ranks receive one expert: a drifting layer gets most of a new packing's balance for a few transfers."""
    loads = np.asarray(expert_loads, dtype=np.float64)
    holds = current.copy()
    layers, ranks, experts = holds.shape
    if layers == 0:
        return holds
    copies = np.maximum(holds.sum(axis=1), 1)
    weight = np.concatenate([loads / copies, np.zeros((layers, 1))], axis=1)  # the last column: a free slot
    slots = held_slots(holds)
    per_rank = slots.shape[2]
    holds = np.concatenate([holds, np.zeros((layers, ranks, 1), dtype=bool)], axis=2)  # a free slot holds nothing
    live = np.ones(layers, dtype=bool)
    count = min(partners, ranks)
    for _ in range(max_swaps):
        at = np.flatnonzero(live)  # the layers still improving
        if len(at) == 0:
            break
        here = np.arange(len(at))
        held = slots[at]  # (live layers, ranks, slots)
        weights = weight[at[:, None, None], held]
        load = weights.sum(axis=2)
        busy = np.argmax(load, axis=1)
        give = held[here, busy]  # (live layers, slots)
        # The lightest ranks are the partners worth trying (the busiest among them fails the test below).
        near = np.sort(np.argpartition(load, count - 1, axis=1)[:, :count], axis=1) if count < ranks else None
        their = held if near is None else np.take_along_axis(held, near[:, :, None], axis=1)
        their_weights = weights if near is None else np.take_along_axis(weights, near[:, :, None], axis=1)
        their_load = load if near is None else np.take_along_axis(load, near, axis=1)
        # Every pair (a replica of the busiest rank, a slot of a partner): the loads after exchanging them.
        delta = weights[here, busy][:, :, None, None] - their_weights[:, None, :, :]  # (layer, slot, partner, slot)
        pair_max = np.maximum(load[here, busy][:, None, None, None] - delta, their_load[:, None, :, None] + delta)
        their_holds = holds[at[:, None], :, give]  # (layer, slot, rank): does the rank hold that replica's expert
        if near is not None:
            their_holds = np.take_along_axis(their_holds, near[:, None, :], axis=2)
        allowed = (
            (give < experts)[:, :, None, None]
            & ~their_holds[:, :, :, None]  # the partner must not hold it already
            & ~holds[at[:, None, None], busy[:, None, None], their][:, None, :, :]  # nor the busiest its swap
            & (delta > 0)
        )
        pair_max = np.where(allowed, pair_max, np.inf).reshape(len(at), -1)
        best = np.argmin(pair_max, axis=1)
        improves = pair_max[here, best] < load[here, busy] - min_improvement * load.mean(axis=1)
        live[at[~improves]] = False
        at, here, busy, give, best = at[improves], here[improves], busy[improves], give[improves], best[improves]
        i, partner, j = np.unravel_index(best, (per_rank, count, per_rank))
        here = np.arange(len(at))
        other = partner if near is None else near[improves][here, partner]
        moved_out, moved_in = give[here, i], held[improves][here, other, j]
        holds[at, busy, moved_out] = False
        holds[at, other, moved_out] = True
        holds[at, other, moved_in] = False  # a free slot's column `experts` stays False: set below
        holds[at, busy, moved_in] = moved_in < experts
        slots[at, busy, i] = moved_in
        slots[at, other, j] = moved_out
    repaired: Bools = holds[:, :, :experts]
    return repaired


def cheapest_worthwhile(
    expert_loads: Floats,
    current: Bools,
    candidates: Sequence[Bools],
    *,
    seconds_per_token: float,
    seconds_per_expert: float,
    steps_until_next_plan: int,
) -> tuple[Bools, Floats, Ints]:
    """Per layer, the candidate placement worth the most on its own: its step-time gain (the drop of the layer's
    busiest rank, × `seconds_per_token`) over the steps until the next plan, less its own migration time (even
    when that is negative: moves of several layers run in parallel, `choose_layers` judges them together).
    Returns the chosen placements, their gains in seconds per step and what each rank receives for them (the
    inputs of `choose_layers`); on a tie the earlier candidate."""
    loads = np.asarray(expert_loads, dtype=np.float64)
    before = rank_loads(current, loads).max(axis=1)
    best_value = np.full(len(loads), -np.inf)
    chosen, gains, receives = current.copy(), np.zeros(len(loads)), np.zeros(current.shape[:2], dtype=np.int64)
    for candidate in candidates:
        gain = (before - rank_loads(candidate, loads).max(axis=1)) * seconds_per_token
        receive = received(current, candidate)
        value = gain * steps_until_next_plan - receive.max(axis=1) * seconds_per_expert
        better = value > best_value
        best_value = np.where(better, value, best_value)
        chosen[better], gains[better], receives[better] = candidate[better], gain[better], receive[better]
    return chosen, gains, receives


def plan_layers(
    expert_loads: Floats,
    current: Bools,
    *,
    redundant_slots: int,
    seconds_per_token: float,
    seconds_per_expert: float,
    steps_until_next_plan: int,
) -> tuple[Bools, Floats]:
    """One round of expert placement for every layer: per layer a fresh EPLB placement (ranks kept in place) or
    the current one repaired by swaps, whichever is worth more after its move (`cheapest_worthwhile`), then the
    layers worth moving together (`choose_layers`); the others keep `current`. Returns the new placement and
    each layer's gain in seconds per step (0 for the layers kept)."""
    loads = np.asarray(expert_loads, dtype=np.float64)
    fresh = place_layers(loads, current.shape[1], redundant_slots=redundant_slots, current=current)
    proposed, gain, receive = cheapest_worthwhile(
        loads,
        current,
        [repair_layers(loads, current), fresh],
        seconds_per_token=seconds_per_token,
        seconds_per_expert=seconds_per_expert,
        steps_until_next_plan=steps_until_next_plan,
    )
    moved = choose_layers(gain, receive, seconds_per_expert, steps_until_next_plan)
    placed: Bools = np.where(moved[:, None, None], proposed, current)
    kept_gain: Floats = np.where(moved, gain, 0.0)
    return placed, kept_gain
