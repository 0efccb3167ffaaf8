"""An InferenceService that may run two replicas or more gets a PodDisruptionBudget (maxUnavailable 1 over its
pods), and loses it when its replicas.max is edited below 2 (real control plane). Before, none was made: a node
drain could evict every model server of a service at once."""

from __future__ import annotations

import json
from typing import Any

from harness import Cluster, OperatorProcess, wait_for
from manifests import inference_service

NAME = "spread"


def budget(cluster: Cluster, namespace: str) -> dict[str, Any] | None:
    found = cluster.kubectl("get", "pdb", NAME, "-n", namespace, "-o", "json", check=False)
    return json.loads(found.stdout) if found.returncode == 0 else None


def test_a_service_of_two_replicas_or_more_has_a_disruption_budget(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    cluster.kubectl.apply(inference_service(NAME, namespace, {"replicas": {"min": 2, "max": 3}}))
    pdb = wait_for("the PodDisruptionBudget", lambda: budget(cluster, namespace))
    spec = pdb["spec"]
    assert spec["maxUnavailable"] == 1 and spec["selector"] == {"matchLabels": {"moeops.dev/inference-service": NAME}}
    deployment = wait_for("the Deployment", lambda: cluster.read("Deployment", namespace, NAME))
    assert deployment["spec"]["selector"] == spec["selector"]  # the budget covers exactly the service's pods
    assert pdb["metadata"]["ownerReferences"][0]["name"] == NAME  # garbage-collected with the service

    patch = json.dumps({"spec": {"replicas": {"min": 1, "max": 1}}})
    cluster.kubectl("patch", "inferenceservice", NAME, "-n", namespace, "--type=merge", "-p", patch)
    wait_for("the budget gone", lambda: budget(cluster, namespace) is None)
