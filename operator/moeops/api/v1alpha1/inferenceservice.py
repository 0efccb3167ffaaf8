"""InferenceService: an HTTP endpoint serving a trained MoE model, with adaptive early exit.

The operator turns it into a Deployment running the model server and a Service in front of it. Like KServe,
the annotation `moeops.dev/stop: "true"` scales it to zero and marks it Stopped without deleting it.

With a NATS bus, the operator's autoscaler sets the Deployment's replicas within `spec.replicas` from the load the
servers report (`moeops.operator.planning.autoscale`); a service scaled to zero is woken by setting the annotation
`moeops.dev/wake` to a new value.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import ConfigDict, Field, field_validator

from .carbon import CarbonStatus
from .common import (
    DNS_1035_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    TRAINING_JOB_NAME_MAX,
    Conditions,
    KubeModel,
    LabelValue,
    PrinterColumn,
    ResourceInfo,
    ResourceRequirements,
    Toleration,
    VolumeLocation,
    cel,
    check_label_keys,
    label_keys_rule,
    name_rules,
)

KIND = "InferenceService"
PLURAL = "inferenceservices"
SINGULAR = "inferenceservice"
# `isvc` is KServe's; ours must not collide with it.
SHORT_NAMES = ["moeisvc", "misvc"]
STOP_ANNOTATION = "moeops.dev/stop"
WAKE_ANNOTATION = "moeops.dev/wake"
"""Any value not acted on before wakes a service scaled to zero (there is no activator holding its requests)."""
CONDITION_TYPES = ("Ready", "Stopped")


class TrainingJobRef(KubeModel):
    """A MoETrainingJob in the same namespace whose newest checkpoint is served."""

    name: str = Field(
        min_length=1,
        max_length=TRAINING_JOB_NAME_MAX,
        pattern=DNS_1035_PATTERN,
        description="Its name: a name a MoETrainingJob can have (at most 48 characters, a DNS-1035 label).",
    )


class ModelSource(KubeModel):
    """The model to serve: from a training job, or from a checkpoint location. Exactly one."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.trainingJobRef) != has(self.checkpoint)",
                    "set exactly one of model.trainingJobRef and model.checkpoint",
                )
            ]
        }
    )

    training_job_ref: TrainingJobRef | None = Field(default=None, description="Serve this job's checkpoint.")
    checkpoint: VolumeLocation | None = Field(default=None, description="Serve the checkpoint at this location.")


