"""MoETrainingJob: one distributed training run of a Mixture-of-Experts model.

The operator turns it into a ConfigMap (the resolved config and parallel plan), a headless Service (stable
worker hostnames for rendezvous) and an Indexed batch/v1 Job (one pod per worker, rank = completion index).
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, field_validator

from .carbon import CarbonSpec
from .common import (
    TRAINING_JOB_NAME_MAX,
    KubeModel,
    LabelValue,
    PrinterColumn,
    ResourceInfo,
    ResourceRequirements,
    Toleration,
    VolumeLocation,
    cel,
    check_label_keys,
    immutable,
    label_keys_rule,
    name_rules,
)
from .data import DataSpec as DataSpec  # re-exported: callers import it with the other job models
from .early_exit_loss import EarlyExitLossSpec
from .job_policy import RunPolicy, SchedulingSpec
from .presets import PresetName
from .trainingjob_status import MoETrainingJobStatus
from .worker_env import MAX_WORKER_ENV, WORKER_ENV_SCHEMA, EnvVar, distinct_names

KIND = "MoETrainingJob"
PLURAL = "moetrainingjobs"
SINGULAR = "moetrainingjob"
SHORT_NAMES = ["moejob", "mtj"]


class ModelSpec(KubeModel):
    """The model to train: a preset, or an explicit architecture (explicit fields override the preset's)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.preset) || (has(self.layers) && has(self.dModel) && has(self.heads)"
                    " && has(self.experts) && has(self.topK) && has(self.ffnHidden))",
                    "set model.preset, or all of layers, dModel, heads, experts, topK and ffnHidden",
                ),
                cel(
                    "!has(self.topK) || !has(self.experts) || self.topK <= self.experts",
                    "model.topK must be at most model.experts",
                    field_path=".topK",
                ),
                cel(
                    "!has(self.dModel) || !has(self.heads) || self.dModel % self.heads == 0",
                    "model.dModel must be a multiple of model.heads",
                    field_path=".dModel",
                ),
            ]
        }
    )

    preset: PresetName | None = Field(default=None, description="A named architecture (see the docs).")
    layers: int | None = Field(default=None, ge=1, le=512, description="Transformer blocks.")
    d_model: int | None = Field(default=None, ge=8, le=65536, description="Hidden size.")
    heads: int | None = Field(default=None, ge=1, le=512, description="Attention heads; must divide dModel.")
    experts: int | None = Field(default=None, ge=1, le=1024, description="Routed experts per MoE layer.")
    top_k: int | None = Field(default=None, ge=1, le=64, description="Experts per token; at most experts.")
    ffn_hidden: int | None = Field(default=None, ge=8, le=262144, description="Each expert's FFN hidden size.")
    shared_experts: int | None = Field(default=None, ge=0, le=8, description="Always-active shared experts.")
    vocab_size: int | None = Field(default=None, ge=2, le=1048576, description="Vocabulary size.")
    seq_len: int | None = Field(default=None, ge=8, le=1048576, description="Context length in tokens.")


