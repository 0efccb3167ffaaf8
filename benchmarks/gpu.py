"""The GPU checks in one command: the MoE layer benchmark in bf16 on the GPU, then a short bf16 training run
of a mid-sized MoE with the real trainer, reporting tokens/s and model FLOPs utilisation (MFU).

    .venv/bin/python benchmarks/gpu.py                 # on a machine with a CUDA GPU
    .venv/bin/python benchmarks/gpu.py --steps 30 --peak-tflops 989

On a machine without one it says so and exits 0 (nothing to measure). MFU counts the matmul FLOPs of the
*active* parameters (6 per parameter per token: forward + backward) plus causal attention (6·L·S·d per token
for QKᵀ and AV, half of the full square), over the GPU's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from moeops.api.v1alpha1.carbon import CarbonSpec
from moeops.api.v1alpha1.presets import Architecture
from moeops.api.v1alpha1.runtime import CheckpointConfig, ParallelPlan, TrainingRuntimeConfig, WorldSpec
from moeops.api.v1alpha1.trainingjob import DataSpec, RebalanceSpec, TrainingSpec
from moeops.trainer.distributed import World
from moeops.trainer.loop import Trainer
from moeops.trainer.metrics import StepMetrics

# Dense bf16 tensor-core peaks (TFLOP/s, without sparsity) from the vendors' data sheets.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}

ARCH = Architecture(
    layers=8, d_model=1024, heads=16, experts=16, top_k=2, ffn_hidden=1024, vocab_size=256, seq_len=1024
)


class Recorder:
    def __init__(self) -> None:
        self.records: list[StepMetrics] = []

    def publish(self, record: StepMetrics) -> None:
        self.records.append(record)

    def close(self) -> None:
        """Nothing to release."""


def active_flops_per_token(arch: Architecture) -> float:
    d, f, L = arch.d_model, arch.ffn_hidden, arch.layers
    attention = 4 * d * d
    experts = 3 * d * f * (arch.top_k + arch.shared_experts)
    router = d * arch.experts
    head = d * arch.vocab_size
    matmul_params = L * (attention + experts + router) + head
    return 6.0 * matmul_params + 6.0 * L * arch.seq_len * d


def train_throughput(
    steps: int, batch: int, peak_tflops: float | None, arch: Architecture = ARCH, device: str = "cuda"
) -> dict[str, object]:
    config = TrainingRuntimeConfig(
        job_name="gpu-check",
        namespace="local",
        architecture=arch,
        training=TrainingSpec(steps=steps, global_batch_size=batch, warmup_steps=1, precision="bf16", seed=0),
        data=DataSpec(source="synthetic://all"),
        plan=ParallelPlan(data=1, tensor=1, pipeline=1, expert=1, activation_checkpointing=False),
        world=WorldSpec(nnodes=1, nproc_per_node=1, rendezvous_port=29500),
        checkpoint=CheckpointConfig(interval_steps=steps * 10, keep=1, directory="unused"),
        rebalance=RebalanceSpec(),
        carbon=CarbonSpec(),
    )
    world = World(rank=0, world_size=1, local_rank=0, device=torch.device(device))
    recorder = Recorder()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, world, recorder, Path(tmp))
        for _ in range(steps):
            recorder.publish(trainer.train_step())
    timed = recorder.records[3:]  # the first steps compile kernels and grow the allocator
    seconds = statistics.median(r.step_seconds for r in timed)
    tokens_per_s = timed[0].tokens / seconds
    flops = active_flops_per_token(arch) * tokens_per_s
    result: dict[str, object] = {
        "architecture": arch.model_dump(by_alias=True),
        "batch": batch,
        "median_step_s": round(seconds, 4),
        "tokens_per_s": round(tokens_per_s),
        "model_tflops": round(flops / 1e12, 1),
        "loss_first_last": [round(recorder.records[0].loss, 4), round(recorder.records[-1].loss, 4)],
        "max_memory_gib": round(max(r.max_memory_bytes for r in timed) / 2**30, 2),
    }
    if peak_tflops:
        result["mfu"] = round(flops / (peak_tflops * 1e12), 3)
        result["peak_tflops"] = peak_tflops
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16, help="sequences of ARCH.seq_len tokens per step")
    parser.add_argument("--peak-tflops", type=float, default=None, help="default: looked up by GPU name")
    parser.add_argument("--skip-layer", action="store_true", help="only the training run")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA GPU on this machine: nothing to measure", file=sys.stderr)
        return
    name = torch.cuda.get_device_name(0)
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    report: dict[str, object] = {"gpu": name, "torch": torch.__version__}
    if not args.skip_layer:
        sys.path.insert(0, str(Path(__file__).parent))
        import moe_layer  # the CPU benchmark's cases and checks, run on the GPU in bf16

        cuda = torch.device("cuda", 0)
        report["moe_layer_bf16"] = [moe_layer.run_case(e, t, 9, cuda, torch.bfloat16) for e, t in moe_layer.CASES]
    report["training_bf16"] = train_throughput(args.steps, args.batch, peak)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
