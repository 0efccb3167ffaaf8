"""The next attempt's worker Job refused by the API server is on the job, not only in the operator's log (real
control plane): a worker failed, the operator restarted the group, and a policy that came in meanwhile refuses the
fresh Job. The job shows `ChildRejected` with the API server's message and one Warning event from the operator."""

from __future__ import annotations

from typing import Any

from admission_policy import refusing
from harness import Cluster, OperatorProcess, wait_for
from test_training_lifecycle import PLURAL, wait_condition
from test_training_recovery import apply_and_run

from moeops.devcluster import FakeKubelet
from moeops.operator.naming import OPERATOR_NAME

NAME = "refused-again"
POLICY_MESSAGE = "the cluster's policy refuses this job's next worker Job"


def rejected_events(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    events = cluster.events(namespace, NAME)
    return [e for e in events if e["reason"] == "ChildRejected" and e["source"].get("component") == OPERATOR_NAME]


def test_a_worker_job_refused_on_recreate_is_a_condition_and_a_warning(
    cluster: Cluster, operator: OperatorProcess, kubelet: FakeKubelet, namespace: str
) -> None:
    _, workers = apply_and_run(cluster, kubelet, namespace, NAME)
    with refusing(cluster, namespace, "jobs", NAME, POLICY_MESSAGE):
        kubelet.finish(workers[0], exit_code=1)  # a group restart: the Job deleted, and a fresh one created
        condition = wait_condition(cluster, namespace, NAME, "ChildRejected", timeout=90)
        assert condition["reason"] == "ChildRejected"
        assert POLICY_MESSAGE in condition["message"] and f"create Job {namespace}/{NAME}" in condition["message"]
        assert cluster.read("Job", namespace, NAME) is None
        events = wait_for("the Warning event", lambda: rejected_events(cluster, namespace))
        assert len(events) == 1 and events[0]["type"] == "Warning"
        assert cluster.status(PLURAL, namespace, NAME)["restarts"] == 1
