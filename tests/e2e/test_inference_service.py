"""InferenceService on a real control plane: Deployment + Service, readiness, the stop annotation, and a
model reference that is not servable yet."""

from __future__ import annotations

from typing import Any

from harness import Cluster, OperatorProcess, wait_for
from manifests import inference_service, training_job

from moeops.devcluster import FakeKubelet

PLURAL = "inferenceservices"


def ready_condition(cluster: Cluster, ns: str, name: str, status: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        cond = cluster.condition(PLURAL, ns, name, "Ready")
        return cond if cond and cond["status"] == status else None

    return wait_for(f"{name} Ready={status}", probe)


def server_pods(cluster: Cluster, ns: str, name: str) -> list[dict[str, Any]]:
    items = cluster.list("Pod", ns, f"moeops.dev/inference-service={name}")
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def test_deployment_and_service_serve_the_checkpoint(
    cluster: Cluster, operator: OperatorProcess, kubelet: FakeKubelet, namespace: str
) -> None:
    cluster.kubectl.apply(inference_service("chat", namespace, {"replicas": {"min": 2, "max": 4}}))
    deployment = wait_for("the Deployment", lambda: cluster.read("Deployment", namespace, "chat"))
    service = wait_for("the Service", lambda: cluster.read("Service", namespace, "chat"))
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MOEOPS_MODEL_DIR"] == "/models/moe-debug"
    (model_volume,) = [v for v in pod["volumes"] if v["name"] == "model"]
    assert model_volume["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert service["spec"]["ports"][0]["port"] == 80

    assert ready_condition(cluster, namespace, "chat", "False")["reason"] == "WaitingForReplicas"
    pods = wait_for("2 server pods", lambda: p if len(p := server_pods(cluster, namespace, "chat")) == 2 else None)
    for pod_obj in pods:
        kubelet.run(pod_obj)
    ready_condition(cluster, namespace, "chat", "True")
    status = cluster.status(PLURAL, namespace, "chat")
    assert status["url"] == f"http://chat.{namespace}.svc.cluster.local"
    assert status["model"] == "pvc://models/moe-debug"
    wait_for("2 ready replicas", lambda: cluster.status(PLURAL, namespace, "chat").get("readyReplicas") == 2)


def test_stop_annotation_scales_to_zero_and_back(
    cluster: Cluster, operator: OperatorProcess, kubelet: FakeKubelet, namespace: str
) -> None:
    cluster.kubectl.apply(inference_service("pausable", namespace))
    wait_for("the Deployment", lambda: cluster.read("Deployment", namespace, "pausable"))
    cluster.kubectl("annotate", "misvc", "pausable", "-n", namespace, "moeops.dev/stop=true")
    wait_for(
        "zero replicas",
        lambda: (d := cluster.read("Deployment", namespace, "pausable")) is not None and d["spec"]["replicas"] == 0,
    )
    assert ready_condition(cluster, namespace, "pausable", "False")["reason"] == "Stopped"
    stopped = wait_for(
        "Stopped=True",
        lambda: (c := cluster.condition(PLURAL, namespace, "pausable", "Stopped")) and c["status"] == "True" and c,
    )
    assert stopped["reason"] == "StopAnnotation"

    cluster.kubectl("annotate", "misvc", "pausable", "-n", namespace, "moeops.dev/stop-")
    wait_for(
        "one replica again",
        lambda: (d := cluster.read("Deployment", namespace, "pausable")) is not None and d["spec"]["replicas"] == 1,
    )
    (pod,) = wait_for("a server pod", lambda: server_pods(cluster, namespace, "pausable"))
    kubelet.run(pod)
    ready_condition(cluster, namespace, "pausable", "True")


def test_a_training_job_without_checkpoints_is_not_servable_yet(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    cluster.kubectl.apply(
        training_job(
            "trainer", namespace, {"checkpoint": {"storage": {"claimName": "ckpt"}}, "runPolicy": {"suspend": True}}
        )
    )
    cluster.kubectl.apply(training_job("ephemeral", namespace, {"runPolicy": {"suspend": True}}))
    cluster.kubectl.apply(
        inference_service("early", namespace, {"model": {"checkpoint": None, "trainingJobRef": {"name": "trainer"}}})
    )
    cluster.kubectl.apply(
        inference_service(
            "unreachable", namespace, {"model": {"checkpoint": None, "trainingJobRef": {"name": "ephemeral"}}}
        )
    )
    cluster.kubectl.apply(
        inference_service("orphan", namespace, {"model": {"checkpoint": None, "trainingJobRef": {"name": "missing"}}})
    )
    early = ready_condition(cluster, namespace, "early", "False")
    assert early["reason"] == "ModelNotReady" and "no checkpoint yet" in early["message"]
    assert ready_condition(cluster, namespace, "unreachable", "False")["reason"] == "ModelUnreachable"
    assert "not found" in ready_condition(cluster, namespace, "orphan", "False")["message"]
    for name in ("early", "unreachable", "orphan"):
        assert cluster.read("Deployment", namespace, name) is None
