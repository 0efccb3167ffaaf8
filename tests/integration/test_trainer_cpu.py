"""The trainer end to end on CPU with gloo, as `moeops train` runs it: data-parallel parity with one
process, exact resume after a worker is killed, preemption by SIGTERM, and configuration errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from moeops.api.v1alpha1.presets import Architecture
from moeops.api.v1alpha1.runtime import CheckpointConfig, ParallelPlan, TrainingRuntimeConfig, WorldSpec
from moeops.api.v1alpha1.trainingjob import CarbonSpec, DataSpec, RebalanceSpec, TrainingSpec

TINY = Architecture(layers=2, d_model=32, heads=4, experts=4, top_k=2, ffn_hidden=32, vocab_size=128, seq_len=48)


def write_config(
    tmp: Path, *, data: int = 1, expert: int = 1, steps: int = 6, aux: float = 0.0, **training: Any
) -> Path:
    config = TrainingRuntimeConfig(
        job_name="test",
        namespace="local",
        architecture=TINY,
        training=TrainingSpec(
            steps=steps,
            global_batch_size=8,
            learning_rate=0.003,
            warmup_steps=1,
            precision="fp32",
            seed=1,
            aux_loss_coef=aux,
            **training,
        ),
        data=DataSpec(source="synthetic://all"),
        plan=ParallelPlan(data=data, tensor=1, pipeline=1, expert=expert, activation_checkpointing=False),
        world=WorldSpec(nnodes=1, nproc_per_node=data, rendezvous_port=29500),
        checkpoint=CheckpointConfig(interval_steps=2, keep=5, directory=str(tmp / "ckpt")),
        rebalance=RebalanceSpec(),
        carbon=CarbonSpec(),
    )
    path = tmp / "config.json"
    path.write_text(config.model_dump_json(by_alias=True))
    return path


def train_cmd(config: Path, nproc: int, *extra: str) -> list[str]:
    metrics = config.parent / "metrics.jsonl"
    return [sys.executable, "-m", "moeops.cli", "train", "--config", str(config), "--nproc", str(nproc),
            "--metrics", str(metrics), *extra]  # fmt: skip


def train(config: Path, nproc: int, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(train_cmd(config, nproc, *extra), capture_output=True, text=True, timeout=300, env=env)


def losses(run_dir: Path) -> dict[int, float]:
    path = run_dir / "metrics.rank0.jsonl"
    return {r["step"]: r["loss"] for r in map(json.loads, path.read_text().splitlines())}


@pytest.mark.parametrize("expert", [1, 2], ids=["DP", "DPxEP"])
def test_two_ranks_follow_the_single_process_run(tmp_path: Path, expert: int) -> None:
    single, double = tmp_path / "w1", tmp_path / "w2"
    for d in (single, double):
        d.mkdir()
    r1 = train(write_config(single, data=1), 1)
    r2 = train(write_config(double, data=2, expert=expert), 2)
    assert r1.returncode == 0, r1.stderr[-3000:]
    assert r2.returncode == 0, r2.stderr[-3000:]
    one, two = losses(single), losses(double)
    assert sorted(one) == sorted(two) == list(range(1, 7))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4), (step, one, two)
    assert one[6] < one[1]  # it learns


@pytest.mark.parametrize("expert", [1, 2], ids=["DP", "DPxEP"])
def test_a_killed_worker_resumes_from_the_checkpoint_on_the_same_trajectory(tmp_path: Path, expert: int) -> None:
    reference, interrupted = tmp_path / "ref", tmp_path / "int"
    for d in (reference, interrupted):
        d.mkdir()
    assert train(write_config(reference, data=2, expert=expert, steps=8), 2).returncode == 0
    expected = losses(reference)

    config = write_config(interrupted, data=2, expert=expert, steps=8)
    proc = subprocess.Popen(train_cmd(config, 2), env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    metrics = interrupted / "metrics.rank0.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 5):
        time.sleep(0.05)
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert workers, "no worker processes found"
    workers[-1].kill()  # SIGKILL one rank mid-run: no chance to checkpoint
    assert proc.wait(timeout=120) != 0
    kept = sorted(p.name for p in (interrupted / "ckpt").iterdir() if p.name.startswith("step-"))
    assert kept and kept[-1] < "step-00000008", kept

    resumed = train(config, 2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = losses(interrupted)  # the file holds both runs; later lines win for the replayed steps
    for step in range(int(kept[-1][-8:]) + 1, 9):
        assert after[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), (step, after, expected)


def test_an_expert_parallel_checkpoint_resumes_on_one_process(tmp_path: Path) -> None:
    """Checkpoints hold full expert tensors: a run on 2 ranks with experts sharded continues on 1 rank."""
    reference, resharded = tmp_path / "ref", tmp_path / "re"
    for d in (reference, resharded):
        d.mkdir()
    assert train(write_config(reference, data=1), 1).returncode == 0
    first = train(write_config(resharded, data=2, expert=2), 2, "--max-steps", "4")
    assert first.returncode == 0, first.stderr[-3000:]
    second = train(write_config(resharded, data=1), 1)
    assert second.returncode == 0, second.stderr[-3000:]
    expected, after = losses(reference), losses(resharded)
    for step in (5, 6):
        assert after[step] == pytest.approx(expected[step], rel=1e-4), (step, after, expected)


def test_sigterm_checkpoints_and_exits_preempted(tmp_path: Path) -> None:
    config = write_config(tmp_path, data=2, steps=500)
    proc = subprocess.Popen(train_cmd(config, 2), env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    metrics = tmp_path / "metrics.rank0.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # what the kubelet does to the pod's main process
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    last = max(losses(tmp_path))
    checkpoints = sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.name.startswith("step-"))
    assert checkpoints[-1] == f"step-{last:08d}", (checkpoints, last)


@pytest.mark.parametrize(
    ("case", "data", "nproc", "message"),
    [
        ("world size mismatch", 2, 1, "but 1 processes were started"),
        ("batch not divisible", 3, 3, "globalBatchSize (8) must be divisible by the data-parallel degree (3)"),
    ],
)
def test_bad_configs_fail_fast_with_exit_78(tmp_path: Path, case: str, data: int, nproc: int, message: str) -> None:
    result = train(write_config(tmp_path, data=data), nproc)
    assert result.returncode == 78, (case, result.stderr[-2000:])
    assert message in result.stderr


def test_an_unreadable_config_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"jobName": "x"}))
    result = train(path, 1)
    assert result.returncode == 78 and "invalid config" in result.stderr


def test_fp16_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace('"precision":"fp32"', '"precision":"fp16"'))
    result = train(config, 1)
    assert result.returncode == 78 and "fp16 is not supported" in result.stderr
