"""A job's parallel layout as the rebalancer needs it: which rank is which stage and data-parallel replica, and
the per-stage and per-replica loads derived from per-rank measurements (pure).

Ranks are numbered as the trainer's DeviceMesh (pipeline, data, tensor) lays them out, data being the flattened
(edp, ep) dimensions: rank = (stage · data + replica) · tensor + tensor_index (trainer/topology.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_EXPERT_TIME_SHARE = 0.5
"""Fraction of a step spent in the routed experts when the workers do not say (typical of fine-grained MoE
models: the attention and shared parts take the rest). It scales the predicted gain of an expert re-placement."""
DEFAULT_LINK_BYTES_PER_S = 10e9
"""Bandwidth one rank receives moved experts with (a PCIe Gen4 / 100 GbE class link)."""
ADAM_BYTES_PER_PARAM = 12
"""fp32 weight + AdamW's two fp32 moments: what moving one parameter costs."""


@dataclass(frozen=True)
class JobLayout:
    pipeline: int = 1
    tensor: int = 1
    expert: int = 1
    layers: int = 1
    experts: int = 0
    """Routed experts per MoE layer (0: do not plan expert placement)."""
    params_per_expert: int = 0
    """Parameters of one routed expert (3 · dModel · ffnHidden for SwiGLU), for the migration cost."""
    gpus_per_node: int = 8
    spare_slots: int = 0
    """Expert slots per EP rank beyond experts / expert (0: one copy of each expert). The planner fills them
    with replicas of the hottest experts, whose tokens the dispatcher splits evenly over the copies."""
    expert_time_share: float = DEFAULT_EXPERT_TIME_SHARE
    link_bytes_per_s: float = DEFAULT_LINK_BYTES_PER_S

    def data(self, world_size: int) -> int:
        """Data-parallel replicas in a world of `world_size` ranks."""
        per_replica = self.pipeline * self.tensor
        if world_size < per_replica or world_size % per_replica:
            raise ValueError(f"a world of {world_size} ranks is not pipeline {self.pipeline} × tensor {self.tensor}")
        return world_size // per_replica

    def stage_of(self, rank: int, world_size: int) -> int:
        return rank // (self.data(world_size) * self.tensor)

    def replica_of(self, rank: int, world_size: int) -> int:
        return (rank // self.tensor) % self.data(world_size)

    @property
    def bytes_per_expert(self) -> float:
        return float(self.params_per_expert * ADAM_BYTES_PER_PARAM)

    @property
    def ep_nodes(self) -> int:
        """Node blocks for EPLB's hierarchical placement: 1 (global). Hierarchical packing keeps expert groups
        within nodes, which pays only with group-limited routing (DeepSeek-V3's); moeops' router picks any
        experts, and with it hierarchical placement measured 2.5× max/mean against global's 1.15
        (benchmarks/rebalance_sim.py --ours-nodes 8)."""
        return 1


def replica_rates(rates: Sequence[float], layout: JobLayout) -> list[float]:
    """Per data-parallel replica, the speed of its slowest rank (its tensor-parallel peers wait for it)."""
    world = len(rates)
    slowest = [math.inf] * layout.data(world)
    for rank, rate in enumerate(rates):
        replica = layout.replica_of(rank, world)
        slowest[replica] = min(slowest[replica], rate)
    return slowest


def stage_times(compute_seconds: Sequence[float], layout: JobLayout) -> list[float]:
    """Per pipeline stage, the compute time of its slowest rank."""
    world = len(compute_seconds)
    slowest = [0.0] * layout.pipeline
    for rank, seconds in enumerate(compute_seconds):
        stage = layout.stage_of(rank, world)
        slowest[stage] = max(slowest[stage], seconds)
    return slowest
