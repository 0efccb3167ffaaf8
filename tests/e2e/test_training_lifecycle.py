"""MoETrainingJob lifecycle on a real control plane: children, conditions that follow the pods, suspend and
resume, deadlines, TTL, garbage collection, and an operator restart that duplicates nothing. Worker failures and
group restarts: test_training_recovery.py."""

from __future__ import annotations

import json
import time
from functools import partial
from typing import Any

from harness import Cluster, OperatorProcess, wait_for
from manifests import training_job

from moeops.devcluster import FakeKubelet

PLURAL = "moetrainingjobs"
LABEL = "moeops.dev/training-job"


def pods(cluster: Cluster, ns: str, name: str, *, live_only: bool = True) -> list[dict[str, Any]]:
    items = cluster.list("Pod", ns, f"{LABEL}={name}")
    return [p for p in items if not p["metadata"].get("deletionTimestamp")] if live_only else items


def wait_pods(cluster: Cluster, ns: str, name: str, count: int, phase: str = "Pending") -> list[dict[str, Any]]:
    def ready() -> list[dict[str, Any]] | None:
        found = [p for p in pods(cluster, ns, name) if p.get("status", {}).get("phase", "Pending") == phase]
        return found if len(found) == count else None

    return wait_for(f"{count} {phase} pods of {name}", ready, timeout=90)


def wait_condition(cluster: Cluster, ns: str, name: str, type_: str, status: str = "True", timeout: float = 60):
    def probe() -> dict[str, Any] | None:
        cond = cluster.condition(PLURAL, ns, name, type_)
        return cond if cond and cond["status"] == status else None

    return wait_for(f"{name} condition {type_}={status}", probe, timeout=timeout)


def wait_state(cluster: Cluster, ns: str, name: str, state: str, timeout: float = 60) -> dict[str, Any]:
    return wait_for(
        f"{name} state {state}",
        lambda: cluster.status_if(PLURAL, ns, name, lambda s: s.get("state") == state),
        timeout=timeout,
    )


def event_reasons(cluster: Cluster, ns: str, name: str) -> set[str]:
    return {e["reason"] for e in cluster.events(ns, name)}


