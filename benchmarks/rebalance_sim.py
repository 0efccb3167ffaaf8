"""Rebalancer simulation: utilization of a drifting, heterogeneous MoE training cluster under three policies
(and ours without its migration gate), against two oracles (`rebalance_oracle.py`).

On the same seeded trace (`rebalance_trace.py`: GPU speeds with 20% stragglers at 0.6× that move, Zipf expert
popularity that drifts, per-step batch noise), every `--interval` steps each policy re-plans from what it has
measured so far, and its plan is judged on the steps after it (never on the loads it was planned from):
- none: an even data split, experts contiguous (256 / EP per GPU), no spare slot; never re-planned.
- EPLB: `rebalance_eplb.py`, one spare slot per GPU, planned from the mean of the last `--interval` steps'
  expert loads. It ignores GPU speeds and keeps the even data split.
- ours: `moeops.rebalancer`: data shares over the EP groups (`plan_group_shares`; `--per-gpu-shares`:
  `plan_data_shares` with each GPU's expert work fixed) from speeds smoothed with a damped trend and an adaptive
  rate (`load.track`), planned for the slowest each GPU is forecast to be while the plan runs, through the
  `Hysteresis`, every `--shares-interval` steps; and every `--interval` steps expert placement for every layer at
  once (`placement.plan_layers`, one spare slot per GPU) from EWMA expert loads: per layer a fresh EPLB placement
  with ranks kept in place or the current one repaired by a few swaps, and only the layers whose moves, received
  in parallel, save more step time until the next plan than they take (EPLB and ours pay their moves' time in
  the step after the plan); "ours, no gate" adopts every placement.

    .venv/bin/python benchmarks/rebalance_sim.py                       # 128, 1,024 and 10,240 GPUs
    .venv/bin/python benchmarks/rebalance_sim.py --quick               # a smoke run
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from moeops.rebalancer.data_shares import even_split, plan_data_shares
from moeops.rebalancer.experts import place_experts
from moeops.rebalancer.group_shares import plan_group_shares
from moeops.rebalancer.load import DEFAULT_ERROR_SMOOTHING as ERROR_SMOOTHING
from moeops.rebalancer.load import (
    DEFAULT_SMOOTHING,
    DEFAULT_TREND_DAMPING,
    DEFAULT_TREND_SMOOTHING,
    ewma,
    forecast,
    track,
)
from moeops.rebalancer.placement import holdings, place_layers, plan_layers, rank_loads
from moeops.rebalancer.policy import Hysteresis, Verdict
from rebalance_eplb import eplb_place
from rebalance_oracle import Oracle
from rebalance_trace import Config, Floats, Ints, Judged, Layout, Trace, contiguous, judge, migration_cost


@dataclass
class Policy:
    name: str
    config: Config
    layout: Layout
    pending_migration_s: float = 0.0
    plan_seconds: list[float] = field(default_factory=list)

    def prepare(self, speeds: Floats, popularity: Floats) -> None:
        """Only the oracle (`rebalance_oracle.py`) sees a step before it runs."""

    def observe(self, judged: Judged) -> None:
        """Fold in what the workers measured this step."""

    def plan(self, step: int) -> None:
        """Re-plan at the end of `step`; the new layout runs from the next step."""

    def switch(self, layout: Layout) -> None:
        self.pending_migration_s = migration_cost(self.config, self.layout.slots, layout.slots)
        self.layout = layout


class Eplb(Policy):
    def __init__(self, config: Config, layout: Layout, interval: int) -> None:
        super().__init__("EPLB", config, layout)
        self.window: deque[Floats] = deque(maxlen=interval)

    def observe(self, judged: Judged) -> None:
        self.window.append(judged.expert_tokens)

    def plan(self, step: int) -> None:
        loads = np.mean(np.stack(list(self.window)), axis=0)
        self.switch(replace(self.layout, slots=eplb_place(loads, self.config.ep, self.config.ep)))


class Ours(Policy):
    """The planner knows the model's cost of a sequence's dense work and of an expert token (from the
    architecture, in FLOPs), not the GPUs' speeds: it estimates each GPU's speed as the work it was given over
    the compute seconds it reported, and its expert work from the all-reduced expert counts and the placement.
    Speeds are smoothed with a damped trend and an adaptive rate (`load.track`) and planned for the slowest
    each GPU is forecast to be while the plan runs (`Hysteresis.forecast_steps`); `trend_smoothing=0` is the
    plain EWMA of before. Experts: `placement.plan_layers`, as `replan.expert_part` plans them."""

    def __init__(self, config: Config, layout: Layout, interval: int, *, gate: bool = True, spare: int = 1,
                 nodes: int = 1, trend_smoothing: float = DEFAULT_TREND_SMOOTHING,
                 trend_damping: float = DEFAULT_TREND_DAMPING, shares_interval: int | None = None,
                 group_shares: bool = True) -> None:  # fmt: skip
        super().__init__("ours" if gate else "ours, no gate", config, layout)
        self.group_shares = group_shares
        self.interval, self.gate, self.spare, self.nodes = interval, gate, spare, nodes
        self.shares_interval = shares_interval or interval
        self.trend_smoothing, self.trend_damping = trend_smoothing, trend_damping
        # No trend: no adaptive rate either (the plain EWMA of before).
        self.error_smoothing = ERROR_SMOOTHING if trend_smoothing > 0 else 0.0
        # Plans here apply on the next step: an apply margin of 1.
        self.hysteresis = Hysteresis(min_gain=0.01, interval_steps=self.shares_interval, apply_margin_steps=1)
        self.speeds: Floats | None = None
        self.speed_trend: Floats = np.zeros(config.gpus)
        self.speed_error: Floats = np.zeros(config.gpus)
        self.speed_abs_error: Floats = np.zeros(config.gpus)
        self.expert_tokens: Floats | None = None
        self.last_applied: int | None = None
        self.shares_seconds: list[float] = []
        self.plan_done = self.plan_cpu_done = 0.0
        held = [[[e for e in rank if e < config.experts] for rank in layer] for layer in layout.slots.tolist()]
        self.holds = np.zeros((config.layers, config.ep, config.experts), dtype=bool)
        for layer, ranks in enumerate(held):
            for rank, experts in enumerate(ranks):
                self.holds[layer, rank, experts] = True

    def expert_seconds(self, rank_loads: Floats, sequences: Ints) -> Floats:
        """(G,) expert work at speed 1 from (ep,) global loads summed over layers: each group's part of them."""
        c = self.config
        group_part: Floats = sequences.reshape(c.groups, c.ep).sum(axis=1) / c.global_batch
        work: Floats = np.outer(group_part, rank_loads).ravel() * (c.expert_s / c.layers)
        return work

    def observe(self, judged: Judged) -> None:
        c, s = self.config, DEFAULT_SMOOTHING  # the same smoothing as `load.py`, over arrays
        tokens = judged.expert_tokens
        copies = np.maximum(self.layout.copies(c.experts), 1)
        per_replica = np.concatenate([tokens, np.zeros((c.layers, 1))], axis=1) / copies
        loads = per_replica[np.arange(c.layers)[:, None, None], self.layout.slots].sum(axis=(0, 2))
        work = self.layout.sequences * c.dense_s + self.expert_seconds(loads, self.layout.sequences)
        speeds = work / judged.compute_seconds
        if self.speeds is None:
            self.speeds = speeds
        else:
            self.speeds, self.speed_trend, self.speed_error, self.speed_abs_error = track(
                self.speeds, self.speed_trend, self.speed_error, self.speed_abs_error, speeds, smoothing=s,
                trend_smoothing=self.trend_smoothing, damping=self.trend_damping, error_smoothing=self.error_smoothing,
            )  # fmt: skip
        self.expert_tokens = tokens if self.expert_tokens is None else ewma(self.expert_tokens, tokens, s)  # type: ignore[arg-type,assignment]  # typed for floats; arrays broadcast

    def place(self, loads: Floats) -> Floats:
        """The new placement of every layer (`self.holds` updated); returns (ep,) loads summed over layers."""
        c = self.config
        if self.nodes > 1:  # hierarchical: the per-layer planner, ungated (the batched one is global only)
            replicas = [[np.flatnonzero(self.holds[layer, :, e]).tolist() for e in range(c.experts)]
                        for layer in range(c.layers)]  # fmt: skip
            placed = [
                place_experts(layer_loads, c.ep, redundant_slots=self.spare * c.ep, nodes=self.nodes, current=now)
                for layer_loads, now in zip(loads.tolist(), replicas, strict=True)
            ]
            self.holds = holdings([p.replicas() for p in placed], c.ep, c.experts)
        elif self.gate:  # the product's round: per layer fresh or repaired, gated together (`plan_layers`)
            self.holds, _ = plan_layers(
                loads,
                self.holds,
                redundant_slots=self.spare * c.ep,
                seconds_per_token=c.expert_s / c.layers / c.groups,  # global tokens → a group's seconds at speed 1
                seconds_per_expert=c.expert_bytes / c.link_bytes_per_s,
                steps_until_next_plan=self.interval,
            )
        else:
            self.holds = place_layers(loads, c.ep, redundant_slots=self.spare * c.ep, current=self.holds)
        total: Floats = rank_loads(self.holds, loads).sum(axis=0)
        return total

    def plan(self, step: int) -> None:
        """Experts, then data shares (`plan_shares`), every `interval` steps."""
        assert self.expert_tokens is not None
        started = time.perf_counter()
        self.plan_shares(step, self.place(self.expert_tokens))
        self.plan_seconds.append(self.plan_done - started)

    def plan_shares(self, step: int, rank_load: Floats | None = None) -> None:
        """Data shares alone (every `shares_interval` steps): cheap, and no weights move."""
        assert self.speeds is not None and self.expert_tokens is not None
        c = self.config
        if rank_load is None:
            rank_load = rank_loads(self.holds, self.expert_tokens).sum(axis=0)
        speeds = np.minimum.reduce([self.speeds, *(  # only slowdowns forecast, as `LoadSnapshot.throughput`
            forecast(self.speeds, self.speed_trend, self.trend_damping, ahead, self.speed_abs_error)
            for ahead in self.hysteresis.forecast_steps
        )])  # fmt: skip
        sequences, shares_started = self.layout.sequences, time.perf_counter()
        if self.group_shares:  # a GPU's expert seconds per sequence its EP group takes, at its forecast speed
            per_sequence = np.tile(rank_load, c.groups) * (c.expert_s / c.layers / c.global_batch) / speeds
            shares = plan_group_shares(speeds / c.dense_s, per_sequence, c.ep, c.global_batch, current=sequences)  # type: ignore[arg-type]
        else:
            fixed = self.expert_seconds(rank_load, sequences) / speeds
            shares = plan_data_shares(speeds / c.dense_s, c.global_batch, current=sequences, fixed_seconds=fixed)  # type: ignore[arg-type]
        verdict = self.hysteresis.verdict(
            current_step=step, last_applied_step=self.last_applied, predicted_gain=shares.predicted_gain
        )
        if verdict is Verdict.PLAN:
            sequences, self.last_applied = np.array(shares.sequences, dtype=np.int64), step
        self.shares_seconds.append(time.perf_counter() - shares_started)
        # What follows is the simulator's bookkeeping (the move's cost), not the planner's: not timed.
        self.plan_done, self.plan_cpu_done = time.perf_counter(), time.process_time()
        self.switch(Layout(sequences, self.slots()))

    def slots(self) -> Ints:
        """(layers, ep, slots) expert ids for the judge, `experts` in a rank's unused slots."""
        c = self.config
        per_rank = (c.experts + self.spare * c.ep) // c.ep
        ids = np.where(self.holds, np.arange(c.experts), c.experts)
        return np.sort(ids, axis=2)[:, :, :per_rank]


