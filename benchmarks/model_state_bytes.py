"""Per-rank model-state bytes (parameters + gradients + AdamW state at a step's peak) and step time: the trainer's
FSDP2 against DDP (what the trainer ran before), with the planner's estimate beside each, on CPU with gloo.

    .venv/bin/python -m torch.distributed.run --standalone --nproc-per-node=2 benchmarks/model_state_bytes.py
    .venv/bin/python -m torch.distributed.run --standalone --nproc-per-node=4 benchmarks/model_state_bytes.py --expert 2

Both variants run in the same process, alternating within each repeat, on the same rank's part of the model (the
trainer's meta-device build and `parallelize`; DDP wraps the same stage unsharded, the way the trainer did):
forward, backward, AdamW step, the second step without clearing gradients so that weights, gradients and both
moments are held at once. Rank 0 prints one JSON line per variant: max bytes over ranks, the planner's
`model_state_bytes_per_gpu` for the same plan, and the median step time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from moeops.api.v1alpha1.presets import Architecture
from moeops.api.v1alpha1.runtime import ParallelPlan
from moeops.model import Transformer
from moeops.operator.planning.memory import Degrees, model_state_bytes_per_gpu
from moeops.trainer.distributed import init_world, shutdown
from moeops.trainer.expert_parallel import shard_experts
from moeops.trainer.init_weights import materialise
from moeops.trainer.model_state import model_state_bytes
from moeops.trainer.parallelize import parallelize
from moeops.trainer.stage import TransformerStage
from moeops.trainer.topology import build_topology

ARCH = Architecture(layers=4, d_model=256, heads=4, experts=8, top_k=2, ffn_hidden=512, vocab_size=4096, seq_len=128)


def build(variant: str, plan: ParallelPlan, world_device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
    world = init_world()
    topo = build_topology(world, plan)
    with torch.device("meta"):
        full = Transformer(ARCH)
    stage = TransformerStage(full, range(ARCH.layers), first=True, last=True)
    module: nn.Module = stage
    if variant == "fsdp2":
        if topo.ep.active:
            shard_experts(stage, topo.ep)
        parallelize(stage, topo, plan)
        materialise(stage, ARCH, 1, world_device, topo.ep.rank if topo.ep.active else None)
    else:  # DDP: a full replica of the stage on every rank
        materialise(stage, ARCH, 1, world_device, None)
        module = DistributedDataParallel(stage)
    optimizer = torch.optim.AdamW(stage.parameters(), lr=1e-3, foreach=False)
    return module, optimizer


def step(module: nn.Module, optimizer: torch.optim.Optimizer, tokens: torch.Tensor, clear: bool) -> float:
    started = time.perf_counter()
    logits = module(tokens[:, :-1])
    F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten()).backward()
    optimizer.step()
    if clear:
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def run(variant: str, plan: ParallelPlan, steps: int, batch: int) -> tuple[int, list[float]]:
    device = torch.device("cpu")
    module, optimizer = build(variant, plan, device)
    stage = module.module if isinstance(module, DistributedDataParallel) else module
    generator = torch.Generator().manual_seed(dist.get_rank())
    times = []
    for i in range(steps):
        tokens = torch.randint(0, ARCH.vocab_size, (batch, ARCH.seq_len + 1), generator=generator)
        times.append(step(module, optimizer, tokens, clear=i < steps - 1))
    held = torch.tensor([model_state_bytes(stage, optimizer)["total"]])
    dist.all_reduce(held, op=dist.ReduceOp.MAX)
    return int(held), times[1:]  # the first step allocates the AdamW state


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--expert", type=int, default=1, help="expert-parallel degree (FSDP2 variant only)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4, help="sequences per rank")
    args = parser.parse_args()
    torch.set_num_threads(1)
    world = init_world()
    plan = ParallelPlan(data=world.world_size, tensor=1, pipeline=1, expert=args.expert, activation_checkpointing=False)
    plans = {"ddp": plan.model_copy(update={"expert": 1}), "fsdp2": plan}  # DDP has no expert parallelism here
    found: dict[str, list[float]] = {"ddp": [], "fsdp2": []}
    held: dict[str, int] = {}
    for _ in range(args.repeats):
        for variant in ("ddp", "fsdp2"):
            held[variant], times = run(variant, plans[variant], args.steps, args.batch)
            found[variant] += times
    if world.is_main:
        for variant in ("ddp", "fsdp2"):
            expert = args.expert if variant == "fsdp2" else 1
            planned = model_state_bytes_per_gpu(ARCH, Degrees(world.world_size, 1, 1, expert))
            print(json.dumps({"variant": variant, "world": world.world_size, "expert": expert,
                              "bytes_per_rank": held[variant], "planner_bytes": planned,
                              "held_vs_planner": round(held[variant] / planned, 3),
                              "bytes_vs_ddp": round(held[variant] / held["ddp"], 3),
                              "step_s_median": round(statistics.median(found[variant]), 4),
                              "step_time_vs_ddp": round(statistics.median(found[variant])
                                                        / statistics.median(found["ddp"]), 3)}))  # fmt: skip
    shutdown()


if __name__ == "__main__":
    main()
