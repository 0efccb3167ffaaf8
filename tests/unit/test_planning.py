"""The parallel plan chooser: the seed's rule by scale, the memory fit, and explicit-degree validation."""

from __future__ import annotations

import pytest

from moeops.api.v1alpha1 import PRESETS, Architecture
from moeops.api.v1alpha1.trainingjob import ModelSpec
from moeops.operator.errors import InvalidSpec
from moeops.operator.planning import PlanInputs, choose_plan, model_size, validate_explicit_plan
from moeops.operator.planning.chooser import with_activation_checkpointing
from moeops.operator.planning.memory import GIB, Degrees, estimate_bytes_per_gpu
from moeops.operator.planning.sizing import resolve_architecture


def inputs(preset: str, world: int, gpn: int = 8, mem_gib: float = 80, batch: int = 4096) -> PlanInputs:
    return PlanInputs(
        arch=PRESETS[preset],
        world_size=world,
        gpus_per_node=gpn,
        gpu_memory_bytes=int(mem_gib * GIB),
        global_batch_size=batch,
    )


@pytest.mark.parametrize(
    ("preset", "expected_billions"),
    [("moe-debug", 0.000295744), ("moe-1b", 1.24), ("moe-10b", 10.59), ("moe-100b", 98.98)],
)
def test_preset_sizes(preset: str, expected_billions: float) -> None:
    total = model_size(PRESETS[preset]).total_params / 1e9
    assert total == pytest.approx(expected_billions, rel=0.05)


def test_debug_preset_size_by_hand() -> None:
    # 2 blocks × (attention 4·64² + router 64·4 + 2 norms·64 + 4 experts × 3·64·128) + 2 × 512·64 + final norm 64
    assert model_size(PRESETS["moe-debug"]).total_params == 2 * (16384 + 256 + 128 + 4 * 24576) + 65536 + 64


def test_active_parameters_count_top_k_experts_only() -> None:
    arch = PRESETS["moe-10b"]
    size = model_size(arch)
    per_expert = 3 * arch.d_model * arch.ffn_hidden
    assert size.total_params - size.active_params == arch.layers * (arch.experts - arch.top_k) * per_expert


@pytest.mark.parametrize(
    ("preset", "world", "summary", "needle"),
    [
        ("moe-1b", 8, "dp8·tp1·pp1·ep1", "~100 scale): data parallel"),
        ("moe-10b", 128, "dp128·tp1·pp1·ep1", "~100 scale): data parallel"),
        ("moe-10b", 1024, "dp128·tp4·pp2·ep1", "~1,000 scale): tensor parallel inside 8-GPU nodes"),
        ("moe-100b", 10240, "dp640·tp8·pp2·ep64", "~10,000 scale)"),
    ],
)
def test_the_seed_rule_by_cluster_scale(preset: str, world: int, summary: str, needle: str) -> None:
    plan = choose_plan(inputs(preset, world))
    assert plan.summary == summary
    assert needle in plan.reason
    d = plan.degrees
    assert d.data * d.tensor * d.pipeline == world
    assert plan.memory_per_gpu_bytes <= 0.9 * 80 * GIB


def test_the_early_exit_loss_keeps_every_layer_on_one_rank() -> None:
    x = inputs("moe-10b", 1024)
    plan = choose_plan(PlanInputs(**{**x.__dict__, "pipeline_allowed": False}))
    assert plan.degrees.pipeline == 1 and plan.degrees.data * plan.degrees.tensor == 1024
    assert "no pipeline stages (the early-exit loss" in plan.reason


def test_the_largest_scale_turns_on_activation_checkpointing_and_expert_parallel() -> None:
    plan = choose_plan(inputs("moe-100b", 10240))
    assert plan.degrees.activation_checkpointing and plan.degrees.expert > 1
    assert PRESETS["moe-100b"].experts % plan.degrees.expert == 0 and plan.degrees.data % plan.degrees.expert == 0


def test_a_model_too_big_for_data_parallel_escalates_until_it_fits() -> None:
    plan = choose_plan(inputs("moe-100b", 16))
    assert plan.degrees.tensor == 8 and plan.degrees.optimizer_offload
    assert "to fit:" in plan.reason and "tensor parallel 8" in plan.reason
    assert "tensor parallel 2" not in plan.reason  # intermediate steps of one kind are folded


def test_tensor_parallel_never_crosses_a_node() -> None:
    plan = choose_plan(inputs("moe-100b", 64, gpn=4))
    assert plan.degrees.tensor <= 4


def test_nothing_fits_raises_plan_infeasible() -> None:
    with pytest.raises(InvalidSpec) as info:
        choose_plan(inputs("moe-100b", 1, gpn=1))
    assert info.value.reason == "PlanInfeasible" and "does not fit" in info.value.message


def test_a_small_global_batch_reduces_data_parallelism() -> None:
    plan = choose_plan(inputs("moe-debug", 8, gpn=1, batch=4))
    assert plan.degrees.data <= 4 and plan.degrees.pipeline == 2


def test_memory_estimate_shrinks_with_sharding_and_checkpointing() -> None:
    arch = PRESETS["moe-10b"]
    base = estimate_bytes_per_gpu(arch, Degrees(8, 1, 1), 1, "bf16")
    assert estimate_bytes_per_gpu(arch, Degrees(64, 1, 1), 1, "bf16") < base
    assert estimate_bytes_per_gpu(arch, Degrees(8, 1, 1, activation_checkpointing=True), 1, "bf16") < base
    assert estimate_bytes_per_gpu(arch, Degrees(8, 1, 1, optimizer_offload=True), 1, "bf16") < base


@pytest.mark.parametrize(
    ("degrees", "fragment"),
    [
        (Degrees(2, 2, 1), "but the job has 8 GPUs"),
        (Degrees(1, 8, 1), "must divide heads"),
        (Degrees(8, 1, 1, expert=3), "must divide both experts"),
        (Degrees(1, 1, 8), "exceeds the model's layers"),
    ],
)
def test_explicit_degrees_are_validated(degrees: Degrees, fragment: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        validate_explicit_plan(inputs("moe-debug", 8), degrees)
    assert fragment in info.value.message


def test_explicit_degrees_that_overflow_memory_are_accepted_with_a_warning() -> None:
    plan = validate_explicit_plan(inputs("moe-100b", 8), Degrees(8, 1, 1))
    assert "WARNING: exceeds GPU memory" in plan.reason


def test_explicit_checkpointing_switch_overrides_the_chooser() -> None:
    x = inputs("moe-1b", 8)
    plan = with_activation_checkpointing(x, choose_plan(x), True)
    assert plan.degrees.activation_checkpointing and "by spec" in plan.reason


def test_preset_overrides_are_checked() -> None:
    assert resolve_architecture(ModelSpec(preset="moe-debug", layers=6)).layers == 6
    with pytest.raises(InvalidSpec, match="topK"):
        resolve_architecture(ModelSpec(preset="moe-debug", top_k=8))
    with pytest.raises(InvalidSpec, match="multiple of heads"):
        resolve_architecture(ModelSpec(preset="moe-debug", heads=3))
    explicit = ModelSpec(layers=2, d_model=32, heads=2, experts=2, top_k=1, ffn_hidden=16)
    assert resolve_architecture(explicit) == Architecture(
        layers=2, d_model=32, heads=2, experts=2, top_k=1, ffn_hidden=16
    )
