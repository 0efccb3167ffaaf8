"""The trainer end to end on CPU with gloo, as `moeops train` runs it: exact resume after a worker is killed,
preemption by SIGTERM, and configuration errors. (Parity of the parallel layouts: test_parallel_parity.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from trainer_runs import TINY, losses, train, train_cmd, write_config

from moeops.checkpoint.layout import read_architecture

pytestmark = pytest.mark.slow  # every test runs `moeops train` (torchrun and its workers)


@pytest.mark.parametrize("expert", [1, 2], ids=["DP", "DPxEP"])
def test_a_killed_worker_resumes_from_the_checkpoint_on_the_same_trajectory(tmp_path: Path, expert: int) -> None:
    """Every checkpoint is saved asynchronously (checkpoint.AsyncSaver): the one resumed from was written by the
    background writer while training went on, and it restores the trajectory exactly."""
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
    config = write_config(tmp_path, data=2, steps=500, checkpoint_interval=1000)  # SIGTERM's is the only one
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
    assert checkpoints == [f"step-{last:08d}"], (checkpoints, last)
    carbon = json.loads((tmp_path / "carbon.json").read_text())  # the local energy meter ran, preempted or not
    assert carbon["workloads"][0]["key"] == {"namespace": "local", "kind": "MoETrainingJob", "name": "test",
                                             "stage": "train"}  # fmt: skip
    assert carbon["workloads"][0]["totals"]["energy_j"] > 0


@pytest.mark.parametrize(
    ("case", "plan", "nproc", "message"),
    [
        ("world size mismatch", {"data": 2}, 1, "but 1 processes were started"),
        (
            "batch not divisible",
            {"data": 3},
            3,
            "globalBatchSize (8) must be divisible by the data-parallel degree (3)",
        ),
        ("tensor does not divide heads", {"tensor": 3}, 3, "tensor degree 3 must divide architecture.heads (4)"),
        ("more stages than layers", {"pipeline": 3}, 3, "pipeline degree 3 exceeds the model's layers (2)"),
        ("expert degree", {"data": 3, "expert": 3}, 3, "expert degree 3 must divide the experts per layer (4)"),
    ],
)
def test_bad_configs_fail_fast_with_exit_78(
    tmp_path: Path, case: str, plan: dict[str, Any], nproc: int, message: str
) -> None:
    result = train(write_config(tmp_path, **plan), nproc)
    assert result.returncode == 78, (case, result.stderr[-2000:])
    assert message in result.stderr
    # Refused once by the launcher, before torchrun started any worker (each worker would say it again).
    assert result.stderr.count("configuration error") == 1, result.stderr[-2000:]


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


def test_trains_on_jsonl_files_with_a_tokenizer_trained_on_them(tmp_path: Path) -> None:
    """file:// JSONL: malformed lines skipped, a BPE tokenizer trained at start and kept with the checkpoints,
    and the same data on 1 and 2 ranks (the losses match)."""
    corpus = tmp_path / "corpus.jsonl"
    animals, foods = ("cat", "dog", "owl", "fox"), ("fish", "corn", "mice", "plums")
    records = [{"text": f"the {a} eats {f} at {h} o'clock."} for a in animals for f in foods for h in range(1, 13)]
    corpus.write_text("\n".join([*map(json.dumps, records), "{truncated"]) + "\n")
    arch = TINY.model_copy(update={"vocab_size": 320})
    runs = {}
    for data in (1, 2):
        run_dir = tmp_path / f"w{data}"
        run_dir.mkdir()
        result = train(write_config(run_dir, data=data, arch=arch, source=f"file://{corpus}"), data)
        assert result.returncode == 0, result.stderr[-3000:]
        assert (run_dir / "ckpt" / "tokenizer.json").is_file()
        assert read_architecture(run_dir / "ckpt" / "config.json") == arch  # what a model server rebuilds it from
        runs[data] = losses(run_dir)
    for step, loss in runs[1].items():
        assert runs[2][step] == pytest.approx(loss, rel=1e-4), (step, runs)
    assert runs[1][6] < runs[1][1]


def test_a_missing_corpus_is_a_configuration_error(tmp_path: Path) -> None:
    result = train(write_config(tmp_path, source=f"file://{tmp_path}/nowhere.jsonl"), 1)
    assert result.returncode == 78, result.stderr[-2000:]
    assert "nowhere.jsonl" in result.stderr


def test_top_k_above_the_experts_is_a_configuration_error(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace('"topK":2', '"topK":5'))
    result = train(config, 1)
    assert result.returncode == 78, result.stderr[-2000:]
    assert "topK (5) must be at most experts (4)" in result.stderr