@dataclass
class Result:
    gpus: int
    utilization: dict[str, float]
    utilization_layer_sync: dict[str, float]
    imbalance: dict[str, float]
    worst_utilization: dict[str, float]
    plan_ms: list[float]
    shares_ms: list[float]


def simulate(config: Config, steps: int, interval: int, seed: int, *, spare: int = 1, nodes: int = 1,
             trend_smoothing: float = DEFAULT_TREND_SMOOTHING,
             trend_damping: float = DEFAULT_TREND_DAMPING, shares_interval: int | None = None,
             group_shares: bool = True, oracle: bool = True) -> Result:  # fmt: skip
    """`spare` (spare slots per GPU), `nodes` (hierarchical placement over that many nodes, ungated), the speed
    trend's smoothing and damping (`load.track`) and `shares_interval` (steps between data-share plans; default:
    with the experts, every `interval`) apply to ours; `oracle` adds the bound of `rebalance_oracle.py`."""
    trace = Trace(config, seed)
    even = np.array(even_split(config.global_batch, config.gpus), dtype=np.int64)
    options = {"spare": spare, "nodes": nodes, "trend_smoothing": trend_smoothing, "trend_damping": trend_damping,
               "shares_interval": shares_interval, "group_shares": group_shares}  # fmt: skip
    ours = Ours(config, Layout(even, contiguous(config, spare)), interval, **options)  # type: ignore[arg-type]
    policies: list[Policy] = [
        Policy("none", config, Layout(even, contiguous(config, 0))),
        Eplb(config, Layout(even, contiguous(config, 1)), interval),
        ours,
        Ours(config, Layout(even, contiguous(config, spare)), interval, gate=False, **options),  # type: ignore[arg-type]
    ]
    if oracle:
        for late in (False, True):
            policies.append(Oracle(config, Layout(even, contiguous(config, 1)), eplb_place, late=late))  # type: ignore[arg-type]
    seen: dict[str, list[Judged]] = {p.name: [] for p in policies}
    for step in range(steps):
        speeds, popularity = trace.step()
        for policy in policies:
            policy.prepare(speeds, popularity)
            judged = judge(config, policy.layout, speeds, popularity, policy.pending_migration_s)
            policy.pending_migration_s = 0.0
            policy.observe(judged)
            if step >= interval:  # from the step after the first plan on
                seen[policy.name].append(judged)
            if step + 1 >= steps:
                continue
            if (step + 1) % interval == 0:
                policy.plan(step)
            elif isinstance(policy, Ours) and step + 1 >= interval and (step + 1) % policy.shares_interval == 0:
                policy.plan_shares(step)
    return Result(
        gpus=config.gpus,
        utilization={n: statistics.fmean(j.utilization for j in js) for n, js in seen.items()},
        utilization_layer_sync={n: statistics.fmean(j.utilization_layer_sync for j in js) for n, js in seen.items()},
        imbalance={n: statistics.fmean(j.imbalance for j in js) for n, js in seen.items()},
        worst_utilization={n: min(j.utilization for j in js) for n, js in seen.items()},
        plan_ms=[1000 * s for s in ours.plan_seconds],
        shares_ms=[1000 * s for s in ours.shares_seconds],
    )