class TrainingSpec(KubeModel):
    """Optimisation settings."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("self.warmupSteps < self.steps", "training.warmupSteps must be less than training.steps"),
                cel(
                    "!has(self.microBatchSize) || self.microBatchSize <= self.globalBatchSize",
                    "training.microBatchSize must be at most training.globalBatchSize",
                    field_path=".microBatchSize",
                ),
            ]
        }
    )

    steps: int = Field(ge=1, le=100_000_000, description="Optimizer steps to run.")
    global_batch_size: int = Field(default=256, ge=1, le=1_000_000, description="Sequences per step, all ranks.")
    micro_batch_size: int | None = Field(
        default=None, ge=1, le=65536, description="Sequences per forward pass per rank; chosen if unset."
    )
    learning_rate: float = Field(default=0.0003, gt=0.0, le=1.0, description="Peak AdamW learning rate.")
    warmup_steps: int = Field(default=0, ge=0, description="Linear warmup steps before cosine decay.")
    weight_decay: float = Field(default=0.1, ge=0.0, le=1.0, description="AdamW weight decay.")
    grad_clip: float = Field(default=1.0, gt=0.0, le=1000.0, description="Global gradient-norm clip.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(default="bf16", description="Compute precision.")
    aux_loss_coef: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description=(
            "Weight of the Switch/GShard load-balancing loss (0 disables), in Hugging Face's normalisation"
            " (Mixtral's load_balancing_loss_func: E * sum_e f_e * P_e with f_e not divided by top-k, so the loss"
            " is K at balance): an HF router_aux_loss_coef carries over as is; Megatron's coefficient is K times"
            " this one. Computed over the global batch (expert counts summed over the data-parallel ranks)."
        ),
    )
    z_loss_coef: float = Field(default=0.001, ge=0.0, le=1.0, description="Weight of the router z-loss.")
    bias_update_rate: float = Field(
        default=0.001,
        ge=0.0,
        le=1.0,
        description="Step of DeepSeek-V3's auxiliary-loss-free balancing bias per optimizer step (0 disables).",
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed for init, data order and dropout.")
    early_exit: EarlyExitLossSpec = Field(
        default_factory=EarlyExitLossSpec,
        description="LayerSkip's early-exit loss, which trains the exits an InferenceService's early exit takes.",
    )


class WorkerSpec(KubeModel):
    """The worker pods: one pod per node, each with `gpusPerWorker` GPUs."""

    replicas: int = Field(ge=1, le=100_000, description="Worker pods (nodes) in the job.")
    gpus_per_worker: int = Field(
        default=1,
        ge=0,
        le=16,
        description="GPUs per worker pod (`nvidia.com/gpu`); 0 runs on CPU (one rank).",
    )
    gpu_memory_gib: float = Field(
        default=80.0,
        gt=0.0,
        le=1024.0,
        alias="gpuMemoryGiB",
        description="Memory of one GPU, used by the parallel-plan chooser to check the memory fit.",
    )
    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Runtime image; the operator's default if unset.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, description="Image pull policy of the worker container."
    )
    resources: ResourceRequirements | None = Field(default=None, description="CPU/memory per worker pod.")
    node_selector: dict[str, LabelValue] | None = Field(
        default=None,
        max_length=32,
        description="Node labels the workers must run on.",
        json_schema_extra={"x-kubernetes-validations": [label_keys_rule("workers.nodeSelector")]},
    )
    tolerations: list[Toleration] | None = Field(
        default=None, max_length=32, description="Taints the workers tolerate."
    )
    env: list[EnvVar] | None = Field(
        default=None,
        max_length=MAX_WORKER_ENV,
        description="Extra environment variables of the worker container, after the operator's own; the names the"
        " operator sets (MOEOPS_*, MASTER_ADDR, MASTER_PORT) are refused, except the trainer's fault injection"
        " (MOEOPS_FAULT_*).",
        json_schema_extra=WORKER_ENV_SCHEMA,
    )

    _distinct_env_names = field_validator("env")(distinct_names)

    @field_validator("node_selector")
    @classmethod
    def _label_keys(cls, selector: dict[str, str] | None) -> dict[str, str] | None:
        check_label_keys("workers.nodeSelector", selector)
        return selector


class ParallelismSpec(KubeModel):
    """How the model is split over the GPUs. `auto` lets the operator choose by cluster scale."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.mode != 'auto' || (!has(self.data) && !has(self.tensor) && !has(self.pipeline)"
                    " && !has(self.expert))",
                    "parallelism degrees are chosen by the operator in mode auto; set mode: explicit to give them",
                ),
                cel(
                    "self.mode != 'explicit' || (has(self.data) && has(self.tensor) && has(self.pipeline))",
                    "parallelism mode explicit needs the data, tensor and pipeline degrees",
                ),
                cel(
                    "!has(self.expert) || !has(self.data) || self.data % self.expert == 0",
                    "parallelism.expert must divide parallelism.data (experts are sharded within the"
                    " data-parallel group)",
                    field_path=".expert",
                ),
            ]
        }
    )

    mode: Literal["auto", "explicit"] = Field(default="auto", description="`auto` or `explicit`.")
    data: int | None = Field(default=None, ge=1, le=100_000, description="Data-parallel degree.")
    tensor: int | None = Field(default=None, ge=1, le=64, description="Tensor-parallel degree (within a node).")
    pipeline: int | None = Field(default=None, ge=1, le=512, description="Pipeline stages.")
    expert: int | None = Field(default=None, ge=1, le=1024, description="Expert-parallel degree (default 1).")
    activation_checkpointing: bool | None = Field(
        default=None, description="Recompute activations in backward; chosen by the plan if unset."
    )


