"""Every parallel layout trains the same model as one process: the losses of the first steps match the
single-process run within 1e-4 (relative), on CPU with gloo, at world sizes 2 and 4.

Why 1e-4 and not bit-exact: the layouts sum the same terms in different orders (all-reduces, split
matmuls, micro-batches), and Adam turns ~1e-7 gradient differences into visible but tiny loss differences.
A wrong gradient scale, a missed reduction or a mis-sharded weight shows up as 1e-2 or worse by step 2.
The balancing (aux) loss is off in most runs because it is a per-batch statistic: its value depends on how a batch
is cut into micro-batches; `test_balancing_loss_through_the_pipeline` checks it with the same micro-batches on
both sides, `test_the_balancing_loss_counts_the_global_batch` across data ranks.

The runs of a world size share one torchrun launch (parity_launch.py), started by the first test that needs one
of them: a launch is ~10 s of start-up, a run here ~1 s of training. `moeops train` itself (one launch per run)
is tested in test_trainer_cpu.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from trainer_runs import TINY, losses, train_env, write_config

from moeops.api.v1alpha1.trainingjob import RebalanceSpec
from moeops.checkpoint.layout import step_dir
from moeops.checkpoint.weights import load_model_weights
from moeops.model import Transformer

pytestmark = pytest.mark.slow  # torchrun launches

ARCH = TINY.model_copy(update={"layers": 4})
STEPS = 4
TOLERANCE = 1e-4
LAUNCHER = Path(__file__).with_name("parity_launch.py")

# name: data, tensor, pipeline, expert
LAYOUTS = {
    "DP2": (2, 1, 1, 1),
    "TP2": (1, 2, 1, 1),
    "PP2": (1, 1, 2, 1),
    "EP2": (2, 1, 1, 2),
    "DP4": (4, 1, 1, 1),
    "TP4": (1, 4, 1, 1),
    "PP4": (1, 1, 4, 1),
    "EP4": (4, 1, 1, 4),
    "DP2xEP2": (4, 1, 1, 2),
    "PP2xDP2": (2, 1, 2, 1),
    "TP2xDP2": (2, 2, 1, 1),
    "TP2xEP2": (2, 2, 1, 2),
    "PP2xTP2": (1, 2, 2, 1),
}
SINGLE = (1, 1, 1, 1)
SPARE_LAYOUTS = ["EP4", "TP2xEP2"]
SPARE = {"rebalance": RebalanceSpec(expert_spare_slots=2)}
AUX = {"aux": 0.05, "micro_batch_size": 2}


@dataclass(frozen=True)
class Run:
    name: str
    degrees: tuple[int, int, int, int]
    """data, tensor, pipeline, expert"""
    options: dict[str, Any] = field(default_factory=dict)
    """write_config's other arguments"""
    max_steps: int | None = None
    shared: str | None = None
    """A folder for checkpoints and metrics that runs share (the halves of a resharded run)."""
    offload: bool = False
    """The plan asks for optimizer offload (FSDP2's CPUOffloadPolicy)."""

    @property
    def world_size(self) -> int:
        data, tensor, pipeline, _ = self.degrees
        return data * tensor * pipeline

    @property
    def folder(self) -> str:
        return self.shared or self.name