def time_planning_rounds(
    config: Config, interval: int, seed: int, rounds: int
) -> tuple[list[float], list[float], list[float]]:
    """ms of ours' planning round (wall), of its data-share part (wall) and of the round in this process's CPU
    time (what it costs without the other processes on the cores), the same round repeated on copies of one
    state: after `2 · interval` steps of the trace, one plan already made (the first moves away from the start)."""
    trace = Trace(config, seed)
    even = np.array(even_split(config.global_batch, config.gpus), dtype=np.int64)
    ours = Ours(config, Layout(even, contiguous(config, 1)), interval)
    for step in range(2 * interval):
        speeds, popularity = trace.step()
        ours.observe(judge(config, ours.layout, speeds, popularity, 0.0))
        if step == interval - 1:
            ours.plan(step)
    totals, shares, cpu = [], [], []
    for _ in range(rounds):
        trial = copy.deepcopy(ours)
        started = time.process_time()
        trial.plan(2 * interval - 1)
        cpu.append(1000 * (trial.plan_cpu_done - started))
        totals.append(1000 * trial.plan_seconds[-1])
        shares.append(1000 * trial.shares_seconds[-1])
    return totals, shares, cpu


def time_eplb_reference(repeats: int, seed: int) -> list[float]:
    """EPLB (this rewrite) on 58 layers × 256 experts over 32 GPUs, one spare slot per GPU: ms per call."""
    rng = np.random.default_rng(seed)
    loads = rng.zipf(1.5, size=(58, 256)).astype(np.float64)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        eplb_place(loads, 32, 32)
        times.append(1000 * (time.perf_counter() - started))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, nargs="+", default=[128, 1024, 10240])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--interval", type=int, default=10, help="steps between plans (EPLB and ours)")
    parser.add_argument("--shares-interval", type=int, default=None, help="ours: steps between data-share plans")
    parser.add_argument("--per-gpu-shares", action="store_true", help="ours: shares per GPU, expert work fixed")
    parser.add_argument("--layers", type=int, default=58, help="MoE layers (DeepSeek-V3: 58)")
    parser.add_argument("--ep", type=int, default=64, help="GPUs per EP group")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ours-spare", type=int, default=1, help="ours' spare slots per GPU (EPLB always has 1)")
    parser.add_argument("--ours-nodes", type=int, default=1, help="ours: hierarchical over this many nodes")
    parser.add_argument("--trend-smoothing", type=float, default=DEFAULT_TREND_SMOOTHING, help="ours (0: no trend)")
    parser.add_argument("--trend-damping", type=float, default=DEFAULT_TREND_DAMPING, help="ours")
    parser.add_argument("--straggler-turnover", type=float, default=Config.straggler_turnover, help="trace")
    parser.add_argument("--expert-gb", type=float, default=Config.expert_bytes / 1e9, help="bytes moved per expert")
    parser.add_argument("--timing-gpus", type=int, default=10240, help="GPUs of the planning-round timing")
    parser.add_argument("--timing-rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="smoke run: 128 GPUs, 8 layers, 40 steps")
    args = parser.parse_args()
    if args.quick:
        args.gpus, args.layers, args.steps, args.timing_gpus, args.timing_rounds = [128], 8, 40, 128, 2
    print(
        f"ours: {args.ours_spare} spare slot(s) per GPU, placement over {args.ours_nodes} node group(s), speed "
        f"trend smoothing {args.trend_smoothing}, damping {args.trend_damping}; "
        f"steps {args.steps}, re-plan every {args.interval}, {args.layers} MoE layers × 256 experts, "
        f"EP {args.ep}, seed {args.seed}, straggler turnover {args.straggler_turnover}, {args.expert_gb} GB an expert",
        flush=True,
    )
    header = (
        "| GPUs | policy | utilization | vs none | vs EPLB | layer-sync utilization | worst step "
        "| max/mean expert load | vs EPLB |"
    )
    lines, timings = [header, "|---" * 9 + "|"], []
    for gpus in args.gpus:
        config = Config(
            gpus=gpus,
            ep=min(args.ep, gpus),
            layers=args.layers,
            straggler_turnover=args.straggler_turnover,
            expert_bytes=args.expert_gb * 1e9,
        )
        started = time.perf_counter()
        r = simulate(config, args.steps, args.interval, args.seed, spare=args.ours_spare, nodes=args.ours_nodes,
                     trend_smoothing=args.trend_smoothing, trend_damping=args.trend_damping,
                     shares_interval=args.shares_interval, group_shares=not args.per_gpu_shares)  # fmt: skip
        u, im = r.utilization, r.imbalance
        for name in u:
            lines.append(
                f"| {gpus:,} | {name} | {u[name]:.3f} | {u[name] / u['none']:.2f} | {u[name] / u['EPLB']:.3f} "
                f"| {r.utilization_layer_sync[name]:.3f} | {r.worst_utilization[name]:.3f} "
                f"| {im[name]:.3f} | {im[name] / im['EPLB']:.3f} |"
            )
        timings.append(
            f"{gpus:,} GPUs: ours' planning round ({config.layers} layers) median {statistics.median(r.plan_ms):.1f} "
            f"ms, max {max(r.plan_ms):.1f} ms over {len(r.plan_ms)} rounds; of which data shares median "
            f"{statistics.median(r.shares_ms):.1f} ms"
        )
        print(f"{gpus:,} GPUs simulated in {time.perf_counter() - started:.1f} s", flush=True)
    print("\n".join(lines + timings))
    config = Config(gpus=args.timing_gpus, ep=min(args.ep, args.timing_gpus), layers=args.layers)
    load_before = os.getloadavg()[0]
    totals, shares, cpu = time_planning_rounds(config, args.interval, args.seed, args.timing_rounds)
    print(
        f"ours' planning round at {config.gpus:,} GPUs × {config.layers} layers × {config.experts} experts, "
        f"the same round {len(totals)} times: median {statistics.median(totals):.1f} ms, min {min(totals):.1f} ms, "
        f"max {max(totals):.1f} ms (data shares median {statistics.median(shares):.1f} ms; CPU time median "
        f"{statistics.median(cpu):.1f} ms); "
        f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores"
    )
    reference = time_eplb_reference(5, args.seed)
    print(
        f"EPLB (this rewrite, numpy) 58 layers × 256 experts on 32 GPUs: median {statistics.median(reference):.1f} ms, "
        f"max {max(reference):.1f} ms"
    )


if __name__ == "__main__":
    main()
