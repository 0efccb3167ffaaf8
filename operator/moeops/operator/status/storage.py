"""Whether a job's checkpoint claim can hold its checkpoints, in its status: condition `CheckpointStorageBlocked` and a
Warning event (pure).

Without it a claim that does not exist left the workers Pending (`persistentvolumeclaim "x" not found`, in the
scheduler's words on each pod), and a ReadWriteOnce claim shared by workers on several nodes left all but the first
node's pods in ContainerCreating (a Multi-Attach error in the kubelet's events): nothing on the job said why. The
status loop reads the claim of an active job that names one and this module says what is wrong with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .conditions import StatusUpdate, problem_status

CONDITION = "CheckpointStorageBlocked"
SHARED_MODES = ("ReadWriteMany",)
"""The access modes that let pods on several nodes mount the claim read-write at once."""


def claim_problem(claim_name: str, claim: Mapping[str, Any] | None, *, workers: int) -> tuple[str, str] | None:
    """(reason, message) of what keeps `claim` (as read; None: absent) from holding the checkpoints of `workers`
    worker pods (one per node), or None when it can."""
    if claim is None:
        return "ClaimNotFound", f"PersistentVolumeClaim {claim_name!r} (spec.checkpoint.storage.claimName) not found"
    status = claim.get("status") or {}
    if status.get("phase") == "Lost":
        return "ClaimLost", f"PersistentVolumeClaim {claim_name!r} lost its volume"
    modes = list(status.get("accessModes") or (claim.get("spec") or {}).get("accessModes") or [])
    if workers > 1 and not any(mode in SHARED_MODES for mode in modes):
        return "ClaimNotShared", (
            f"PersistentVolumeClaim {claim_name!r} is {', '.join(modes) or 'of no access mode'}: the {workers} workers"
            " run on different nodes and all write checkpoints to it, which needs ReadWriteMany"
        )
    return None


def storage_status(
    previous: Mapping[str, Any], problem: tuple[str, str] | None, *, generation: int, now: datetime
) -> StatusUpdate | None:
    """`CheckpointStorageBlocked` True with the problem (a Warning event when it is new), False once it is gone."""
    return problem_status(previous, CONDITION, problem, cleared_reason="ClaimUsable", generation=generation, now=now)
