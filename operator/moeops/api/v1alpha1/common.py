"""Building blocks shared by the v1alpha1 resources: the base model, conditions, resources, volumes.

Every model here is both the operator's typed view of a custom resource and the source from which the CRD
schema is generated (see `moeops.api.crdgen`): field descriptions become `kubectl explain` text, constraints
become OpenAPI bounds, and `x-kubernetes-validations` entries become CEL rules enforced by the API server.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

VERSION = "v1alpha1"

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_1035_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
TRAINING_JOB_NAME_MAX = 48
"""The longest MoETrainingJob name: its Service adds "-workers" and its pods "-<index>" (5 digits at most)."""
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
QUANTITY_PATTERN = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+|[numkMGTPE]i?|Ki)?$"
GPU_RESOURCE = "nvidia.com/gpu"
LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY_PATTERN = rf"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{LABEL_NAME}$"
"""A label key (and a resource name): an optional DNS-subdomain prefix and `/`, then a name of at most 63 letters,
digits, `-`, `_` and `.`, alphanumeric at both ends (Kubernetes' qualified name)."""
LABEL_KEY_MAX = 253 + 1 + 63
LABEL_VALUE_PATTERN = rf"^({LABEL_NAME})?$"
LABEL_VALUE_MAX = 63


def cel(rule: str, message: str, *, field_path: str | None = None, reason: str | None = None) -> dict[str, Any]:
    """One CEL validation rule as it appears in `x-kubernetes-validations`."""
    entry: dict[str, Any] = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


def immutable(name: str) -> dict[str, Any]:
    """Field extras for a field that must not change once the resource exists (a CEL transition rule)."""
    return {"x-kubernetes-validations": [cel("self == oldSelf", f"{name} is immutable once the job exists")]}


def label_keys_rule(what: str) -> dict[str, Any]:
    """CEL on a map: every key a label key (the schema cannot bound or pattern a map's keys; this bounds them too)."""
    return cel(
        f"self.all(k, k.size() <= {LABEL_KEY_MAX} && k.matches('{LABEL_KEY_PATTERN}'))",
        f"{what}: every key must be a label key, [prefix/]name: the name at most 63 letters, digits, '-', '_' or"
        " '.', beginning and ending with a letter or digit; the prefix a DNS subdomain",
    )


def check_label_keys(what: str, values: Mapping[str, Any] | None) -> None:
    """`label_keys_rule` in Python (the typed model refuses what the API server refuses)."""
    for key in values or {}:
        if len(key) > LABEL_KEY_MAX or not re.match(LABEL_KEY_PATTERN, key):
            raise ValueError(f"{what}: {key!r} is not a label key")


class KubeModel(BaseModel):
    """Base of every CR model: camelCase on the wire, unknown fields rejected, values immutable in memory."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=False,
    )

    def to_wire(self) -> dict[str, Any]:
        """The camelCase JSON form, without unset optional fields (what the API server would store)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


LabelValue = Annotated[
    str, Field(max_length=LABEL_VALUE_MAX, pattern=LABEL_VALUE_PATTERN, description="A label value.")
]

NON_NEGATIVE_RULE = cel(
    "self.all(k, !isQuantity(self[k]) || !quantity(self[k]).isLessThan(quantity('0')))",
    "resource quantities must not be negative",
)

Quantity = Annotated[
    str,
    Field(
        pattern=QUANTITY_PATTERN,
        max_length=64,
        description="A Kubernetes resource quantity, e.g. `500m`, `2`, `16Gi`.",
    ),
]


class ResourceRequirements(KubeModel):
    """Compute resources of each container, as in a Pod's `resources`. GPUs come from `gpusPerWorker`."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    f"!has(self.limits) || !('{GPU_RESOURCE}' in self.limits)",
                    f"do not set {GPU_RESOURCE} in resources: the GPU count comes from gpusPerWorker/gpus",
                ),
                cel(
                    f"!has(self.requests) || !('{GPU_RESOURCE}' in self.requests)",
                    f"do not set {GPU_RESOURCE} in resources: the GPU count comes from gpusPerWorker/gpus",
                ),
                cel(
                    "!has(self.requests) || !has(self.limits) || self.requests.all(k, !(k in self.limits)"
                    " || !isQuantity(self.requests[k]) || !isQuantity(self.limits[k])"
                    " || quantity(self.requests[k]).compareTo(quantity(self.limits[k])) <= 0)",
                    "resources.requests must not exceed resources.limits for the same resource",
                    field_path=".requests",
                ),
            ]
        }
    )

    requests: dict[str, Quantity] | None = Field(
        default=None,
        max_length=16,
        description="Minimum resources per container, e.g. `cpu: 8`.",
        json_schema_extra={"x-kubernetes-validations": [label_keys_rule("resources.requests"), NON_NEGATIVE_RULE]},
    )
    limits: dict[str, Quantity] | None = Field(
        default=None,
        max_length=16,
        description="Maximum resources per container, e.g. `memory: 64Gi`.",
        json_schema_extra={"x-kubernetes-validations": [label_keys_rule("resources.limits"), NON_NEGATIVE_RULE]},
    )

    @field_validator("requests", "limits")
    @classmethod
    def _valid_quantities(cls, values: dict[str, str] | None) -> dict[str, str] | None:
        check_label_keys("resources", values)
        if any(v.startswith("-") for v in (values or {}).values()):
            raise ValueError("resources: quantities must not be negative")
        return values


class Toleration(KubeModel):
    """A Pod toleration, so that workers can run on tainted (e.g. GPU-only) nodes."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
                    "a toleration with operator Exists must not have a value",
                    field_path=".value",
                ),
                cel(
                    "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
                    "a toleration without a key must have operator Exists (it then tolerates every taint)",
                    field_path=".operator",
                ),
                cel(
                    "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                    "tolerationSeconds is for effect NoExecute only",
                    field_path=".tolerationSeconds",
                ),
            ]
        }
    )

    key: str | None = Field(
        default=None, max_length=LABEL_KEY_MAX, pattern=LABEL_KEY_PATTERN, description="Taint key to tolerate."
    )
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="`Exists` or `Equal`.")
    value: str | None = Field(
        default=None,
        max_length=LABEL_VALUE_MAX,
        pattern=LABEL_VALUE_PATTERN,
        description="Taint value (with `Equal`).",
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; empty tolerates all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="How long a `NoExecute` taint is tolerated before eviction."
    )


