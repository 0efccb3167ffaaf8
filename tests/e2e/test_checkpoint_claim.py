"""The checkpoint claim a job names is checked, and the workers' pods carry no API token and a bounded /dev/shm
(real control plane).

Before: a job naming a claim that does not exist, or a ReadWriteOnce claim for workers on several nodes, showed
nothing on the job (its pods Pending, or stuck in ContainerCreating on a Multi-Attach error, said it to those who
looked at the pods); the worker pods mounted the ServiceAccount's token and an unbounded RAM-backed /dev/shm.
"""

from __future__ import annotations

from typing import Any

from harness import Cluster, OperatorProcess, wait_for
from manifests import training_job
from test_training_lifecycle import PLURAL, wait_condition

from moeops.operator.naming import OPERATOR_NAME

NAME = "claimed"
CLAIM = "ckpt-shared"
CONDITION = "CheckpointStorageBlocked"


def claim(namespace: str, mode: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": CLAIM, "namespace": namespace},
        "spec": {"accessModes": [mode], "resources": {"requests": {"storage": "1Gi"}}},
    }


def storage_events(cluster: Cluster, namespace: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in cluster.events(namespace, NAME)
            if e["reason"] == reason and e["source"].get("component") == OPERATOR_NAME]  # fmt: skip


def test_the_checkpoint_claim_is_checked_and_the_worker_pods_are_locked_down(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    storage = {"checkpoint": {"storage": {"claimName": CLAIM, "path": "/claimed"}}}
    cluster.kubectl.apply(training_job(NAME, namespace, {**storage, "workers": {"replicas": 2}}))

    missing = wait_condition(cluster, namespace, NAME, CONDITION)
    assert missing["reason"] == "ClaimNotFound" and f"'{CLAIM}'" in missing["message"]
    wait_for("the ClaimNotFound event", lambda: storage_events(cluster, namespace, "ClaimNotFound"))

    job = wait_for("the worker Job", lambda: cluster.read("Job", namespace, NAME))
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    (shm,) = [v for v in pod["volumes"] if v["name"] == "dshm"]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Gi"}  # moe-debug: the 1 GiB floor

    cluster.kubectl.apply(claim(namespace, "ReadWriteOnce"))
    wait_for("ClaimNotShared", lambda: (cluster.condition(PLURAL, namespace, NAME, CONDITION) or {}).get("reason")
             == "ClaimNotShared")  # fmt: skip
    shared = cluster.condition(PLURAL, namespace, NAME, CONDITION)
    assert shared and "ReadWriteOnce" in shared["message"] and "ReadWriteMany" in shared["message"]
    wait_for("the ClaimNotShared event", lambda: storage_events(cluster, namespace, "ClaimNotShared"))

    # Access modes are immutable: the user replaces the claim with a shared one, and the condition clears.
    cluster.kubectl("delete", "pvc", CLAIM, "-n", namespace, "--wait=false")
    cluster.core.patch_namespaced_persistent_volume_claim(CLAIM, namespace, {"metadata": {"finalizers": None}})
    gone = lambda: cluster.kubectl("get", "pvc", CLAIM, "-n", namespace, check=False).returncode != 0  # noqa: E731
    wait_for("the old claim gone", gone)
    cluster.kubectl.apply(claim(namespace, "ReadWriteMany"))
    cleared = wait_condition(cluster, namespace, NAME, CONDITION, status="False")
    assert cleared["reason"] == "ClaimUsable"
