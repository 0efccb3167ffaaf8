"""Observed state of a MoETrainingJob: what the operator, the workers and the services report."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from .carbon import CarbonStatus
from .common import Conditions, KubeModel

State = Literal["Pending", "Filtering", "Created", "Running", "Restarting", "Suspended", "Succeeded", "Failed"]
CONDITION_TYPES = ("Created", "Running", "Restarting", "Suspended", "Succeeded", "Failed")


class PlanStatus(KubeModel):
    """The parallel plan in force and why it was chosen."""

    data: int = Field(ge=1, description="Data-parallel degree.")
    tensor: int = Field(ge=1, description="Tensor-parallel degree.")
    pipeline: int = Field(ge=1, description="Pipeline stages.")
    expert: int = Field(ge=1, description="Expert-parallel degree.")
    activation_checkpointing: bool = Field(description="Activations recomputed in backward.")
    optimizer_offload: bool = Field(default=False, description="Optimizer state offloaded to host memory.")
    memory_per_gpu_gib: float = Field(ge=0.0, description="Estimated peak memory per GPU.")
    summary: str = Field(description="Short form, e.g. `dp8·tp4·pp2·ep4`.")
    reason: str = Field(description="One line on why this plan.")


class WorkerCounts(KubeModel):
    """Worker pods by state, from the worker Job."""

    desired: int = Field(default=0, ge=0, description="Workers the job needs.")
    active: int = Field(default=0, ge=0, description="Pods pending or running.")
    ready: int = Field(default=0, ge=0, description="Pods running and ready.")
    succeeded: int = Field(default=0, ge=0, description="Workers that finished successfully.")
    failed: int = Field(default=0, ge=0, description="Worker pod failures so far.")


class Progress(KubeModel):
    """Training progress, reported by the workers."""

    step: int = Field(default=0, ge=0, description="Last completed optimizer step.")
    total_steps: int = Field(default=0, ge=0, description="Steps the job runs.")
    percent: int = Field(default=0, ge=0, le=100, description="step / totalSteps, in percent.")
    loss: float | None = Field(default=None, description="Training loss at `step`.")
    tokens_per_second: float | None = Field(default=None, ge=0.0, description="Throughput over all ranks.")
    eta_seconds: int | None = Field(default=None, ge=0, description="Estimated seconds to completion.")


class CheckpointStatus(KubeModel):
    """The newest complete checkpoint."""

    last_step: int = Field(ge=0, description="Step of the newest complete checkpoint.")
    location: str = Field(description="Where it is, e.g. `pvc://claim/path/step-00001000`.")
    time: datetime | None = Field(default=None, description="When it completed.")


class RebalanceStatus(KubeModel):
    """The load rebalancer's view of this job (copied by the operator from the rebalancer's report)."""

    epoch: int | None = Field(default=None, ge=0, description="Epoch of the newest plan; unset before the first.")
    applied_at_step: int | None = Field(default=None, ge=0, description="Step at which that plan takes effect.")
    predicted_gain: float | None = Field(
        default=None, description="The plan's predicted step-time reduction (0.1 = 10% faster)."
    )
    utilization: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Measured: the ranks' compute time over their step time (1.0: no rank waits for another).",
    )
    ranks_reporting: int | None = Field(default=None, ge=0, description="Ranks whose metrics reached the rebalancer.")
    last_step: int | None = Field(default=None, ge=0, description="Newest step the rebalancer has seen.")
    last_update: datetime | None = Field(default=None, description="When the rebalancer measured these figures.")
    refused_epoch: int | None = Field(
        default=None, ge=0, description="The newest plan the workers refused a part of; unset when they refused none."
    )
    refusal: str | None = Field(default=None, description="Why the workers refused it (the trainer's words).")


class FilterCounts(KubeModel):
    """Documents of the corpus by what the filter did with them, per level."""

    documents: int = Field(ge=0, description="Documents read.")
    kept: int = Field(ge=0, description="Documents in the filtered shards.")
    exact: int = Field(default=0, ge=0, description="Level 1: exact duplicates removed.")
    near: int = Field(default=0, ge=0, description="Level 1: near duplicates (MinHash-LSH) removed.")
    quality: int = Field(default=0, ge=0, description="Level 1: removed above the reference's perplexity threshold.")
    rebalance: int = Field(default=0, ge=0, description="Level 2: removed to move the domain mix toward its targets.")
    adversarial: int = Field(default=0, ge=0, description="Level 3: removed as least like the reference.")
    malformed: int = Field(default=0, ge=0, description="Lines that were no jsonl record with the text field.")


class FilterDrift(KubeModel):
    """How far the filtered corpus is from the trusted reference (population stability index, PSI)."""

    psi_lengths: float = Field(ge=0.0, description="PSI of document lengths (log2 bytes).")
    psi_terms: float = Field(ge=0.0, description="PSI of word use (hashed words).")
    threshold: float = Field(ge=0.0, description="Above this on either, the corpus has drifted (condition DataDrift).")
    drifted: bool = Field(description="Either PSI above the threshold.")


class FilterStatus(KubeModel):
    """The data filter stage (spec.data.filter): its Job's progress, then its counts."""

    state: Literal["Running", "Succeeded", "Failed"] = Field(description="The filter Job's outcome so far.")
    tasks: int = Field(ge=1, description="Pods of the filter Job.")
    succeeded: int = Field(default=0, ge=0, description="Pods that finished.")
    output: str = Field(description="Where the filtered shards and report.json are: what the workers train on.")
    counts: FilterCounts | None = Field(default=None, description="Set when the filter has succeeded.")
    drift: FilterDrift | None = Field(default=None, description="With a reference: the kept corpus against it.")
    message: str | None = Field(default=None, description="Why it failed.")


class MoETrainingJobStatus(KubeModel):
    """Observed state of a MoETrainingJob."""

    state: State | None = Field(default=None, description="Summary of the conditions.")
    conditions: Conditions
    observed_generation: int | None = Field(default=None, ge=0, description="Generation last reconciled.")
    plan: PlanStatus | None = Field(default=None, description="The parallel plan in force.")
    workers: WorkerCounts | None = Field(default=None, description="Worker pods by state.")
    restarts: int | None = Field(
        default=None,
        ge=0,
        description="Restarts of the whole group of workers after a worker failed (also the current attempt).",
    )
    restarts_count_towards_max: int | None = Field(
        default=None,
        ge=0,
        description="Restarts counted against runPolicy.backoffLimit: those after a disruption (preemption,"
        " eviction) are not.",
    )
    filter: FilterStatus | None = Field(
        default=None, description="The data filter stage, when spec.data.filter is set."
    )
    progress: Progress | None = Field(default=None, description="Training progress.")
    checkpoint: CheckpointStatus | None = Field(default=None, description="Newest checkpoint.")
    carbon: CarbonStatus | None = Field(default=None, description="Energy and emissions (patched by the operator).")
    rebalance: RebalanceStatus | None = Field(default=None, description="Load rebalancing.")
    start_time: datetime | None = Field(default=None, description="When the workers first started.")
    completion_time: datetime | None = Field(default=None, description="When the job succeeded or failed.")
