"""From a MoETrainingJob spec to its architecture and parallel plan."""

from __future__ import annotations

from moeops.api.v1alpha1.presets import Architecture
from moeops.api.v1alpha1.trainingjob import MoETrainingJobSpec

from .chooser import Plan, PlanInputs, choose_plan, validate_explicit_plan, with_activation_checkpointing
from .memory import GIB, Degrees
from .sizing import resolve_architecture


def plan_inputs(spec: MoETrainingJobSpec, arch: Architecture) -> PlanInputs:
    gpus_per_node = max(spec.workers.gpus_per_worker, 1)  # a CPU worker runs one rank.
    return PlanInputs(
        arch=arch,
        world_size=spec.workers.replicas * gpus_per_node,
        gpus_per_node=gpus_per_node,
        gpu_memory_bytes=int(spec.workers.gpu_memory_gib * GIB),
        global_batch_size=spec.training.global_batch_size,
        micro_batch_size=spec.training.micro_batch_size or 1,
        precision=spec.training.precision,
        pipeline_allowed=spec.training.early_exit.loss_weight == 0,  # the trainer refuses exit losses with PP
        cpu=spec.workers.gpus_per_worker == 0,
    )


def plan_training_job(spec: MoETrainingJobSpec) -> tuple[Architecture, Plan]:
    """Resolve the architecture and choose (or validate) the plan. Raises InvalidSpec."""
    arch = resolve_architecture(spec.model)
    inputs = plan_inputs(spec, arch)
    par = spec.parallelism
    if par.mode == "auto":
        plan = choose_plan(inputs)
        if par.activation_checkpointing is not None:
            plan = with_activation_checkpointing(inputs, plan, par.activation_checkpointing)
        return arch, plan
    assert par.data and par.tensor and par.pipeline  # CEL requires them in explicit mode.
    requested = Degrees(
        data=par.data,
        tensor=par.tensor,
        pipeline=par.pipeline,
        expert=par.expert or 1,
        activation_checkpointing=bool(par.activation_checkpointing),
    )
    return arch, validate_explicit_plan(inputs, requested)
