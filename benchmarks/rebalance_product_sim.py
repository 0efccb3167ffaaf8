"""The rebalancer simulation driven by the product's own code: utilization at the product's defaults.

`rebalance_sim.py` re-implements the planner's round in the simulator (its true cost constants, plans applied
on the next step, data shares as often as asked). Here the simulated workers feed the product what a trainer
feeds it, and the product decides:
- every step, each rank's `WorkerMetrics` fields go through `LoadAggregator.fold` (what the bus ingest calls):
  tokens, compute seconds *measured* (the trace's truth × a lognormal measurement noise, `--measure-noise`), the
  step's wall time (the slowest rank plus any expert move), and rank 0's all-reduced expert counts;
- then one planning round, `JobState.next_outcome` (the closed loop's judgement, then `replan_outcome`), with the
  settings the job's description gives (`JobSettings.from_description`: `RebalanceSpec`'s defaults unless a row
  says otherwise, the rebalancer's `--min-samples` 5 and `--apply-margin-steps` 5) and the lead time
  (`with_lead_time`); a plan is adopted as the edge adopts it and runs from its `apply_at_step`;
- expert moves are priced by the product as it prices them (`JobLayout`: parameters × 12 bytes over 10 GB/s),
  and charged by the judge at the trace's truth (`rebalance_trace.migration_cost`: 0.7 GB over 50 GB/s).

Rows (all on the same seeded trace, judged on steps `--warmup` … `--steps`):
- static: an even data split, experts contiguous, never re-planned;
- EPLB: `rebalance_eplb.py` every `--eplb-interval` steps, one spare slot per GPU, even data split;
- EPLB experts + our data shares: the same EPLB placements, the product's data part (its rounds never re-plan
  experts; it is told the placement EPLB runs);
- ours, defaults: `RebalanceSpec()` as is;
- ours with each `--tuned` setting (named in the row).

    .venv/bin/python benchmarks/rebalance_product_sim.py                   # 128 and 1,024 GPUs
    .venv/bin/python benchmarks/rebalance_product_sim.py --gpus 128 --layers 8 --steps 120   # a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from moeops.api.v1alpha1.trainingjob import RebalanceSpec
from moeops.bus.jobs import JobDescription
from moeops.bus.messages import RebalancePlan
from moeops.bus.plan_shares import sequences_from_fractions
from moeops.rebalancer.data_shares import even_split
from moeops.rebalancer.jobs import JobSettings, JobState
from moeops.rebalancer.placement import holdings
from moeops.rebalancer.policy import DEFAULT_APPLY_MARGIN_STEPS, build_plan
from moeops.rebalancer.replan import starting_placement
from rebalance_eplb import eplb_place
from rebalance_trace import Config, Floats, Ints, Judged, Layout, Trace, contiguous, judge, migration_cost

TOKENS_PER_SEQUENCE = 4096
"""What a simulated sequence counts as in `WorkerMetrics.tokens` and the expert counts (only ratios matter)."""
PARAMS_PER_EXPERT = 44_000_000
"""DeepSeek-V3's routed expert (3 × 7168 × 2048): what the job's description tells the product."""


def slots_of(holds: np.ndarray[Any, np.dtype[np.bool_]], experts: int, per_rank: int) -> Ints:
    """(layers, ep, per_rank) expert ids for the judge from (layers, ep, experts) holdings; `experts` = empty."""
    ids = np.where(holds, np.arange(experts), experts)
    return np.sort(ids, axis=2)[:, :, :per_rank]


def placement_of(slots: Ints, experts: int) -> list[list[list[int]]]:
    """The bus form (per layer, per expert, its ranks) of the judge's slots; two copies on one rank count once."""
    layers, ranks, _ = slots.shape
    placement: list[list[list[int]]] = [[[] for _ in range(experts)] for _ in range(layers)]
    for layer in range(layers):
        for rank in range(ranks):
            for expert in sorted(set(slots[layer, rank].tolist()) - {experts}):
                placement[layer][expert].append(rank)
    return placement


@dataclass
class Row:
    name: str
    layout: Layout
    pending_migration_s: float = 0.0
    last_migration_s: float = 0.0
    """The move the last step paid for (its wall time includes it)."""
    judged: list[Judged] = field(default_factory=list)

    def switch(self, config: Config, layout: Layout) -> None:
        self.pending_migration_s += migration_cost(config, self.layout.slots, layout.slots)
        self.layout = layout

    def after_step(self, config: Config, step: int, judged: Judged, rng: np.random.Generator, now: float) -> None:
        """What the row's planner does with the step just run (static: nothing)."""

    def before_step(self, config: Config, step: int) -> None:
        """Switch to a plan that applies at `step`."""


