"""Pure planning: resolve the model architecture, size it, and choose how to parallelise it."""

from .chooser import Plan, PlanInputs, choose_plan, validate_explicit_plan
from .job import plan_training_job
from .sizing import ModelSize, model_size, resolve_architecture

__all__ = [
    "ModelSize",
    "Plan",
    "PlanInputs",
    "choose_plan",
    "model_size",
    "plan_training_job",
    "resolve_architecture",
    "validate_explicit_plan",
]
