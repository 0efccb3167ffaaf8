"""Pod-level pieces shared by workers and model servers: restricted Pod Security, resources, volumes."""

from __future__ import annotations

from typing import Any

from moeops.api.v1alpha1.common import GPU_RESOURCE, ResourceRequirements, VolumeLocation

RUN_AS_USER = 65532  # the runtime image's non-root user (images/runtime.Dockerfile, a test checks it).

# Pod Security Standard "restricted": non-root, no privilege escalation, no capabilities, RuntimeDefault seccomp.
POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_USER,
    "runAsGroup": RUN_AS_USER,
    "fsGroup": RUN_AS_USER,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}


def resources(spec: ResourceRequirements | None, gpus: int) -> dict[str, Any]:
    """Container resources: the user's CPU/memory plus `nvidia.com/gpu` from the GPU count."""
    requests = dict(spec.requests or {}) if spec else {}
    limits = dict(spec.limits or {}) if spec else {}
    if gpus > 0:
        requests[GPU_RESOURCE] = str(gpus)
        limits[GPU_RESOURCE] = str(gpus)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def storage_volume(name: str, location: VolumeLocation, *, read_only: bool) -> dict[str, Any]:
    """A PVC volume, or an emptyDir when no claim is named (not durable; documented on the field)."""
    if location.claim_name:
        return {"name": name, "persistentVolumeClaim": {"claimName": location.claim_name, "readOnly": read_only}}
    return {"name": name, "emptyDir": {}}


SHM_FLOOR_BYTES = 1 << 30
"""/dev/shm for a small model (or a model server): torch's IPC tensors and NCCL's intra-node buffers fit in 1 GiB."""


def shm_size_limit(model_bytes: int = 0) -> str:
    """The size limit of a RAM-backed /dev/shm: room for one copy of the model's weights (`model_bytes`: what ranks
    of a node hand each other through shared memory is at most that: a staged checkpoint, expert weights moving
    between local ranks), and at least SHM_FLOOR_BYTES. Without a limit a tmpfs can grow to half the node's RAM,
    all of it charged to the pod's memory: a runaway writer gets the pod OOM-killed instead of an ENOSPC."""
    mib = (max(SHM_FLOOR_BYTES, model_bytes) + (1 << 20) - 1) >> 20
    return f"{mib >> 10}Gi" if mib % 1024 == 0 else f"{mib}Mi"  # the API server's canonical form: no false drift


def scratch_volumes(shm_limit: str | None = None) -> list[dict[str, Any]]:
    """Writable /tmp (the root filesystem is read-only) and a RAM-backed /dev/shm for torch's IPC, bounded."""
    return [
        {"name": "tmp", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_limit or shm_size_limit()}},
    ]


def scratch_mounts() -> list[dict[str, Any]]:
    return [{"name": "tmp", "mountPath": "/tmp"}, {"name": "dshm", "mountPath": "/dev/shm"}]


def field_env(name: str, field_path: str) -> dict[str, Any]:
    """An environment variable from the downward API."""
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


THREADS_ENV = "OMP_NUM_THREADS"


def cpu_threads_env(container: str, spec: ResourceRequirements | None) -> list[dict[str, Any]]:
    """OMP_NUM_THREADS from the container's own CPU limit (else its request), through the Downward API rounded up
    to whole CPUs — torch otherwise starts a thread per CPU of the node, and N workers on one node then fight over
    its cores (one torchrun process per pod: torchrun sets 1 only when it starts several). Nothing when the spec
    gives no CPU figure (the Downward API would answer the node's allocatable for a missing limit)."""
    for kind, given in (("limits", spec.limits if spec else None), ("requests", spec.requests if spec else None)):
        if given and "cpu" in given:
            ref = {"containerName": container, "resource": f"{kind}.cpu", "divisor": "1"}
            return [{"name": THREADS_ENV, "valueFrom": {"resourceFieldRef": ref}}]
    return []