class Eplb(Row):
    def __init__(self, name: str, layout: Layout, interval: int) -> None:
        super().__init__(name, layout)
        self.interval, self.loads = interval, None
        self.window: list[Floats] = []

    def after_step(self, config: Config, step: int, judged: Judged, rng: np.random.Generator, now: float) -> None:
        self.window = [*self.window[-(self.interval - 1) :], judged.expert_tokens]
        if (step + 1) % self.interval == 0:
            slots = eplb_place(np.mean(np.stack(self.window), axis=0), config.ep, config.ep)
            self.switch(config, Layout(self.layout.sequences, slots))


class Product(Row):
    """The product's ingest and planning round on the simulated workers' measurements."""

    def __init__(self, name: str, config: Config, spec: RebalanceSpec, measure_noise: float,
                 eplb_interval: int | None = None,
                 apply_margin_steps: int = DEFAULT_APPLY_MARGIN_STEPS) -> None:  # fmt: skip
        spare = 1 if eplb_interval is not None else spec.expert_spare_slots
        description = JobDescription(
            namespace="sim", job="sim", world_size=config.gpus, global_batch=config.global_batch,
            expert=config.ep, layers=config.layers, experts=config.experts, params_per_expert=PARAMS_PER_EXPERT,
            spare_slots=spare, stage_layers=[(0, config.layers)], rebalance_enabled=spec.enabled,
            min_gain=spec.min_gain, interval_steps=spec.interval_steps, data_interval_steps=spec.data_interval_steps,
            described_at_unix_s=0.0,
        )  # fmt: skip
        self.job = JobState.of(JobSettings.from_description(description, apply_margin_steps=apply_margin_steps))
        self.per_rank = config.experts // config.ep + spare
        start = starting_placement(config.layers, config.experts, config.ep, spare)  # as the trainer starts
        even = np.array(even_split(config.global_batch, config.gpus), dtype=np.int64)
        super().__init__(name, Layout(even, slots_of(holdings(start, config.ep, config.experts), config.experts,
                                                     self.per_rank)))  # fmt: skip
        self.measure_noise = measure_noise
        self.pending: list[RebalancePlan] = []
        self.eplb = None if eplb_interval is None else Eplb("", self.layout, eplb_interval)
        self.plans = 0

    def before_step(self, config: Config, step: int) -> None:
        for plan in [p for p in self.pending if p.apply_at_step <= step]:
            self.pending.remove(plan)
            sequences = np.array(sequences_from_fractions(plan.data_shares, config.global_batch), dtype=np.int64)
            slots = self.layout.slots
            if self.eplb is None and plan.expert_placement:
                slots = slots_of(holdings(plan.expert_placement, config.ep, config.experts), config.experts,
                                 self.per_rank)  # fmt: skip
            self.switch(config, Layout(sequences, slots))

    def after_step(self, config: Config, step: int, judged: Judged, rng: np.random.Generator, now: float) -> None:
        measured = judged.compute_seconds * np.exp(rng.normal(0.0, self.measure_noise, config.gpus))
        wall = float(judged.compute_seconds.max()) + self.last_migration_s
        fold, tokens = self.job.aggregator.fold, (self.layout.sequences * TOKENS_PER_SEQUENCE).tolist()
        counts = np.rint(judged.expert_tokens * TOKENS_PER_SEQUENCE).astype(np.int64).tolist()
        for rank, seconds in enumerate(measured.tolist()):
            fold(rank, step, config.gpus, tokens[rank], seconds, wall, now, counts if rank == 0 else [])
        if self.eplb is not None:
            self.eplb.layout = self.layout
            self.eplb.after_step(config, step, judged, rng, now)
            if self.eplb.layout is not self.layout:  # EPLB re-placed: the product is told what runs now
                self.switch(config, self.eplb.layout)
                self._believe(config, placement_of(self.layout.slots, config.experts), step)
            self.job.last_full_step = step  # its rounds plan the data shares only
        outcome = self.job.next_outcome(now)
        if outcome.plan is not None:
            self.job.adopt(outcome.plan, outcome.plan.epoch + 1, full=outcome.full, parts=outcome.parts)
            self.pending.append(outcome.plan)
            self.plans += 1

    def _believe(self, config: Config, placement: list[list[list[int]]], step: int) -> None:
        previous = self.job.previous
        if previous is None:
            shares = (self.layout.sequences / config.global_batch).tolist()
            previous = build_plan(namespace="sim", job=self.name, previous=None, max_step=step, apply_margin_steps=0,
                                  data_shares=shares, stage_layers=[(0, config.layers)], expert_placement=placement,
                                  predicted_gain=0.0, now_unix_s=0.0)  # fmt: skip
        self.job.previous = previous.model_copy(update={"expert_placement": placement})


