"""What a config must satisfy before any rank does work, checked where it is cheapest (no torch here).

The launcher (`launch.py`) runs these once, in one process, before torchrun starts the workers: a plan that cannot
run fails in about a second with exit 78, not after every worker has imported torch and joined the rendezvous. Each
worker runs them again (`Trainer.__init__`), because a pod's workers can be started by torchrun directly and a
multi-node world is only known in full once it has formed.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from moeops.api.v1alpha1.early_exit_loss import EarlyExitLossSpec
from moeops.api.v1alpha1.presets import Architecture
from moeops.api.v1alpha1.runtime import ParallelPlan, TrainingRuntimeConfig

from .errors import ConfigError


def check_plan(plan: ParallelPlan, arch: Architecture, world_size: int) -> None:
    """Refuse, with the numbers, a plan this model or this number of processes cannot run."""
    product = plan.data * plan.tensor * plan.pipeline
    if product != world_size:
        raise ConfigError(
            f"plan data×tensor×pipeline = {plan.data}×{plan.tensor}×{plan.pipeline} = {product}, "
            f"but {world_size} processes were started"
        )
    if plan.data % plan.expert or arch.experts % plan.expert:
        raise ConfigError(
            f"expert degree {plan.expert} must divide the experts per layer ({arch.experts}) and the"
            f" data-parallel degree ({plan.data})"
        )
    if plan.pipeline > arch.layers:
        raise ConfigError(f"pipeline degree {plan.pipeline} exceeds the model's layers ({arch.layers})")
    for what, size in (("heads", arch.heads), ("ffnHidden", arch.ffn_hidden)):
        if size % plan.tensor:
            raise ConfigError(f"tensor degree {plan.tensor} must divide architecture.{what} ({size})")


def check_early_exit(spec: EarlyExitLossSpec, layers: int, pipeline: int) -> None:
    """The trainer's refusal of what the CRD's CEL rules refuse (a runtime config is not validated by them)."""
    if spec.loss_weight == 0:
        return
    if pipeline > 1:
        raise ConfigError(
            "training.earlyExit needs every layer's hidden state on one rank: it is not supported with pipeline"
            f" parallelism (the plan has {pipeline} stages); set training.earlyExit.lossWeight to 0 or pipeline to 1"
        )
    if spec.min_layer >= layers:
        raise ConfigError(
            f"training.earlyExit.minLayer ({spec.min_layer}) must be less than the model's layers ({layers})"
        )


def load_config(path: Path) -> TrainingRuntimeConfig:
    """The resolved config, or a ConfigError naming every invalid field."""
    try:
        return TrainingRuntimeConfig.model_validate_json(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the config {path}: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid config {path}: {problems}") from exc


def check_config(config: TrainingRuntimeConfig, world_size: int) -> None:
    """Refuse, with the numbers, a config this model or this many processes cannot run."""
    training, plan, arch = config.training, config.plan, config.architecture
    check_plan(plan, arch, world_size)
    check_early_exit(training.early_exit, arch.layers, plan.pipeline)
    spare = config.rebalance.expert_spare_slots
    if spare > arch.experts - arch.experts // plan.expert:
        raise ConfigError(
            f"rebalance.expertSpareSlots ({spare}) must be at most the experts per layer held by other EP ranks"
            f" ({arch.experts} - {arch.experts}/{plan.expert}): a spare slot holds another rank's expert"
        )
    if training.global_batch_size % plan.data:
        raise ConfigError(
            f"training.globalBatchSize ({training.global_batch_size}) must be divisible by the"
            f" data-parallel degree ({plan.data})"
        )