RUNS = {
    run.name: run
    for run in [
        Run("single", SINGLE),
        *(Run(name, degrees) for name, degrees in LAYOUTS.items()),
        Run("PP2xDP2-ac", LAYOUTS["PP2xDP2"], {"activation_checkpointing": True}),
        *(Run(f"{name}-spare", LAYOUTS[name], SPARE) for name in SPARE_LAYOUTS),
        Run("single-aux", SINGLE, AUX),
        Run("PP2-aux", LAYOUTS["PP2"], AUX),
        # One micro-batch per rank: the balancing loss of the global batch's counts (summed over the data ranks)
        # averaged over the ranks is the single process's loss on the whole batch, and so are its gradients.
        Run("single-aux-whole", SINGLE, {"aux": 0.05}),
        *(Run(f"{name}-aux", LAYOUTS[name], {"aux": 0.05}) for name in ("DP2", "EP2")),
        # In this order in the launch: 2 steps as PP2×TP2, then the rest as DP2×EP2 from that checkpoint.
        Run("reshard-first", LAYOUTS["PP2xTP2"], max_steps=2, shared="reshard"),
        Run("reshard-rest", LAYOUTS["DP2xEP2"], shared="reshard"),
        # The other way: expert-parallel checkpoints (each rank's own expert rows, replicas left out, the same
        # chunks offered by both expert-data replicas; with tensor-parallel expert columns) resumed without EP.
        *(
            run
            for first, rest in (("DP2xEP2", "PP2xTP2"), ("TP2xEP2", "DP4"))
            for run in (
                Run(f"{first}-save", LAYOUTS[first], SPARE, max_steps=2, shared=f"from-{first}"),
                Run(f"{first}-resumed", LAYOUTS[rest], shared=f"from-{first}"),
            )
        ),
        # Into expert parallelism with tensor-parallel expert columns and a spare slot: each rank reads only its
        # slots' rows and columns (ExpertStateSharding.local_placeholders), one expert per rank when saved.
        # Optimizer offload: FSDP's shards and AdamW state in host memory, saved and resumed without it.
        Run("offload-first", LAYOUTS["DP2"], max_steps=2, shared="offload", offload=True),
        Run("offload-rest", LAYOUTS["EP2"], shared="offload"),
        Run("EP4-save", LAYOUTS["EP4"], max_steps=2, shared="from-EP4"),
        Run("EP4-resumed", LAYOUTS["TP2xEP2"], {"rebalance": RebalanceSpec(expert_spare_slots=1)}, shared="from-EP4"),
    ]
}