@dataclass(frozen=True)
class Setting:
    """A job's `spec.rebalance` and the rebalancer's `--apply-margin-steps`."""

    spec: RebalanceSpec = field(default_factory=RebalanceSpec)
    apply_margin_steps: int = DEFAULT_APPLY_MARGIN_STEPS

    @classmethod
    def parse(cls, text: str) -> Setting:
        """'dataIntervalSteps=5,expertSpareSlots=1,applyMarginSteps=2': spec fields as in the CRD (camelCase),
        applyMarginSteps the rebalancer's flag."""
        fields = dict(item.split("=") for item in text.split(",") if item)
        margin = int(fields.pop("applyMarginSteps", DEFAULT_APPLY_MARGIN_STEPS))
        return cls(RebalanceSpec.model_validate({**RebalanceSpec().model_dump(by_alias=True), **fields}), margin)

    @property
    def name(self) -> str:
        default, mine = RebalanceSpec().model_dump(by_alias=True), self.spec.model_dump(by_alias=True)
        changed = [f"{key}={value}" for key, value in mine.items() if value != default[key]]
        if self.apply_margin_steps != DEFAULT_APPLY_MARGIN_STEPS:
            changed.append(f"applyMarginSteps={self.apply_margin_steps}")
        return "ours, " + (",".join(changed) if changed else "defaults")


def simulate(config: Config, steps: int, warmup: int, seed: int, *, tuned: list[Setting] | None = None,
             eplb_interval: int = 50, measure_noise: float = 0.02,
             step_seconds: float = 8.0) -> dict[str, float]:  # fmt: skip
    """Mean utilization per row over steps warmup … steps (`step_seconds`: the wall time a step is stamped with)."""
    trace = Trace(config, seed)
    even = np.array(even_split(config.global_batch, config.gpus), dtype=np.int64)
    rows: list[Row] = [
        Row("static", Layout(even, contiguous(config, 0))),
        Eplb(f"EPLB (every {eplb_interval})", Layout(even, contiguous(config, 1)), eplb_interval),
        Product("EPLB experts + our data shares (defaults)", config, RebalanceSpec(), measure_noise, eplb_interval),
    ]
    for setting in [Setting(), *(tuned or [])]:
        rows.append(Product(setting.name, config, setting.spec, measure_noise,
                            apply_margin_steps=setting.apply_margin_steps))  # fmt: skip
    # Each row its own measurement noise, seeded by its name: a row's figure does not depend on which others run.
    noise = {row.name: np.random.default_rng([seed, zlib.crc32(row.name.encode())]) for row in rows}
    for step in range(steps):
        speeds, popularity = trace.step()
        for row in rows:
            row.before_step(config, step)
            judged = judge(config, row.layout, speeds, popularity, row.pending_migration_s)
            row.last_migration_s, row.pending_migration_s = row.pending_migration_s, 0.0
            if step >= warmup:
                row.judged.append(judged)
            row.after_step(config, step, judged, noise[row.name], step * step_seconds)
    return {row.name: statistics.fmean(j.utilization for j in row.judged) for row in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50, help="steps not judged (before the first plans run)")
    parser.add_argument("--layers", type=int, default=58)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eplb-interval", type=int, default=50, help="EPLB's re-placement interval (steps)")
    parser.add_argument("--measure-noise", type=float, default=0.02, help="lognormal σ on measured compute times")
    parser.add_argument("--tuned", action="append", default=[], help="e.g. dataIntervalSteps=5,expertSpareSlots=1")
    args = parser.parse_args()
    tuned = [Setting.parse(text) for text in args.tuned]
    print(f"steps {args.steps} (judged from {args.warmup}), {args.layers} MoE layers × 256 experts, EP 64, seed "
          f"{args.seed}, measurement noise {args.measure_noise}, defaults: {RebalanceSpec().model_dump(by_alias=True)}",
          flush=True)  # fmt: skip
    lines = ["| GPUs | policy | utilization | vs static |", "|---|---|---|---|"]
    for gpus in args.gpus:
        started = time.perf_counter()
        config = Config(gpus=gpus, layers=args.layers)
        result = simulate(config, args.steps, args.warmup, args.seed, tuned=tuned, eplb_interval=args.eplb_interval,
                          measure_noise=args.measure_noise)  # fmt: skip
        for name, value in result.items():
            lines.append(f"| {gpus:,} | {name} | {value:.3f} | {value / result['static']:.2f} |")
        print(f"{gpus:,} GPUs simulated in {time.perf_counter() - started:.1f} s", flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
