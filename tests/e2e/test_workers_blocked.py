"""Workers that cannot start are visible on the job (real control plane, fake kubelet): `WorkersBlocked` with the
cluster's own message and a Warning event, for pods the Job controller cannot create (FailedCreate: here an
admission policy refuses them) and for pods that cannot be scheduled (the scheduler's PodScheduled=False, written
here as the scheduler would: the test cluster has none); cleared once the workers run."""

from __future__ import annotations

from typing import Any

from admission_policy import refusing
from harness import Cluster, OperatorProcess, wait_for
from manifests import training_job
from test_training_lifecycle import wait_condition, wait_pods

from moeops.devcluster import FakeKubelet
from moeops.operator.naming import OPERATOR_NAME

NOTICED_S = 90  # the status loop looks every 10 s at workers not ready 20 s after their Job was created
POD_POLICY = "the cluster's policy refuses these worker pods"
UNSCHEDULABLE = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu. preemption: 0/1 nodes are available."


def warnings(cluster: Cluster, namespace: str, name: str, reason: str) -> list[dict[str, Any]]:
    """The operator's Warning events on the MoETrainingJob (its worker Job has the same name, and events of its own)."""
    return [e for e in cluster.events(namespace, name) if e["reason"] == reason and e["type"] == "Warning"
            and e["involvedObject"]["kind"] == "MoETrainingJob"]  # fmt: skip


def test_pods_the_job_controller_cannot_create(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    with refusing(cluster, namespace, "pods", "starved", POD_POLICY):
        cluster.kubectl.apply(training_job("starved", namespace))
        blocked = wait_condition(cluster, namespace, "starved", "WorkersBlocked", timeout=NOTICED_S)
    assert blocked["reason"] == "FailedCreate"
    assert "Job starved: " in blocked["message"] and POD_POLICY in blocked["message"], blocked
    (event,) = wait_for("the Warning event", lambda: warnings(cluster, namespace, "starved", "FailedCreate"))
    assert event["source"]["component"] == OPERATOR_NAME


def test_pods_that_cannot_be_scheduled(
    cluster: Cluster, operator: OperatorProcess, kubelet: FakeKubelet, namespace: str
) -> None:
    cluster.kubectl.apply(training_job("homeless", namespace))
    pods = wait_pods(cluster, namespace, "homeless", 2)
    condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": UNSCHEDULABLE}
    for pod in pods:
        cluster.core.patch_namespaced_pod_status(pod["metadata"]["name"], namespace, {"status": {"conditions": [
            condition]}})  # fmt: skip
    blocked = wait_condition(cluster, namespace, "homeless", "WorkersBlocked", timeout=NOTICED_S)
    assert blocked["reason"] == "Unschedulable" and UNSCHEDULABLE in blocked["message"]
    assert len(warnings(cluster, namespace, "homeless", "Unschedulable")) == 1

    for pod in wait_pods(cluster, namespace, "homeless", 2):
        kubelet.run(pod)
    cleared = wait_condition(cluster, namespace, "homeless", "WorkersBlocked", status="False", timeout=NOTICED_S)
    assert cleared["reason"] == "WorkersStarting"