class Launches:
    """One torchrun launch per world size, for all its runs, the first time one of them is asked for."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.launched: dict[int, subprocess.CompletedProcess[str]] = {}

    def losses(self, name: str) -> dict[int, float]:
        run = RUNS[name]
        if run.world_size not in self.launched:
            self.launched[run.world_size] = self._launch(run.world_size)
        result = self.launched[run.world_size]
        assert result.returncode == 0, _failure(result.stderr)
        return losses(self.root / run.folder)

    def _launch(self, world_size: int) -> subprocess.CompletedProcess[str]:
        entries = []
        for run in (r for r in RUNS.values() if r.world_size == world_size):
            data, tensor, pipeline, expert = run.degrees
            config = write_config(
                self._mkdir(run.name), data=data, tensor=tensor, pipeline=pipeline, expert=expert, steps=STEPS,
                arch=ARCH, **run.options,
            )  # fmt: skip
            if run.offload:
                resolved = json.loads(config.read_text())
                resolved["plan"]["optimizerOffload"] = True
                config.write_text(json.dumps(resolved))
            shared = self._mkdir(run.folder)
            entries.append({"name": run.name, "config": str(config), "checkpoint_dir": str(shared / "ckpt"),
                            "metrics": str(shared / "metrics.jsonl"), "max_steps": run.max_steps})  # fmt: skip
        runs_file = self.root / f"runs-{world_size}.json"
        runs_file.write_text(json.dumps(entries))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world_size}",
                   str(LAUNCHER), str(runs_file)]  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, timeout=540, env=train_env())

    def _mkdir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(exist_ok=True)
        return path


def _failure(stderr: str) -> str:
    """The run that failed (the last one started) and rank 0's traceback, else the end of the launch's stderr."""
    lines = stderr.splitlines()
    started = [line for line in lines if line.startswith("parity launch: ")]
    rank0 = [line for line in lines if line.startswith("[rank0]:")]
    return "\n".join([started[-1] if started else "no run started", *(rank0[-60:] or [stderr[-4000:]])])


@pytest.fixture(scope="module")
def launches(tmp_path_factory: pytest.TempPathFactory) -> Launches:
    return Launches(tmp_path_factory.mktemp("parity"))


@pytest.fixture(scope="module")
def single_process(launches: Launches) -> dict[int, float]:
    found = launches.losses("single")
    assert sorted(found) == list(range(1, STEPS + 1))
    assert found[STEPS] < found[1]  # it learns
    return found


def _assert_follows(found: dict[int, float], expected: dict[int, float]) -> None:
    assert sorted(found) == sorted(expected)
    for step, loss in expected.items():
        assert found[step] == pytest.approx(loss, rel=TOLERANCE), (step, found, expected)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_follows_the_single_process_run(
    launches: Launches, layout: str, single_process: dict[int, float]
) -> None:
    _assert_follows(launches.losses(layout), single_process)


def test_activation_checkpointing_changes_nothing(launches: Launches, single_process: dict[int, float]) -> None:
    _assert_follows(launches.losses("PP2xDP2-ac"), single_process)


@pytest.mark.parametrize("layout", SPARE_LAYOUTS)
def test_spare_expert_slots_with_replicas_change_nothing(
    launches: Launches, layout: str, single_process: dict[int, float]
) -> None:
    """Spare slots start holding replicas of other ranks' experts: rows split over replicas, gradients summed
    over them (with tensor-parallel expert shards too), the norm clip counting each expert once."""
    _assert_follows(launches.losses(f"{layout}-spare"), single_process)


def test_balancing_loss_through_the_pipeline(launches: Launches) -> None:
    """The aux loss attached inside each stage gives the gradients of the loss computed in one piece."""
    _assert_follows(launches.losses("PP2-aux"), launches.losses("single-aux"))


@pytest.mark.parametrize("layout", ["DP2", "EP2"])
def test_the_balancing_loss_counts_the_global_batch(launches: Launches, layout: str) -> None:
    """Megatron's global-batch balancing: each rank's loss takes the expert counts of every data rank's tokens
    (moe.MoE.count_reducer), so the balancing loss the run reports (the mean over data ranks) is the single
    process's on the whole batch, step after step; with each rank's own counts it is not (a few % off)."""
    _assert_follows(launches.losses(f"{layout}-aux"), launches.losses("single-aux-whole"))
    _assert_follows(_aux_losses(launches, f"{layout}-aux"), _aux_losses(launches, "single-aux-whole"))


def _aux_losses(launches: Launches, name: str) -> dict[int, float]:
    path = launches.root / RUNS[name].folder / "metrics.rank0.jsonl"
    return {r["step"]: r["aux_loss"] for r in map(json.loads, path.read_text().splitlines())}


def test_a_checkpoint_resumes_in_another_layout(launches: Launches, single_process: dict[int, float]) -> None:
    """Checkpoints are layout-free: 2 steps as PP2×TP2, then the rest as DP2×EP2 from that checkpoint."""
    both = launches.losses("reshard-rest")  # the halves share a folder: its metrics hold both
    steps = [
        json.loads(line)["step"]
        for line in (launches.root / "reshard" / "metrics.rank0.jsonl").read_text().splitlines()
    ]
    assert steps == list(range(1, STEPS + 1)), steps  # the second half went on from step 2, it did not start over
    _assert_follows(both, single_process)


def test_optimizer_offload_changes_nothing_and_its_checkpoint_resumes_without_it(
    launches: Launches, single_process: dict[int, float]
) -> None:
    """2 steps as DP2 with FSDP's state in host memory, the rest as EP2 from that checkpoint."""
    _assert_follows(launches.losses("offload-rest"), single_process)


def test_an_expert_parallel_checkpoint_resumes_in_another_expert_layout(
    launches: Launches, single_process: dict[int, float]
) -> None:
    """EP4 (one expert per rank) for 2 steps, then TP2×EP2 with a spare slot (3 slots per rank, half of each
    expert's hidden units) from that checkpoint, each rank loading only the rows and columns it holds."""
    _assert_follows(launches.losses("EP4-resumed"), single_process)


@pytest.mark.parametrize("first", ["DP2xEP2", "TP2xEP2"])
def test_an_expert_parallel_checkpoint_resumes_without_expert_parallelism(
    launches: Launches, first: str, single_process: dict[int, float]
) -> None:
    """Saved without gathering the experts (expert_parallel.ExpertStateSharding.for_save); read back whole by
    a process alone (what serving does), the weights are the single-process run's at the same step."""
    _assert_follows(launches.losses(f"{first}-resumed"), single_process)
    saved_model, single_model = Transformer(ARCH), Transformer(ARCH)
    load_model_weights(step_dir(launches.root / f"from-{first}" / "ckpt", 2), saved_model)
    load_model_weights(step_dir(launches.root / "single" / "ckpt", 2), single_model)
    for (name, saved), (_, alone) in zip(
        saved_model.state_dict().items(), single_model.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(saved, alone, rtol=0, atol=1e-5, msg=name)
