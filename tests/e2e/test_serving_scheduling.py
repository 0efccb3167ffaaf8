"""An InferenceService places its model servers as a MoETrainingJob places its workers (real control plane):
nodeSelector, tolerations, priorityClassName and imagePullPolicy reach the Deployment's pods, a nodeSelector key the
API server would refuse is refused at apply, and the server pods mount no API token and a bounded /dev/shm. Before,
the spec had none of these fields (the API server pruned them) and the pods mounted the ServiceAccount's token."""

from __future__ import annotations

from harness import Cluster, OperatorProcess, wait_for
from manifests import inference_service

NAME = "placed"
PLACEMENT = {
    "nodeSelector": {"nvidia.com/gpu.product": "H100"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "priorityClassName": "serving-high",
    "imagePullPolicy": "Always",
}


def test_placement_reaches_the_model_servers_and_a_bad_key_is_refused(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    cluster.kubectl.apply(inference_service(NAME, namespace, PLACEMENT))
    deployment = wait_for("the Deployment", lambda: cluster.read("Deployment", namespace, NAME))
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == PLACEMENT["nodeSelector"]
    assert pod["tolerations"] == PLACEMENT["tolerations"]
    assert pod["priorityClassName"] == "serving-high"
    assert pod["containers"][0]["imagePullPolicy"] == "Always"
    assert pod["automountServiceAccountToken"] is False
    (shm,) = [v for v in pod["volumes"] if v["name"] == "dshm"]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Gi"}

    bad = inference_service("misplaced", namespace, {"nodeSelector": {"gpu type": "H100"}})
    refused = cluster.kubectl.apply(bad, check=False)
    assert refused.returncode != 0 and "nodeSelector: every key must be a label key" in refused.stderr