ABSOLUTE_PATH_PATTERN = r"^/[-A-Za-z0-9._/]*$"
NO_PARENT_SEGMENTS_RULE = cel("!self.contains('/../') && !self.endsWith('/..')", "path must not contain '..' segments")


def reject_parent_segments(path: str | None) -> str | None:
    if path is not None and ".." in path.split("/"):
        raise ValueError("path must not contain '..' segments")
    return path


class VolumeLocation(KubeModel):
    """A directory on a PersistentVolumeClaim (or, without a claim, on the pod's ephemeral disk)."""

    claim_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="PersistentVolumeClaim that holds the files. Without it the pod's ephemeral disk is used,"
        " which does not survive the pod: fine for a smoke test, not for real checkpoints.",
    )
    path: str = Field(
        default="/",
        min_length=1,
        max_length=1024,
        pattern=ABSOLUTE_PATH_PATTERN,
        description="Directory inside the volume, from its root (`/` is the whole volume); no `..` segments.",
        json_schema_extra={"x-kubernetes-validations": [NO_PARENT_SEGMENTS_RULE]},
    )

    _no_parent_segments = field_validator("path")(reject_parent_segments)

    def in_mount(self, mount_path: str) -> str:
        """This location's directory once the volume is mounted at `mount_path`."""
        return posixpath.normpath(posixpath.join(mount_path, self.path.lstrip("/")))


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(KubeModel):
    """A status condition in the metav1.Condition shape."""

    type: str = Field(max_length=316, description="Condition type, e.g. `Running`.")
    status: ConditionStatus = Field(description="`True`, `False` or `Unknown`.")
    reason: str = Field(
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="CamelCase machine-readable reason for the last transition.",
    )
    message: str = Field(default="", max_length=32768, description="Human-readable details.")
    last_transition_time: datetime = Field(description="When the status last changed.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation this condition was computed from."
    )


Conditions = Annotated[
    list[Condition],
    Field(
        default_factory=list,
        max_length=16,
        description="Current state as conditions, one per type.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    ),
]


@dataclass(frozen=True)
class PrinterColumn:
    """One `kubectl get` column."""

    name: str
    json_path: str
    type: Literal["string", "integer", "number", "boolean", "date"] = "string"
    description: str = ""
    priority: int = 0


@dataclass(frozen=True)
class ResourceInfo:
    """Everything the CRD generator and the operator need to know about one custom resource."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    description: str
    spec_model: type[KubeModel]
    status_model: type[KubeModel]
    printer_columns: tuple[PrinterColumn, ...] = ()
    root_validations: tuple[dict[str, Any], ...] = ()
    categories: tuple[str, ...] = ("moeops",)
    group: str = "moeops.dev"
    version: str = VERSION

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{self.group}"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


def name_rules(max_length: int) -> tuple[dict[str, Any], ...]:
    """CEL rules on metadata.name: children derive their names (and pod hostnames) from it."""
    return (
        cel(
            f"self.metadata.name.size() <= {max_length}",
            f"metadata.name must be at most {max_length} characters (child names and pod hostnames extend it)",
        ),
        cel(
            f"self.metadata.name.matches('{DNS_1035_PATTERN}')",
            "metadata.name must be a DNS-1035 label: lowercase letters, digits and '-', starting with a letter",
        ),
    )