class CheckpointSpec(KubeModel):
    """Periodic distributed checkpoints; also written when a worker is preempted (SIGTERM)."""

    interval_steps: int = Field(default=500, ge=1, le=100_000_000, description="Steps between checkpoints.")
    keep: int = Field(default=3, ge=1, le=1000, description="Most recent checkpoints to keep.")
    storage: VolumeLocation = Field(default_factory=VolumeLocation, description="Where checkpoints go.")


class RebalanceSpec(KubeModel):
    """Dynamic load rebalancing from worker metrics (data shares, pipeline stages, expert placement)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.dataIntervalSteps) || self.dataIntervalSteps <= self.intervalSteps",
                    "rebalance.dataIntervalSteps must not exceed rebalance.intervalSteps",
                )
            ]
        }
    )

    enabled: bool = Field(default=True, description="Let the rebalancer re-plan this job.")
    interval_steps: int = Field(default=50, ge=1, le=1_000_000, description="Steps between re-plans.")
    data_interval_steps: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Steps between re-plans of the data shares alone (nothing moves but the split of the batch,"
        " so they can follow stragglers closely); expert placement and pipeline stages still wait intervalSteps."
        " Default: 2 (at most intervalSteps).",
    )
    min_gain: float = Field(
        default=0.05, ge=0.0, le=1.0, description="Minimum predicted step-time gain before a plan is applied."
    )
    expert_spare_slots: int = Field(
        default=0,
        ge=0,
        le=8,
        description="Extra expert slots per expert-parallel rank and MoE layer, beyond experts/expert degree,"
        " holding replicas of other ranks' experts so a plan can replicate hot experts (as DeepSeek's EPLB"
        " redundant experts). At most the experts per layer the other EP ranks hold; costs their weights and"
        " optimizer state per slot.",
    )


class MoETrainingJobSpec(KubeModel):
    """Desired state of a MoETrainingJob."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.parallelism.mode == 'auto' || !has(self.parallelism.data)"
                    " || !has(self.parallelism.tensor) || !has(self.parallelism.pipeline)"
                    " || self.parallelism.data * self.parallelism.tensor * self.parallelism.pipeline"
                    " == self.workers.replicas * (self.workers.gpusPerWorker == 0 ? 1 : self.workers.gpusPerWorker)",
                    "parallelism: data × tensor × pipeline must equal workers.replicas × workers.gpusPerWorker",
                    field_path=".parallelism",
                ),
                cel(
                    "!has(self.parallelism.expert) || !has(self.model.experts)"
                    " || self.model.experts % self.parallelism.expert == 0",
                    "parallelism.expert must divide model.experts",
                    field_path=".parallelism.expert",
                ),
                cel(
                    "!has(self.parallelism.tensor) || !has(self.model.heads)"
                    " || self.model.heads % self.parallelism.tensor == 0",
                    "parallelism.tensor must divide model.heads",
                    field_path=".parallelism.tensor",
                ),
                cel(
                    "!has(self.parallelism.pipeline) || !has(self.model.layers)"
                    " || self.parallelism.pipeline <= self.model.layers",
                    "parallelism.pipeline must be at most model.layers",
                    field_path=".parallelism.pipeline",
                ),
                cel(
                    "!has(self.training.earlyExit) || self.training.earlyExit.lossWeight == 0.0"
                    " || !has(self.parallelism.pipeline)"
                    " || self.parallelism.pipeline == 1",
                    "training.earlyExit needs every layer's hidden state on one rank: it is not supported with"
                    " pipeline parallelism (set parallelism.pipeline to 1 or training.earlyExit.lossWeight to 0)",
                    field_path=".training.earlyExit.lossWeight",
                ),
                cel(
                    "!has(self.training.earlyExit) || !has(self.model.layers)"
                    " || self.training.earlyExit.minLayer < self.model.layers",
                    "training.earlyExit.minLayer must be less than model.layers (the last layer is the output)",
                    field_path=".training.earlyExit.minLayer",
                ),
            ]
        }
    )

    model: ModelSpec = Field(description="The MoE model to train.", json_schema_extra=immutable("spec.model"))
    data: DataSpec = Field(description="Training data.", json_schema_extra=immutable("spec.data"))
    training: TrainingSpec = Field(description="Optimisation.", json_schema_extra=immutable("spec.training"))
    workers: WorkerSpec = Field(description="Worker pods.", json_schema_extra=immutable("spec.workers"))
    parallelism: ParallelismSpec = Field(
        default_factory=ParallelismSpec,
        description="How the model is split over the GPUs: `auto` lets the operator choose by cluster scale;"
        " `explicit` takes the data/tensor/pipeline/expert degrees given here.",
        json_schema_extra=immutable("spec.parallelism"),
    )
    checkpoint: CheckpointSpec = Field(
        default_factory=CheckpointSpec,
        description="Checkpointing.",
        json_schema_extra=immutable("spec.checkpoint"),
    )
    rebalance: RebalanceSpec = Field(default_factory=RebalanceSpec, description="Dynamic load rebalancing.")
    carbon: CarbonSpec = Field(default_factory=CarbonSpec, description="Carbon accounting.")
    run_policy: RunPolicy = Field(default_factory=RunPolicy, description="Suspend, retries, deadlines, TTL.")
    scheduling: SchedulingSpec = Field(
        default_factory=SchedulingSpec,
        description="Queueing and gang scheduling.",
        json_schema_extra=immutable("spec.scheduling"),
    )


