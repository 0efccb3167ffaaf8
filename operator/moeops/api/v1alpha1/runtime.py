"""The resolved configuration the operator hands to the runtime (trainer and model server).

It is the contract between the operator and the pods: the operator writes it (ConfigMap or environment), the
runtime validates it with these same models. Everything is resolved: no presets, no `auto`.
"""

from __future__ import annotations

from pydantic import Field

from .carbon import CarbonSpec
from .common import KubeModel
from .inferenceservice import BatchingSpec, EarlyExitSpec
from .presets import Architecture
from .trainingjob import DataSpec, RebalanceSpec, TrainingSpec


class ParallelPlan(KubeModel):
    """Resolved parallel degrees: data × tensor × pipeline = world size; expert divides data."""

    data: int = Field(ge=1)
    tensor: int = Field(ge=1)
    pipeline: int = Field(ge=1)
    expert: int = Field(ge=1)
    activation_checkpointing: bool
    optimizer_offload: bool = False


class WorldSpec(KubeModel):
    """Processes of the job: one node per worker pod, one process per GPU (one per pod on CPU)."""

    nnodes: int = Field(ge=1)
    nproc_per_node: int = Field(ge=1)
    rendezvous_port: int = Field(ge=1, le=65535)


class CheckpointConfig(KubeModel):
    interval_steps: int = Field(ge=1)
    keep: int = Field(ge=1)
    directory: str = Field(min_length=1, description="Directory inside the pod where checkpoints are written.")


class TrainingRuntimeConfig(KubeModel):
    """Everything a worker needs to train its share of a MoETrainingJob."""

    job_name: str
    namespace: str
    architecture: Architecture
    training: TrainingSpec
    data: DataSpec
    plan: ParallelPlan
    world: WorldSpec
    checkpoint: CheckpointConfig
    rebalance: RebalanceSpec
    carbon: CarbonSpec


class ServingRuntimeConfig(KubeModel):
    """Everything a model server needs to serve an InferenceService."""

    service_name: str
    namespace: str
    model_dir: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    early_exit: EarlyExitSpec
    batching: BatchingSpec
    threads: int | None = Field(default=None, ge=1, description="Intra-op threads; unset: from the CPU limit.")
