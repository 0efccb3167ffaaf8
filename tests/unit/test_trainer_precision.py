"""training.precision is honoured or refused, never silently changed: bf16 runs bf16 autocast on CPU too, fp16
is refused with the configuration-error exit, and the grouped experts compute in autocast's dtype (grouped_mm has
no autocast rule of its own)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from moeops.api.env import EXIT_CODE_INVALID_CONFIG
from moeops.api.v1alpha1.carbon import CarbonSpec
from moeops.api.v1alpha1.presets import Architecture
from moeops.api.v1alpha1.runtime import CheckpointConfig, ParallelPlan, TrainingRuntimeConfig, WorldSpec
from moeops.api.v1alpha1.trainingjob import DataSpec, RebalanceSpec, TrainingSpec
from moeops.model.moe import GroupedExperts, grouped_mm_supported
from moeops.trainer.distributed import World
from moeops.trainer.errors import ConfigError
from moeops.trainer.loop import Trainer, autocast_for
from moeops.trainer.metrics import NullSink

ARCH = Architecture(layers=2, d_model=32, heads=4, experts=4, top_k=2, ffn_hidden=32, vocab_size=64, seq_len=48)
CPU = torch.device("cpu")


def _config(tmp: Path, precision: str) -> TrainingRuntimeConfig:
    return TrainingRuntimeConfig(
        job_name="test",
        namespace="local",
        architecture=ARCH,
        training=TrainingSpec(
            steps=2, global_batch_size=4, learning_rate=0.01, warmup_steps=1, precision=precision, seed=1
        ),
        data=DataSpec(source="synthetic://template"),
        plan=ParallelPlan(data=1, tensor=1, pipeline=1, expert=1, activation_checkpointing=False),
        world=WorldSpec(nnodes=1, nproc_per_node=1, rendezvous_port=29500),
        checkpoint=CheckpointConfig(interval_steps=1000, keep=1, directory=str(tmp)),
        rebalance=RebalanceSpec(enabled=False),
        carbon=CarbonSpec(),
    )


def _output_dtypes(trainer: Trainer) -> set[torch.dtype]:
    """The dtypes of every Linear's and the experts' outputs during one training step."""
    seen: set[torch.dtype] = set()

    def record(_: nn.Module, __: object, out: Tensor) -> None:
        seen.add(out.dtype)

    for module in trainer.model.modules():
        if isinstance(module, nn.Linear | GroupedExperts):
            module.register_forward_hook(record)
    trainer.train_step()
    return seen


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_the_asked_precision_is_what_a_cpu_step_computes_in(tmp_path: Path, precision: str, dtype: torch.dtype) -> None:
    trainer = Trainer(_config(tmp_path, precision), World(0, 1, 0, CPU), NullSink(), tmp_path)
    assert _output_dtypes(trainer) == {dtype}
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # the weights stay fp32
    assert torch.isfinite(torch.tensor(trainer.train_step().loss))


def test_fp16_is_refused_as_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fp16") as refused:
        Trainer(_config(tmp_path, "fp16"), World(0, 1, 0, CPU), NullSink(), tmp_path)
    assert refused.value.exit_code == EXIT_CODE_INVALID_CONFIG == 78
    with pytest.raises(ConfigError):
        autocast_for("fp16", CPU)


@pytest.mark.skipif(not grouped_mm_supported(torch.bfloat16, 16, 32), reason="no grouped_mm in this torch")
def test_grouped_experts_compute_in_autocast_dtype_like_the_loop() -> None:
    torch.manual_seed(0)
    experts = GroupedExperts(dim=16, hidden=32, experts=4)
    for w in experts.parameters():
        nn.init.normal_(w, std=0.2)
    x_AD, counts_E = torch.randn(24, 16), torch.tensor([5, 0, 11, 8])
    outputs = {}
    for kernel in ("grouped", "loop"):
        experts.kernel = kernel
        with autocast_for("bf16", CPU):
            outputs[kernel] = experts(x_AD, counts_E)
    assert outputs["grouped"].dtype == outputs["loop"].dtype == torch.bfloat16
    torch.testing.assert_close(outputs["grouped"], outputs["loop"], rtol=2e-2, atol=2e-2)
    outputs["grouped"].float().sum().backward()
    assert all(w.grad is not None and w.grad.dtype == torch.float32 for w in experts.parameters())
