"""LayerSkip's early-exit loss in the trainer: scales, refusals, the unchanged objective at weight 0, and a
better early exit after a short CPU training with it."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from moeops.api.v1alpha1.carbon import CarbonSpec
from moeops.api.v1alpha1.early_exit_loss import EarlyExitLossSpec
from moeops.api.v1alpha1.presets import Architecture
from moeops.api.v1alpha1.runtime import CheckpointConfig, ParallelPlan, TrainingRuntimeConfig, WorldSpec
from moeops.api.v1alpha1.trainingjob import DataSpec, RebalanceSpec, TrainingSpec
from moeops.trainer.distributed import World
from moeops.trainer.early_exit_loss import ExitLossRunner, exit_scales
from moeops.trainer.errors import ConfigError
from moeops.trainer.loop import Trainer
from moeops.trainer.metrics import NullSink
from moeops.trainer.preflight import check_early_exit
from moeops.trainer.runners import LocalRunner

ARCH = Architecture(layers=3, d_model=32, heads=4, experts=4, top_k=2, ffn_hidden=32, vocab_size=64, seq_len=48)
CPU = World(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _trainer(
    tmp: Path, weight: float, steps: int = 80, micro: int | None = None, checkpointing: bool = False
) -> Trainer:
    config = TrainingRuntimeConfig(
        job_name="test",
        namespace="local",
        architecture=ARCH,
        training=TrainingSpec(
            steps=steps,
            global_batch_size=8,
            micro_batch_size=micro,
            learning_rate=0.01,
            warmup_steps=1,
            precision="fp32",
            seed=1,
            early_exit=EarlyExitLossSpec(loss_weight=weight),
        ),
        # One domain a model this small learns within a few dozen steps (test runs stay short).
        data=DataSpec(source="synthetic://template"),
        plan=ParallelPlan(data=1, tensor=1, pipeline=1, expert=1, activation_checkpointing=checkpointing),
        world=WorldSpec(nnodes=1, nproc_per_node=1, rendezvous_port=29500),
        checkpoint=CheckpointConfig(interval_steps=1000, keep=1, directory=str(tmp)),
        rebalance=RebalanceSpec(enabled=False),
        carbon=CarbonSpec(),
    )
    return Trainer(config, CPU, NullSink(), tmp)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny matmuls: threads only add synchronisation (measured 4x slower on 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_scales_rise_linearly_with_depth_and_sum_to_one() -> None:
    scales = exit_scales(layers=4, min_layer=1)
    assert scales.keys() == {1, 2, 3}
    assert [round(s * 6, 12) for s in scales.values()] == [1.0, 2.0, 3.0]
    assert math.isclose(sum(exit_scales(12, 4).values()), 1.0)
    assert exit_scales(4, 3) == {3: 1.0} and exit_scales(1, 1) == {}


def test_refused_with_pipeline_stages_or_no_layer_to_exit_at() -> None:
    on = EarlyExitLossSpec(loss_weight=0.5, min_layer=2)
    check_early_exit(on, layers=4, pipeline=1)
    check_early_exit(EarlyExitLossSpec(min_layer=9), layers=4, pipeline=2)  # off: nothing to check
    with pytest.raises(ConfigError, match="pipeline"):
        check_early_exit(on, layers=4, pipeline=2)
    with pytest.raises(ConfigError, match="minLayer"):
        check_early_exit(on, layers=2, pipeline=1)
    with pytest.raises(ValidationError):
        EarlyExitLossSpec(loss_weight=-1.0)
    assert TrainingSpec(steps=1).early_exit.loss_weight == 0.0


@pytest.mark.usefixtures("one_thread")
def test_weight_zero_keeps_the_plain_objective_exactly(tmp_path: Path) -> None:
    plain = _trainer(tmp_path / "plain", 0.0, micro=4)
    assert type(plain.runner) is LocalRunner  # the default trains exactly as before
    exits = _trainer(tmp_path / "exits", 1.0, micro=4)
    assert isinstance(exits.runner, ExitLossRunner)
    exits.runner.scales = {}  # the runner's own loop with no exit term must be LocalRunner's, bit for bit
    for _ in range(2):
        assert plain.train_step().loss == exits.train_step().loss
    for (name, p), q in zip(plain.model.named_parameters(), exits.model.parameters(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.usefixtures("one_thread")
def test_activation_checkpointing_recomputes_without_adding_exits(tmp_path: Path) -> None:
    """Recomputed block outputs in backward must not count as exits again: the same gradients either way."""
    plain = _trainer(tmp_path / "plain", 1.0, micro=2)
    recomputed = _trainer(tmp_path / "recomputed", 1.0, micro=2, checkpointing=True)
    for _ in range(2):
        assert math.isclose(plain.train_step().loss, recomputed.train_step().loss, rel_tol=1e-5)
    for (name, p), q in zip(plain.model.named_parameters(), recomputed.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)


def _exit_accuracy(trainer: Trainer, layer: int) -> float:
    """Token accuracy of the shared head on block `layer`'s output (1-based) over answer tokens of a batch
    from far beyond the training steps."""
    stage = trainer.model
    assert stage.norm is not None and stage.head is not None
    inputs, targets = trainer.corpus.batch(100_000, 16)
    kept: list[torch.Tensor] = []
    hook = stage.blocks[str(layer - 1)].register_forward_hook(lambda _m, _a, out: kept.append(out.x_BSD))
    with torch.no_grad():
        stage(inputs)
        predicted = stage.head(stage.norm(kept[0])).argmax(-1)
    hook.remove()
    answers = targets != -100
    return float((predicted == targets)[answers].float().mean())


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_the_exit_loss_makes_an_early_exit_more_accurate(tmp_path: Path) -> None:
    accuracy = {}
    for weight in (0.0, 1.0):
        trainer = _trainer(tmp_path / str(weight), weight, steps=80)
        for _ in range(80):
            trainer.train_step()
        accuracy[weight] = _exit_accuracy(trainer, layer=1)
    # Measured: 0.52 without, 0.70 with (layer 1 of 3, 80 steps of the template domain).
    assert accuracy[1.0] > accuracy[0.0] + 0.08, accuracy