RESOURCE = ResourceInfo(
    kind=KIND,
    plural=PLURAL,
    singular=SINGULAR,
    short_names=tuple(SHORT_NAMES),
    description="A distributed training run of a Mixture-of-Experts model (data, tensor, pipeline and expert"
    " parallel), reconciled by the moeops operator into an Indexed Job of worker pods.",
    spec_model=MoETrainingJobSpec,
    status_model=MoETrainingJobStatus,
    printer_columns=(
        PrinterColumn("State", ".status.state", description="Summary of the conditions."),
        PrinterColumn("Plan", ".status.plan.summary", description="Parallel plan in force."),
        PrinterColumn("Workers", ".spec.workers.replicas", "integer", "Worker pods."),
        PrinterColumn("Ready", ".status.workers.ready", "integer", "Worker pods ready."),
        PrinterColumn("Restarts", ".status.restarts", "integer", "Restarts of the whole group of workers."),
        PrinterColumn("Progress", ".status.progress.percent", "integer", "Percent of steps done."),
        PrinterColumn("Loss", ".status.progress.loss", "number", "Training loss at the last reported step.", 1),
        PrinterColumn("Tokens/s", ".status.progress.tokensPerSecond", "number", "Throughput over all ranks.", 1),
        PrinterColumn("Plan-Epoch", ".status.rebalance.epoch", "integer", "Newest rebalance plan.", 1),
        PrinterColumn("Energy-J", ".status.carbon.energyJoules", "number", "IT energy so far, joules.", 1),
        PrinterColumn("Age", ".metadata.creationTimestamp", "date"),
        PrinterColumn("Reason", ".status.plan.reason", description="Why this plan.", priority=1),
    ),
    # The Job adds "-workers"/"-config" and pods add "-<index>" with a 5-digit index at most.
    root_validations=name_rules(TRAINING_JOB_NAME_MAX),
)
