"""Deleting a MoETrainingJob or an InferenceService never waits for the operator (real control plane): no handler
needs a finalizer, and the one earlier operators left on every object is removed when the operator first sees it.
A job with `spec.carbon.maxIntensity` too: the carbon gate runs in the operator's status loop, not as a kopf timer."""

from __future__ import annotations

from harness import Cluster, OperatorProcess, wait_for
from manifests import inference_service, training_job

FINALIZER = "moeops.dev/finalizer"
JOBS, SERVICES = "moetrainingjobs", "inferenceservices"
GATED = {"carbon": {"region": "nowhere-land", "maxIntensity": 300}}
"""A carbon threshold for a region no intensity source knows: the gate runs and says so (`CarbonGateActive` False,
UnknownRegion), which shows it has looked at the job."""


def gate_ran(cluster: Cluster, namespace: str, name: str) -> bool:
    conditions = cluster.status(JOBS, namespace, name).get("conditions") or []
    return any(c.get("type") == "CarbonGateActive" and c.get("reason") == "UnknownRegion" for c in conditions)


def finalizers(cluster: Cluster, plural: str, namespace: str, name: str) -> list[str]:
    return list(((cluster.get(plural, namespace, name) or {}).get("metadata") or {}).get("finalizers") or [])


def test_delete_completes_while_the_operator_is_down(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    cluster.kubectl.apply(training_job("doomed", namespace))
    cluster.kubectl.apply(inference_service("doomed-svc", namespace))
    cluster.kubectl.apply(training_job("doomed-green", namespace, GATED))
    wait_for("the job reconciled", lambda: cluster.status(JOBS, namespace, "doomed").get("plan"))
    wait_for("the service reconciled", lambda: cluster.status(SERVICES, namespace, "doomed-svc").get("conditions"))
    wait_for("the carbon gate looked at the gated job", lambda: gate_ran(cluster, namespace, "doomed-green"))
    assert finalizers(cluster, JOBS, namespace, "doomed") == []
    assert finalizers(cluster, SERVICES, namespace, "doomed-svc") == []
    assert finalizers(cluster, JOBS, namespace, "doomed-green") == []

    operator.stop()
    try:
        for kind, name in (("mtj", "doomed"), ("misvc", "doomed-svc"), ("mtj", "doomed-green")):
            deleted = cluster.kubectl("delete", kind, name, "-n", namespace, "--timeout=20s", check=False)
            assert deleted.returncode == 0, deleted.stderr
        assert cluster.get(JOBS, namespace, "doomed") is None
        assert cluster.get(SERVICES, namespace, "doomed-svc") is None
        assert cluster.get(JOBS, namespace, "doomed-green") is None
    finally:
        operator.start()


def test_the_finalizer_an_earlier_operator_left_is_removed(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    cluster.kubectl.apply(training_job("upgraded", namespace, finalizers=[FINALIZER]))
    cluster.kubectl.apply(inference_service("upgraded-svc", namespace, finalizers=[FINALIZER]))
    cluster.kubectl.apply(training_job("upgraded-green", namespace, GATED, finalizers=[FINALIZER]))
    wait_for("the job's finalizer removed", lambda: not finalizers(cluster, JOBS, namespace, "upgraded"))
    wait_for("the service's finalizer removed", lambda: not finalizers(cluster, SERVICES, namespace, "upgraded-svc"))
    wait_for("the gated job's finalizer removed", lambda: not finalizers(cluster, JOBS, namespace, "upgraded-green"))
    wait_for("the job reconciled", lambda: cluster.status(JOBS, namespace, "upgraded").get("plan"))
    wait_for("the carbon gate looked at the gated job", lambda: gate_ran(cluster, namespace, "upgraded-green"))
