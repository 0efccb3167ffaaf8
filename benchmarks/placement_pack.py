"""EPLB's replication and packing at 10,240 EP ranks: `place_layers`' steps as they are (`packing.replicate`,
`packing.pack`: by threshold and one expert at a time at this size) against the slot-at-a-time versions they
replaced (`_replicate_by_slot`, `_pack_by_slot`, which still serve small sizes), in the same process on the same
loads, with the placements compared.

    .venv/bin/python benchmarks/placement_pack.py                    # 58 layers x 256 experts, 10,240 ranks
    .venv/bin/python benchmarks/placement_pack.py --old-layers 4     # the old way on 4 layers, scaled to all
    .venv/bin/python benchmarks/placement_pack.py --round-only       # only the planning rounds (below)
    .venv/bin/python benchmarks/placement_pack.py --relabel-only --relabel-old-layers 1   # keep_in_place (below)

`relabel.keep_in_place` (a fresh placement's ranks matched to the current one's, `place_layers(current=...)`) is
timed at `--relabel-ranks`: the way it takes at the size (rank by rank above a few hundred ranks) on every layer,
against the dense pairs (`_keep_dense`, what it was at every size) on `--relabel-old-layers` layers of the same
placements, scaled to all, with the labels compared; the dense way is not run above `--relabel-old-max-ranks`
unless asked (its (layers, ranks, ranks) arrays: 48 GB for 58 layers at 10,240 ranks, and minutes a layer).

A whole planning round (`placement.plan_layers`: a fresh placement with ranks relabelled to keep experts in place,
the current one repaired by swaps, the layers worth moving) is timed too, from a placement of drifted loads, at
`--round-ranks`: the EP sizes the product can run with 256 experts (E / EP whole: up to 256) with one spare slot
per rank, and beyond (`--round-ranks 10240`) one slot per rank.

Loads: Zipf(1.5) token counts per expert, seeded. Times are process CPU seconds (the machine is shared) and wall
seconds, the best of `--repeats` for the new way, one run for the old. With `--old-layers` the old way runs on
that many layers and its time is scaled by layers / old-layers (its work is a loop over the slots of a numpy
call over every layer, so it grows with the layers), and only those layers are compared.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from moeops.rebalancer.packing import Bools, Floats, _pack_by_slot, _replicate_by_slot, pack, replicate
from moeops.rebalancer.placement import place_layers, plan_layers
from moeops.rebalancer.relabel import _keep_dense, _labels_for_the_rest, keep_in_place


def _timed(
    way: Callable[[Floats, int, int], Bools], loads: Floats, ranks: int, slots: int
) -> tuple[Bools, float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    result = way(loads, ranks, slots)
    return result, time.process_time() - cpu, time.perf_counter() - wall


def new_way(loads: Floats, ranks: int, slots: int) -> Bools:
    return pack(loads, replicate(loads, slots, ranks), ranks)[0]


def old_way(loads: Floats, ranks: int, slots: int) -> Bools:
    return _pack_by_slot(loads, _replicate_by_slot(loads, slots, ranks), ranks)[0]


def planning_rounds(loads: Floats, ranks: int, repeats: int, seed: int) -> list[float]:
    """CPU seconds of `plan_layers` for drifted loads from their placement, one spare slot per rank (beyond as
    many ranks as experts: one slot per rank, the experts' replicas filling them)."""
    spare = ranks if ranks <= loads.shape[1] else ranks - loads.shape[1]
    current = place_layers(loads, ranks, redundant_slots=spare)
    drifted = loads * np.exp(np.random.default_rng(seed + 1).normal(0.0, 0.3, loads.shape))
    times = []
    for _ in range(repeats):
        cpu = time.process_time()
        plan_layers(drifted, current, redundant_slots=spare, seconds_per_token=1e-6, seconds_per_expert=0.014,
                    steps_until_next_plan=50)  # fmt: skip
        times.append(time.process_time() - cpu)
    return times


def relabel_rounds(loads: Floats, ranks: int, per_rank: int, old_layers: int, seed: int) -> str:
    """One markdown row: `keep_in_place` of drifted loads' fresh placement onto their placement, all layers, and
    the dense way on `old_layers` layers (0: not run), scaled."""
    experts = loads.shape[1]
    spare = per_rank * ranks - experts
    current = place_layers(loads, ranks, redundant_slots=spare)
    drifted = loads * np.exp(np.random.default_rng(seed + 1).normal(0.0, 0.3, loads.shape))
    fresh = place_layers(drifted, ranks, redundant_slots=spare)
    cpu, wall = time.process_time(), time.perf_counter()
    kept = keep_in_place(fresh, current)
    new_cpu, new_wall = time.process_time() - cpu, time.perf_counter() - wall
    moved = f"{int((kept & ~current).sum()):,} of {int((fresh & ~current).sum()):,}"
    if not old_layers:
        return f"| {ranks:,} | {per_rank} | {new_cpu:.2f} | {new_wall:.2f} | not run | | {moved} |"
    cpu = time.process_time()
    label = _labels_for_the_rest(_keep_dense(fresh[:old_layers], current[:old_layers]))
    old_cpu = (time.process_time() - cpu) * len(loads) / old_layers
    dense = np.empty_like(fresh[:old_layers])
    dense[np.arange(old_layers)[:, None], label] = fresh[:old_layers]
    assert (dense == kept[:old_layers]).all(), "the relabellings differ"
    ratio = f"{old_cpu / new_cpu:.0f}x"
    return f"| {ranks:,} | {per_rank} | {new_cpu:.2f} | {new_wall:.2f} | {old_cpu:.1f} | {ratio} | {moved} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=10240)
    parser.add_argument("--experts", type=int, default=256)
    parser.add_argument("--layers", type=int, default=58)
    parser.add_argument("--slots-per-rank", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--old-layers", type=int, default=None, help="run the old way on this many layers")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--round-ranks", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--round-only", action="store_true")
    parser.add_argument("--relabel-ranks", type=int, nargs="+", default=[1024, 10240])
    parser.add_argument("--relabel-old-layers", type=int, default=0, help="run the dense way on this many layers")
    parser.add_argument("--relabel-old-max-ranks", type=int, default=2048)
    parser.add_argument("--relabel-only", action="store_true")
    args = parser.parse_args()
    loads = np.random.default_rng(args.seed).zipf(1.5, size=(args.layers, args.experts)).astype(np.float64)
    print(
        f"keep_in_place, {args.layers} layers x {args.experts} experts; dense way on {args.relabel_old_layers} layers"
    )
    print("| EP ranks | slots per rank | cpu s | wall s | dense cpu s (all layers) | ratio (cpu) | moved / fresh |")
    print("|---|---|---|---|---|---|---|")
    for ranks in args.relabel_ranks:
        old = args.relabel_old_layers if ranks <= args.relabel_old_max_ranks else 0
        for per_rank in args.slots_per_rank:
            print(relabel_rounds(loads, ranks, per_rank, old, args.seed), flush=True)
    if args.relabel_only:
        return
    for ranks in args.round_ranks:
        times = ", ".join(f"{seconds:.3f}" for seconds in planning_rounds(loads, ranks, args.repeats, args.seed))
        slots = args.experts // ranks + 1 if ranks <= args.experts else 1
        print(f"planning round, {ranks} EP ranks x {slots} slots: cpu s {times}", flush=True)
    if args.round_only:
        return
    old_layers = args.old_layers or args.layers
    print(f"{args.layers} layers x {args.experts} experts over {args.ranks} EP ranks; old way on {old_layers} layers")
    print(
        "| slots per rank | new cpu s | new wall s | old cpu s (all layers) | old wall s (all layers) | ratio (cpu) |"
    )
    print("|---|---|---|---|---|---|")
    for per_rank in args.slots_per_rank:
        slots = per_rank * args.ranks
        runs = [_timed(new_way, loads, args.ranks, slots) for _ in range(args.repeats)]
        new, new_cpu, new_wall = runs[0][0], min(run[1] for run in runs), min(run[2] for run in runs)
        old, old_cpu, old_wall = _timed(old_way, loads[:old_layers], args.ranks, slots)
        assert (old == new[:old_layers]).all(), "the placements differ"
        scale = args.layers / old_layers
        print(f"| {per_rank} | {new_cpu:.3f} | {new_wall:.3f} | {old_cpu * scale:.1f} | {old_wall * scale:.1f} |"
              f" {old_cpu * scale / new_cpu:.0f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
