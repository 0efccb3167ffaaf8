"""Running `moeops train` on CPU with gloo from the tests: configs, the command, the per-step losses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from moeops.api.v1alpha1.carbon import CarbonSpec
from moeops.api.v1alpha1.presets import Architecture
from moeops.api.v1alpha1.runtime import CheckpointConfig, ParallelPlan, TrainingRuntimeConfig, WorldSpec
from moeops.api.v1alpha1.trainingjob import DataSpec, RebalanceSpec, TrainingSpec

TINY = Architecture(layers=2, d_model=32, heads=4, experts=4, top_k=2, ffn_hidden=32, vocab_size=128, seq_len=48)


def write_config(
    tmp: Path,
    *,
    data: int = 1,
    expert: int = 1,
    tensor: int = 1,
    pipeline: int = 1,
    steps: int = 6,
    aux: float = 0.0,
    arch: Architecture = TINY,
    activation_checkpointing: bool = False,
    source: str = "synthetic://all",
    global_batch: int = 8,
    rebalance: RebalanceSpec | None = None,
    checkpoint_interval: int = 2,
    **training: Any,
) -> Path:
    """A runtime config as the operator resolves it. Checkpoints every 2 steps by default, for the resume tests; a
    long run that does not resume passes a larger `checkpoint_interval` (each save is a collective and files)."""
    config = TrainingRuntimeConfig(
        job_name="test",
        namespace="local",
        architecture=arch,
        training=TrainingSpec(
            steps=steps,
            global_batch_size=global_batch,
            learning_rate=0.003,
            warmup_steps=1,
            precision="fp32",
            seed=1,
            aux_loss_coef=aux,
            **training,
        ),
        data=DataSpec(source=source),
        plan=ParallelPlan(
            data=data,
            tensor=tensor,
            pipeline=pipeline,
            expert=expert,
            activation_checkpointing=activation_checkpointing,
        ),
        world=WorldSpec(nnodes=1, nproc_per_node=data * tensor * pipeline, rendezvous_port=29500),
        checkpoint=CheckpointConfig(interval_steps=checkpoint_interval, keep=5, directory=str(tmp / "ckpt")),
        rebalance=rebalance or RebalanceSpec(),
        carbon=CarbonSpec(),
    )
    path = tmp / "config.json"
    path.write_text(config.model_dump_json(by_alias=True))
    return path


def train_cmd(config: Path, nproc: int, *extra: str) -> list[str]:
    metrics = config.parent / "metrics.jsonl"
    return [sys.executable, "-m", "moeops.cli", "train", "--config", str(config), "--nproc", str(nproc),
            "--metrics", str(metrics), *extra]  # fmt: skip


def train_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def train(config: Path, nproc: int, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        train_cmd(config, nproc, *extra), capture_output=True, text=True, timeout=300, env=env or train_env()
    )


def losses(run_dir: Path) -> dict[int, float]:
    path = run_dir / "metrics.rank0.jsonl"
    return {r["step"]: r["loss"] for r in map(json.loads, path.read_text().splitlines())}