class ReplicaSpec(KubeModel):
    """Replica bounds and the load each replica should carry.

    Without a NATS bus nothing measures load and the Deployment keeps max(min, 1) replicas."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("self.min <= self.max", "replicas.min must be at most replicas.max", field_path=".min")
            ]
        }
    )

    min: int = Field(default=1, ge=0, le=1000, description="Fewest replicas; 0 allows scale to zero when idle.")
    max: int = Field(default=1, ge=1, le=1000, description="Most replicas.")
    target_in_flight: int = Field(
        default=8, ge=1, le=10000, description="Concurrent requests per replica the autoscaler aims for."
    )
    stable_window_seconds: int = Field(
        default=60,
        ge=5,
        le=3600,
        description="Scale-up is immediate; scale-down waits until the load has been lower for this long.",
    )
    scale_to_zero_after_seconds: int = Field(
        default=300,
        ge=5,
        le=86400,
        description="With min 0: scale to zero after this long without a request. No activator holds requests"
        f" for a service at zero: set the annotation `{WAKE_ANNOTATION}` to a new value (e.g. a timestamp) to"
        " scale it to max(min, 1) and start this idle period over.",
    )


class EarlyExitSpec(KubeModel):
    """Adaptive early exit: a token leaves the network at the first layer confident enough."""

    enabled: bool = Field(default=False, description="Use exit heads when confident.")
    rule: Literal["softmax-max", "top2-margin"] = Field(
        default="softmax-max", description="Confidence measure (as compared in CALM)."
    )
    threshold: float = Field(
        default=0.9, ge=0.0, le=1.0, description="Exit when confidence ≥ threshold; 1.0 never exits."
    )
    min_layer: int = Field(default=1, ge=1, le=512, description="First layer at which a token may exit.")


class BatchingSpec(KubeModel):
    """Dynamic batching of concurrent requests."""

    max_batch_size: int = Field(default=16, ge=1, le=1024, description="Most sequences per forward pass.")
    max_latency_ms: int = Field(default=10, ge=1, le=60000, description="Longest a request waits for a batch.")


class InferenceServiceSpec(KubeModel):
    """Desired state of an InferenceService."""

    model: ModelSource = Field(description="The model to serve.")
    replicas: ReplicaSpec = Field(default_factory=ReplicaSpec, description="Replica bounds and scale target.")
    gpus: int = Field(default=1, ge=0, le=16, description="GPUs per replica (`nvidia.com/gpu`); 0 serves on CPU.")
    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Server image; the operator's default if unset.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, description="Image pull policy of the server container; the operator's default if unset."
    )
    resources: ResourceRequirements | None = Field(default=None, description="CPU/memory per replica.")
    node_selector: dict[str, LabelValue] | None = Field(
        default=None,
        max_length=32,
        description="Node labels the model servers must run on (e.g. a GPU type).",
        json_schema_extra={"x-kubernetes-validations": [label_keys_rule("nodeSelector")]},
    )
    tolerations: list[Toleration] | None = Field(
        default=None, max_length=32, description="Taints the model servers tolerate."
    )
    priority_class_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="PriorityClass of the model servers.",
    )
    port: int = Field(default=8080, ge=1024, le=65535, description="Port the server listens on.")
    threads: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="torch intra-op threads per replica (`moeops serve --threads`); unset: the container's CPU"
        " limit (else request), else the cgroup's CPU quota.",
    )
    early_exit: EarlyExitSpec = Field(default_factory=EarlyExitSpec, description="Adaptive early exit.")
    batching: BatchingSpec = Field(default_factory=BatchingSpec, description="Dynamic batching.")

    @field_validator("node_selector")
    @classmethod
    def _label_keys(cls, selector: dict[str, str] | None) -> dict[str, str] | None:
        check_label_keys("nodeSelector", selector)
        return selector


class AutoscalingStatus(KubeModel):
    """The autoscaler's last decision (written by the operator when it changes)."""

    last_scale_time: datetime | None = Field(default=None, description="When the replicas last changed.")
    reason: str | None = Field(
        default=None,
        description="Why: ScaleUp, ScaleDown, Stabilizing, ScaledToZero, Wake, Bounds or Steady.",
    )
    message: str | None = Field(default=None, description="The load behind the decision.")
    wake: str | None = Field(default=None, description=f"The last `{WAKE_ANNOTATION}` value acted on.")


class InferenceServiceStatus(KubeModel):
    """Observed state of an InferenceService."""

    conditions: Conditions
    observed_generation: int | None = Field(default=None, ge=0, description="Generation last reconciled.")
    url: str | None = Field(default=None, description="In-cluster URL of the service.")
    model: str | None = Field(default=None, description="The checkpoint location being served.")
    replicas: int = Field(default=0, ge=0, description="Replicas that exist.")
    ready_replicas: int = Field(default=0, ge=0, description="Replicas ready to serve.")
    desired_replicas: int | None = Field(
        default=None, ge=0, description="Replicas the autoscaler set; unset until it first decides."
    )
    autoscaling: AutoscalingStatus | None = Field(default=None, description="The autoscaler's last decision.")
    carbon: CarbonStatus | None = Field(default=None, description="Energy and emissions (patched by the operator).")


RESOURCE = ResourceInfo(
    kind=KIND,
    plural=PLURAL,
    singular=SINGULAR,
    short_names=tuple(SHORT_NAMES),
    description="An HTTP endpoint serving a trained MoE model with adaptive early exit; annotate with"
    f' `{STOP_ANNOTATION}: "true"` to scale it to zero.',
    spec_model=InferenceServiceSpec,
    status_model=InferenceServiceStatus,
    printer_columns=(
        PrinterColumn("Ready", '.status.conditions[?(@.type=="Ready")].status', description="Serving."),
        PrinterColumn("URL", ".status.url", description="In-cluster URL."),
        PrinterColumn("Replicas", ".status.readyReplicas", "integer", "Ready replicas."),
        PrinterColumn("Desired", ".status.desiredReplicas", "integer", "Replicas the autoscaler set.", priority=1),
        PrinterColumn("Age", ".metadata.creationTimestamp", "date"),
        PrinterColumn("Model", ".status.model", description="Checkpoint served.", priority=1),
    ),
    root_validations=(
        *name_rules(52),
        # A MoETrainingJob `x` has a headless Service `x-workers`; a service of that name would take it (or lose it).
        cel(
            "!self.metadata.name.endsWith('-workers')",
            "metadata.name must not end with '-workers': that is the name of a MoETrainingJob's worker Service",
        ),
    ),
)
