"""Peak GPU memory per rank against the planner's estimate, tokens/s and MFU, for a ~1B-parameter MoE in bf16
trained by the real trainer (FSDP2 over the ranks, meta-device start-up), one command per layout:

    .venv/bin/python benchmarks/gpu_peak_memory.py                                   # one GPU
    .venv/bin/python -m torch.distributed.run --standalone --nproc-per-node=8 benchmarks/gpu_peak_memory.py
    ... benchmarks/gpu_peak_memory.py --expert 2 --activation-checkpointing --optimizer-offload --micro-batch 2

The model is the `moe-1b` preset (16 layers, d=1024, 16 experts of ffn 1,408, top-2, vocabulary 32,000, 2,048
tokens a sequence: 1.24 B parameters, 0.20 B active per token). Every rank trains `--micro-batch` sequences a
step (one micro-batch) on the synthetic corpus, `--steps` steps; the first 3 are warm-up. Rank 0 prints one JSON
object: per rank the peak of `torch.cuda.max_memory_allocated` and `max_memory_reserved`, the planner's
`estimate_bytes_per_gpu` and `model_state_bytes_per_gpu` for the same plan (its estimate includes 1 GiB of
workspace for the CUDA context and NCCL, which the allocator does not see), their ratio, the median step time,
tokens/s per rank and MFU (6 FLOPs per active parameter per token plus causal attention, as benchmarks/gpu.py
counts them, over the GPU's dense bf16 peak).

Without a CUDA GPU it says so and exits 0: nothing to measure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from moeops.api.v1alpha1.carbon import CarbonSpec
from moeops.api.v1alpha1.presets import PRESETS
from moeops.api.v1alpha1.runtime import CheckpointConfig, ParallelPlan, TrainingRuntimeConfig, WorldSpec
from moeops.api.v1alpha1.trainingjob import DataSpec, RebalanceSpec, TrainingSpec
from moeops.operator.planning.memory import Degrees, estimate_bytes_per_gpu, model_state_bytes_per_gpu
from moeops.operator.planning.sizing import model_size
from moeops.trainer.distributed import init_world, shutdown
from moeops.trainer.loop import Trainer
from moeops.trainer.model_state import model_state_bytes

sys.path.insert(0, str(Path(__file__).parent))
from gpu import PEAK_TFLOPS, Recorder, active_flops_per_token  # the sibling benchmark's counts

ARCH = PRESETS["moe-1b"]
WARMUP_STEPS = 3
GIB = 2**30


def _config(args: argparse.Namespace, world_size: int, folder: str) -> TrainingRuntimeConfig:
    return TrainingRuntimeConfig(
        job_name="gpu-peak-memory",
        namespace="local",
        architecture=ARCH,
        training=TrainingSpec(
            steps=args.steps,
            global_batch_size=args.micro_batch * world_size,
            warmup_steps=1,
            precision="bf16",
            seed=0,
        ),
        data=DataSpec(source="synthetic://all"),
        plan=ParallelPlan(
            data=world_size,
            tensor=1,
            pipeline=1,
            expert=args.expert,
            activation_checkpointing=args.activation_checkpointing,
            optimizer_offload=args.optimizer_offload,
        ),
        world=WorldSpec(nnodes=1, nproc_per_node=world_size, rendezvous_port=29500),
        checkpoint=CheckpointConfig(interval_steps=args.steps * 10, keep=1, directory=folder),
        rebalance=RebalanceSpec(enabled=False),
        carbon=CarbonSpec(),
    )


def measure(args: argparse.Namespace) -> dict[str, object] | None:
    world = init_world()
    recorder = Recorder()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(_config(args, world.world_size, tmp), world, recorder, Path(tmp))
        for _ in range(args.steps):
            recorder.publish(trainer.train_step())
        held = model_state_bytes(trainer.model, trainer.optimizer)
    timed = recorder.records[WARMUP_STEPS:]
    seconds = statistics.median(r.step_seconds for r in timed)
    mine = {
        "rank": world.rank,
        "max_allocated_gib": torch.cuda.max_memory_allocated() / GIB,
        "max_reserved_gib": torch.cuda.max_memory_reserved() / GIB,
        "model_state_device_gib": held["device"] / GIB,
        "model_state_host_gib": held["host"] / GIB,
        "median_step_s": seconds,
        "tokens_per_s": timed[0].tokens / seconds,
    }
    ranks: list[dict[str, float]] = [mine]
    if world.distributed:
        ranks = [{} for _ in range(world.world_size)]
        dist.all_gather_object(ranks, mine)
    if not world.is_main:
        return None
    degrees = Degrees(world.world_size, 1, 1, args.expert, args.activation_checkpointing, args.optimizer_offload)
    planned = estimate_bytes_per_gpu(ARCH, degrees, args.micro_batch, "bf16")
    name = torch.cuda.get_device_name(0)
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    per_rank_flops = statistics.median(r["tokens_per_s"] for r in ranks) * active_flops_per_token(ARCH)
    size = model_size(ARCH)
    return {
        "gpu": name,
        "torch": torch.__version__,
        "world": world.world_size,
        "plan": {
            "data": world.world_size,
            "expert": args.expert,
            "activation_checkpointing": args.activation_checkpointing,
            "optimizer_offload": args.optimizer_offload,
            "micro_batch": args.micro_batch,
        },
        "params_b": round(size.total_params / 1e9, 3),
        "active_params_b": round(size.active_params / 1e9, 3),
        "planner_estimate_gib": round(planned / GIB, 2),
        "planner_model_state_gib": round(model_state_bytes_per_gpu(ARCH, degrees) / GIB, 2),
        "max_allocated_over_estimate": round(max(float(r["max_allocated_gib"]) for r in ranks) * GIB / planned, 3),
        "loss_first_last": [round(recorder.records[0].loss, 4), round(recorder.records[-1].loss, 4)],
        "ranks": [{k: round(float(v), 3) for k, v in r.items()} for r in ranks],
        "mfu": round(per_rank_flops / (peak * 1e12), 3) if peak else None,
        "peak_tflops": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--micro-batch", type=int, default=4, help="sequences of 2,048 tokens per rank per step")
    parser.add_argument("--expert", type=int, default=1, help="expert-parallel degree (divides the ranks)")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--optimizer-offload", action="store_true", help="FSDP2's CPUOffloadPolicy")
    parser.add_argument("--peak-tflops", type=float, default=None, help="default: looked up by GPU name")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/gpu_peak_memory.py: no CUDA GPU on this machine: nothing to measure", file=sys.stderr)
        return
    try:
        report = measure(args)
    finally:
        shutdown()
    if report is not None:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
