"""The trace and the judge of `rebalance_sim.py`: a seeded cluster whose GPU speeds and expert popularity drift,
and the step time of any (data shares, expert placement) on it. Shared by every policy: a policy never draws
from the trace's random generator, so all of them see exactly the same speeds and loads.

Model (all times in seconds at speed 1.0):
- G GPUs, 8 per node, data parallel × expert parallel: each EP group is `ep` consecutive GPUs (8 nodes of 8 at
  64, as DeepSeek-V3 trained), every GPU is also a data-parallel rank with its own sequences.
- A sequence costs `dense_s` of non-expert work on its own GPU, and routes `expert_s` of expert work (top-k tokens
  over all MoE layers) to the experts of its EP group, per layer in proportion to the layer's popularity.
- Popularity per layer: Zipf(s) over a random permutation of the experts, as logits that random-walk every step
  (ranks permute slowly), plus per-step, per-EP-group batch noise (each group routes different sequences).
- Speeds: a fixed per-GPU spread, 20% stragglers at 0.6×; each step a straggler recovers with a small
  probability and a healthy GPU starts to straggle in its place, the speed moving there gradually (thermal
  throttling, not a cliff); plus per-step jitter.
- Step time ("step" model, the brief's): per GPU (dense + its experts' work) / its speed; the slowest GPU sets
  the step. "layer" model (stricter): every MoE layer is a barrier within the EP group (the all-to-all), so a
  group takes Σ_layers max over its GPUs, and the slowest group sets the step. Ideal: total work / total speed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]


@dataclass(frozen=True)
class Config:
    gpus: int
    ep: int = 64
    experts: int = 256
    layers: int = 58
    seqs_per_gpu: int = 16
    dense_s: float = 0.25
    expert_s: float = 0.25
    zipf: float = 1.0
    popularity_drift: float = 0.03
    """Std of each expert's logit step per step (random walk)."""
    batch_noise: float = 0.05
    """Std of the per-step, per-EP-group multiplicative noise on each expert's load."""
    straggler_fraction: float = 0.2
    straggler_speed: float = 0.6
    straggler_turnover: float = 0.002
    """Per step, the probability that a straggler recovers (and a healthy GPU starts to straggle)."""
    speed_tau_steps: float = 20.0
    """Steps for a changing GPU to get most of the way (1 − 1/e) to its new speed."""
    speed_spread: float = 0.03
    speed_jitter: float = 0.01
    expert_bytes: float = 0.7e9
    """Weights + optimizer state of one expert (DeepSeek-V3 size, 44 M parameters × 16 bytes)."""
    link_bytes_per_s: float = 50e9

    @property
    def groups(self) -> int:
        return self.gpus // self.ep

    @property
    def global_batch(self) -> int:
        return self.gpus * self.seqs_per_gpu


@dataclass
class Trace:
    """Per step: `speeds` (G,) and `popularity` (groups, layers, experts), rows summing to 1."""

    config: Config
    seed: int
    rng: np.random.Generator = field(init=False)
    logits: Floats = field(init=False)
    straggling: NDArray[np.bool_] = field(init=False)
    slowdown: Floats = field(init=False)
    spread: Floats = field(init=False)

    def __post_init__(self) -> None:
        c = self.config
        if c.gpus % c.ep or c.experts % c.ep:
            raise ValueError(f"{c.gpus} GPUs do not split into EP groups of {c.ep}")
        self.rng = np.random.default_rng(self.seed)
        zipf = -c.zipf * np.log(np.arange(1, c.experts + 1, dtype=np.float64))
        self.logits = np.stack([self.rng.permutation(zipf) for _ in range(c.layers)])
        self.straggling = np.zeros(c.gpus, dtype=bool)
        self.straggling[self.rng.choice(c.gpus, round(c.straggler_fraction * c.gpus), replace=False)] = True
        self.slowdown = np.where(self.straggling, c.straggler_speed, 1.0)
        self.spread = np.exp(self.rng.normal(0.0, c.speed_spread, c.gpus))

    def step(self) -> tuple[Floats, Floats]:
        c, rng = self.config, self.rng
        recover = self.straggling & (rng.random(c.gpus) < c.straggler_turnover)
        healthy = np.flatnonzero(~self.straggling)
        start = rng.choice(healthy, int(recover.sum()), replace=False)
        self.straggling[recover] = False
        self.straggling[start] = True
        target = np.where(self.straggling, c.straggler_speed, 1.0)
        self.slowdown += (target - self.slowdown) * (1.0 - np.exp(-1.0 / c.speed_tau_steps))
        speeds = self.spread * self.slowdown * np.exp(rng.normal(0.0, c.speed_jitter, c.gpus))
        self.logits = self.logits + rng.normal(0.0, c.popularity_drift, self.logits.shape)
        noisy = self.logits[None] + rng.normal(0.0, c.batch_noise, (c.groups, *self.logits.shape))
        popularity = np.exp(noisy - noisy.max(axis=2, keepdims=True))
        popularity /= popularity.sum(axis=2, keepdims=True)
        return speeds, popularity