def test_children_appear_with_the_right_spec(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    cluster.kubectl.apply(
        training_job("tj", namespace, {"checkpoint": {"storage": {"claimName": "ckpt", "path": "/tj"}}})
    )
    job = wait_for("the worker Job", lambda: cluster.read("Job", namespace, "tj"))
    cm = wait_for("the ConfigMap", lambda: cluster.read("ConfigMap", namespace, "tj-config"))
    svc = wait_for("the headless Service", lambda: cluster.read("Service", namespace, "tj-workers"))
    owner = cluster.get(PLURAL, namespace, "tj")
    assert owner is not None
    for child in (job, cm, svc):
        (ref,) = child["metadata"]["ownerReferences"]
        assert ref["uid"] == owner["metadata"]["uid"] and ref["controller"] and ref["blockOwnerDeletion"]

    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    # The Job fails at its first pod failure; the operator restarts the whole group (test_training_recovery.py).
    assert spec["backoffLimit"] == 0 and spec["suspend"] is False
    assert [r["action"] for r in spec["podFailurePolicy"]["rules"]] == ["FailJob"]
    assert job["metadata"]["labels"]["moeops.dev/restart-attempt"] == "0"
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == "tj-workers" and pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MASTER_ADDR"] == f"tj-0.tj-workers.{namespace}.svc"
    assert env["MOEOPS_NNODES"] == "2" and env["MOEOPS_CHECKPOINT_DIR"] == "/checkpoints/tj"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["checkpoints"]["persistentVolumeClaim"]["claimName"] == "ckpt"

    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    config = json.loads(cm["data"]["config.json"])
    assert config["architecture"]["layers"] == 2 and config["plan"]["data"] == 2

    status = wait_state(cluster, namespace, "tj", "Created")
    assert status["plan"]["summary"] == "dp2·tp1·pp1·ep1"
    assert "data parallel" in status["plan"]["reason"]
    assert status["progress"] == {"step": 0, "totalSteps": 100, "percent": 0}
    # The namespace enforces the restricted Pod Security Standard: the real admission plugin let them in.
    wait_pods(cluster, namespace, "tj", 2)
    assert "ChildrenCreated" in event_reasons(cluster, namespace, "tj")


def test_conditions_follow_the_pods_to_success(
    cluster: Cluster, operator: OperatorProcess, kubelet: FakeKubelet, namespace: str
) -> None:
    cluster.kubectl.apply(training_job("ok", namespace))
    for pod in wait_pods(cluster, namespace, "ok", 2):
        kubelet.run(pod)
    wait_condition(cluster, namespace, "ok", "Running")
    status = wait_state(cluster, namespace, "ok", "Running")
    assert status["workers"]["ready"] == 2
    for pod in wait_pods(cluster, namespace, "ok", 2, phase="Running"):
        kubelet.finish(pod, exit_code=0)
    wait_condition(cluster, namespace, "ok", "Succeeded")
    status = wait_state(cluster, namespace, "ok", "Succeeded")
    assert status["completionTime"] and status["workers"]["succeeded"] == 2
    running = cluster.condition(PLURAL, namespace, "ok", "Running")
    assert running and running["status"] == "False"
    assert {"AllWorkersReady", "AllWorkersSucceeded"} <= event_reasons(cluster, namespace, "ok")


def test_suspend_and_resume(cluster: Cluster, operator: OperatorProcess, kubelet: FakeKubelet, namespace: str) -> None:
    cluster.kubectl.apply(training_job("pausable", namespace))
    for pod in wait_pods(cluster, namespace, "pausable", 2):
        kubelet.run(pod)
    wait_condition(cluster, namespace, "pausable", "Running")

    patch = '{"spec": {"runPolicy": {"suspend": %s}}}'
    cluster.kubectl("patch", "moejob", "pausable", "-n", namespace, "--type=merge", "-p", patch % "true")
    suspended = wait_condition(cluster, namespace, "pausable", "Suspended")
    assert suspended["reason"] == "SuspendedByUser"
    job = cluster.read("Job", namespace, "pausable")
    assert job and job["spec"]["suspend"] is True
    wait_for("workers to stop", lambda: not pods(cluster, namespace, "pausable", live_only=False), timeout=60)
    assert wait_state(cluster, namespace, "pausable", "Suspended")

    cluster.kubectl("patch", "moejob", "pausable", "-n", namespace, "--type=merge", "-p", patch % "false")
    resumed = wait_condition(cluster, namespace, "pausable", "Suspended", status="False")
    assert resumed["reason"] == "Resumed"
    for pod in wait_pods(cluster, namespace, "pausable", 2):
        kubelet.run(pod)
    wait_state(cluster, namespace, "pausable", "Running")
    assert "Resumed" in event_reasons(cluster, namespace, "pausable")


def test_active_deadline_fails_the_job(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    cluster.kubectl.apply(training_job("late", namespace, {"runPolicy": {"activeDeadlineSeconds": 2}}))
    failed = wait_condition(cluster, namespace, "late", "Failed", timeout=90)
    assert failed["reason"] == "DeadlineExceeded"


def test_ttl_deletes_the_finished_job_and_its_children(
    cluster: Cluster, operator: OperatorProcess, kubelet: FakeKubelet, namespace: str
) -> None:
    cluster.kubectl.apply(
        training_job("brief", namespace, {"workers": {"replicas": 1}, "runPolicy": {"ttlSecondsAfterFinished": 2}})
    )
    (pod,) = wait_pods(cluster, namespace, "brief", 1)
    kubelet.finish(pod, exit_code=0)
    wait_condition(cluster, namespace, "brief", "Succeeded")
    wait_for("the TTL to delete the job", lambda: cluster.get(PLURAL, namespace, "brief") is None, timeout=60)
    wait_for("children to be collected", lambda: cluster.read("Job", namespace, "brief") is None, timeout=60)


def test_deletion_garbage_collects_every_child(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    cluster.kubectl.apply(training_job("doomed", namespace))
    wait_for("the worker Job", lambda: cluster.read("Job", namespace, "doomed"))
    cluster.kubectl("delete", "moejob", "doomed", "-n", namespace)
    for kind, name in (("Job", "doomed"), ("ConfigMap", "doomed-config"), ("Service", "doomed-workers")):
        wait_for(f"{kind} {name} to be collected", partial(cluster.absent, kind, namespace, name), timeout=60)
    wait_for("the worker pods to go", lambda: not pods(cluster, namespace, "doomed", live_only=False), timeout=60)


def test_a_deleted_worker_job_is_recreated(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    cluster.kubectl.apply(training_job("phoenix", namespace))
    first = wait_for("the worker Job", lambda: cluster.read("Job", namespace, "phoenix"))
    cluster.kubectl("delete", "job", "phoenix", "-n", namespace, "--cascade=background")

    def recreated() -> dict[str, Any] | None:
        job = cluster.read("Job", namespace, "phoenix")
        return job if job and job["metadata"]["uid"] != first["metadata"]["uid"] else None

    wait_for("the worker Job to be recreated", recreated, timeout=60)


def test_operator_restart_creates_no_duplicates(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    names = [f"restart-{i}" for i in range(6)]
    for name in names:
        cluster.kubectl.apply(training_job(name, namespace))
    time.sleep(0.5)
    operator.stop(9)  # a crash, mid-reconcile: no graceful shutdown
    operator.start()
    for name in names:
        wait_state(cluster, namespace, name, "Created", timeout=90)
    time.sleep(3)  # let any duplicate-making retry happen before counting
    for name in names:
        selector = f"{LABEL}={name}"
        assert len(cluster.list("Job", namespace, selector)) == 1
        assert len(cluster.list("ConfigMap", namespace, selector)) == 1
        assert len(cluster.list("Service", namespace, selector)) == 1
        assert len(pods(cluster, namespace, name)) == 2


def test_specs_only_the_operator_can_reject_fail_with_a_reason(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    cases: dict[str, tuple[dict[str, Any], str, str]] = {
        "topk-over-preset": ({"model": {"topK": 8}}, "InvalidModel", "topK (8)"),
        "heads-over-preset": ({"model": {"heads": 3}}, "InvalidModel", "multiple of heads"),
        "does-not-fit": (
            {"model": {"preset": "moe-100b"}, "workers": {"replicas": 1}},
            "PlanInfeasible",
            "does not fit",
        ),
        "batch-too-small": (
            {
                "training": {"globalBatchSize": 1},
                "parallelism": {"mode": "explicit", "data": 2, "tensor": 1, "pipeline": 1},
            },
            "InvalidParallelism",
            "globalBatchSize",
        ),
    }
    for name, (spec, _, _) in cases.items():
        cluster.kubectl.apply(training_job(name, namespace, spec))
    for name, (_, reason, text) in cases.items():
        failed = wait_condition(cluster, namespace, name, "Failed")
        assert failed["reason"] == reason and text in failed["message"], failed
        assert cluster.read("Job", namespace, name) is None
        assert reason in event_reasons(cluster, namespace, name)
    assert operator.alive()
    cluster.kubectl.apply(training_job("still-works", namespace))
    wait_state(cluster, namespace, "still-works", "Created")


def test_a_queued_job_waits_for_kueue_and_is_not_fought_over(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    cluster.kubectl.apply(training_job("queued", namespace, {"scheduling": {"queueName": "team-a"}}))
    job = wait_for("the worker Job", lambda: cluster.read("Job", namespace, "queued"))
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["spec"]["suspend"] is True
    assert wait_condition(cluster, namespace, "queued", "Suspended")["reason"] == "WaitingForQueue"
    # Kueue admits the workload by unsuspending the Job; the operator must leave that alone.
    cluster.kubectl("patch", "job", "queued", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    wait_condition(cluster, namespace, "queued", "Suspended", status="False")
    cluster.kubectl("annotate", "moejob", "queued", "-n", namespace, "touch=1")  # force a reconcile
    time.sleep(3)
    admitted = cluster.read("Job", namespace, "queued")
    assert admitted and admitted["spec"]["suspend"] is False
