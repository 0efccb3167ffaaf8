"""Names and labels of the objects the operator creates: stable, derived from the owner's name only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moeops.api import GROUP

PART_OF = "app.kubernetes.io/part-of"
MANAGED_BY = "app.kubernetes.io/managed-by"
COMPONENT = "app.kubernetes.io/component"
OPERATOR_NAME = "moeops-operator"
TRAINING_JOB_LABEL = f"{GROUP}/training-job"
INFERENCE_SERVICE_LABEL = f"{GROUP}/inference-service"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
POD_GROUP_LABEL = "scheduling.x-k8s.io/pod-group"
RESTART_ATTEMPT_LABEL = f"{GROUP}/restart-attempt"
"""On a worker Job and its pods: the group restart they belong to (JobSet: `jobset.sigs.k8s.io/restart-attempt`)."""
FIELD_MANAGER = OPERATOR_NAME


@dataclass(frozen=True)
class Owner:
    """The custom resource that owns the children being built."""

    api_version: str
    kind: str
    name: str
    namespace: str
    uid: str
    generation: int = 0

    def reference(self) -> dict[str, Any]:
        """An ownerReference: children are garbage-collected with the owner and point back to it."""
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def training_labels(job: str) -> dict[str, str]:
    return {PART_OF: "moeops", MANAGED_BY: OPERATOR_NAME, TRAINING_JOB_LABEL: job}


def serving_labels(service: str) -> dict[str, str]:
    return {PART_OF: "moeops", MANAGED_BY: OPERATOR_NAME, INFERENCE_SERVICE_LABEL: service}


def config_map_name(job: str) -> str:
    return f"{job}-config"


def workers_service_name(job: str) -> str:
    return f"{job}-workers"


def worker_job_name(job: str) -> str:
    # Pods of an Indexed Job are named and hostnamed `<job>-<index>`: rank 0 is `<job>-0`.
    return job


def rank0_address(job: str, namespace: str) -> str:
    return f"{worker_job_name(job)}-0.{workers_service_name(job)}.{namespace}.svc"


def metadata(owner: Owner, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": owner.namespace, "labels": labels, "ownerReferences": [owner.reference()]}