@dataclass(frozen=True)
class Layout:
    """What a policy runs: sequences per GPU, and per layer the experts in each EP rank's slots."""

    sequences: Ints
    """(G,)"""
    slots: Ints
    """(layers, ep, slots per rank): expert ids; `experts` (one past the last id) marks an empty slot."""

    def copies(self, experts: int) -> Ints:
        """(layers, experts + 1): replicas per expert, the last column counting the empty slots."""
        layers = self.slots.shape[0]
        counts = np.zeros((layers, experts + 1), dtype=np.int64)
        for layer in range(layers):
            counts[layer] = np.bincount(self.slots[layer].ravel(), minlength=experts + 1)
        return counts


def contiguous(c: Config, spare_slots: int) -> Ints:
    """Experts in id order, 256 / EP per GPU, then `spare_slots` empty slots per GPU."""
    per_rank = c.experts // c.ep
    held = np.arange(c.experts).reshape(c.ep, per_rank)
    empty = np.full((c.ep, spare_slots), c.experts)
    return np.tile(np.concatenate([held, empty], axis=1), (c.layers, 1, 1))


@dataclass(frozen=True)
class Judged:
    utilization: float
    """Ideal / actual, "step" model, migration time included."""
    utilization_layer_sync: float
    imbalance: float
    """Mean over EP groups and layers of max / mean GPU expert load."""
    compute_seconds: Floats
    """(G,) each GPU's own compute time this step (what a worker measures)."""
    expert_tokens: Floats
    """(layers, experts) global expert load this step (what the all-reduced counts report), sequence units."""


def judge(c: Config, layout: Layout, speeds: Floats, popularity: Floats, migration_s: float) -> Judged:
    seqs = layout.sequences.astype(np.float64)
    group_seqs = seqs.reshape(c.groups, c.ep).sum(axis=1)
    tokens = popularity * group_seqs[:, None, None]  # (groups, layers, experts)
    copies = np.maximum(layout.copies(c.experts)[None], 1)
    per_replica = np.concatenate([tokens, np.zeros((*tokens.shape[:2], 1))], axis=2) / copies  # empty slot: 0
    layer_index = np.arange(c.layers)[:, None, None]
    rank_load = per_replica[:, layer_index, layout.slots].sum(axis=3)  # (groups, layers, ep)
    expert_work = rank_load * (c.expert_s / c.layers)
    group_speeds = speeds.reshape(c.groups, c.ep)
    dense = (seqs * c.dense_s).reshape(c.groups, c.ep)
    compute = (dense + expert_work.sum(axis=1)) / group_speeds
    ideal = (c.dense_s + c.expert_s) * seqs.sum() / speeds.sum()
    per_layer = (dense[:, None, :] / c.layers + expert_work) / group_speeds[:, None, :]
    layer_sync = per_layer.max(axis=2).sum(axis=1).max()
    mean_load = rank_load.mean(axis=2)
    return Judged(
        utilization=float(ideal / (compute.max() + migration_s)),
        utilization_layer_sync=float(ideal / (layer_sync + migration_s)),
        imbalance=float((rank_load.max(axis=2) / mean_load).mean()),
        compute_seconds=compute.ravel(),
        expert_tokens=tokens.sum(axis=0),
    )


def received_experts(c: Config, before: Ints, after: Ints) -> Ints:
    """Per EP rank, the experts it must receive (summed over layers): slots of `after` it does not hold yet."""
    layers, ranks, _ = after.shape
    counts = np.zeros(ranks, dtype=np.int64)
    for layer in range(layers):
        for rank in range(ranks):
            new = set(after[layer, rank].tolist()) - set(before[layer, rank].tolist()) - {c.experts}
            counts[rank] += len(new)
    return counts


def migration_cost(c: Config, before: Ints, after: Ints) -> float:
    """Seconds of the move: the busiest receiving GPU's bytes over its link (every EP group moves alike)."""
    return float(received_experts(c, before, after).max()) * c.expert_bytes / c.link_bytes_per_s
