"""Worker failures on a real control plane: the whole group of workers restarts from a fresh Job (JobSet's failure
model), `runPolicy.backoffLimit` counts those restarts (not every pod that stops because a peer died, nor a
disruption), and failures a restart cannot cure fail the job at once."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from harness import Cluster, OperatorProcess, wait_for
from manifests import training_job
from test_training_lifecycle import PLURAL, event_reasons, pods, wait_condition, wait_pods, wait_state

from moeops.devcluster import FakeKubelet

ATTEMPT = "moeops.dev/restart-attempt"


def uids(items: list[dict[str, Any]]) -> set[str]:
    return {i["metadata"]["uid"] for i in items}


def next_job(cluster: Cluster, ns: str, name: str, old: dict[str, Any], attempt: int) -> dict[str, Any]:
    """The worker Job that replaced `old`, once it exists."""

    def probe() -> dict[str, Any] | None:
        job = cluster.read("Job", ns, name)
        return job if job and job["metadata"]["uid"] != old["metadata"]["uid"] else None

    job = wait_for(f"the worker Job of attempt {attempt}", probe, timeout=90)
    assert job["metadata"]["labels"][ATTEMPT] == str(attempt)
    return job


def apply_and_run(
    cluster: Cluster, kubelet: FakeKubelet, ns: str, name: str, spec: dict[str, Any] | None = None, replicas: int = 2
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Apply a training job, run every worker pod of its first Job, and wait for Running: the Job and its pods."""
    cluster.kubectl.apply(training_job(name, ns, spec))
    job = wait_for("the worker Job", lambda: cluster.read("Job", ns, name))
    workers = wait_pods(cluster, ns, name, replicas)
    for pod in workers:
        kubelet.run(pod)
    wait_state(cluster, ns, name, "Running")
    return job, workers


def run_next_attempt(
    cluster: Cluster, kubelet: FakeKubelet, ns: str, name: str, old: dict[str, Any], attempt: int, replicas: int = 2
) -> list[dict[str, Any]]:
    """Wait for the Job of `attempt` that replaced `old`, run its pods, and wait for Running again: its pods."""
    next_job(cluster, ns, name, old, attempt)
    workers = wait_pods(cluster, ns, name, replicas)
    for pod in workers:
        kubelet.run(pod)
    wait_state(cluster, ns, name, "Running")
    return workers


def restart_counts(cluster: Cluster, ns: str, name: str) -> tuple[int, int]:
    status = cluster.status(PLURAL, ns, name)
    return status.get("restarts", 0), status.get("restartsCountTowardsMax", 0)


def test_a_failed_worker_restarts_the_whole_group_which_then_succeeds(
    cluster: Cluster, operator: OperatorProcess, kubelet: FakeKubelet, namespace: str
) -> None:
    first_job, first = apply_and_run(cluster, kubelet, namespace, "heal")

    (rank1,) = [p for p in first if p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == "1"]
    kubelet.finish(rank1, exit_code=1)
    restarting = wait_condition(cluster, namespace, "heal", "Restarting")
    assert restarting["reason"] == "WorkerFailed"
    assert f"worker 1 (pod {rank1['metadata']['name']}) exited with code 1" in restarting["message"]
    assert "restart 1 of 1" in restarting["message"]
    assert restart_counts(cluster, namespace, "heal") == (1, 1)

    # A fresh Job of attempt 1, created only once every pod of attempt 0 had gone (Foreground deletion).
    job = next_job(cluster, namespace, "heal", first_job, attempt=1)
    assert not uids(first) & uids(pods(cluster, namespace, "heal", live_only=False))
    second = wait_pods(cluster, namespace, "heal", 2)
    assert {p["metadata"]["labels"][ATTEMPT] for p in second} == {"1"}
    service = cluster.read("Service", namespace, "heal-workers")
    assert service and service["spec"]["selector"][ATTEMPT] == "1"
    assert job["spec"]["backoffLimit"] == 0
    assert cluster.status(PLURAL, namespace, "heal")["state"] == "Restarting"

    for pod in second:
        kubelet.run(pod)
    recovered = wait_condition(cluster, namespace, "heal", "Restarting", status="False")
    assert recovered["reason"] == "WorkersRecovered"
    wait_state(cluster, namespace, "heal", "Running")
    for pod in wait_pods(cluster, namespace, "heal", 2, phase="Running"):
        kubelet.finish(pod, exit_code=0)
    status = wait_state(cluster, namespace, "heal", "Succeeded")
    assert (status["restarts"], status["restartsCountTowardsMax"]) == (1, 1)
    assert status["workers"]["succeeded"] == 2
    assert {"WorkerFailed", "AllWorkersSucceeded"} <= event_reasons(cluster, namespace, "heal")


def test_restarts_past_the_backoff_limit_fail_the_job_and_edits_of_the_limit_count(
    cluster: Cluster, operator: OperatorProcess, kubelet: FakeKubelet, namespace: str
) -> None:
    cluster.kubectl.apply(
        training_job("flaky", namespace, {"workers": {"replicas": 1}, "runPolicy": {"backoffLimit": 0}})
    )
    (first,) = wait_pods(cluster, namespace, "flaky", 1)
    first_job = cluster.read("Job", namespace, "flaky")
    assert first_job
    # Raised while the job runs: the next failure is judged by the new limit.
    patch = '{"spec": {"runPolicy": {"backoffLimit": 1}}}'
    cluster.kubectl("patch", "moejob", "flaky", "-n", namespace, "--type=merge", "-p", patch)
    wait_for("the edit", lambda: (cluster.get(PLURAL, namespace, "flaky") or {})["metadata"]["generation"] == 2)
    kubelet.run(first)
    wait_condition(cluster, namespace, "flaky", "Running")
    kubelet.finish(first, exit_code=1)
    assert "restart 1 of 1" in wait_condition(cluster, namespace, "flaky", "Restarting")["message"]

    next_job(cluster, namespace, "flaky", first_job, attempt=1)
    (second,) = wait_pods(cluster, namespace, "flaky", 1)
    kubelet.run(second)
    wait_condition(cluster, namespace, "flaky", "Running")
    kubelet.finish(second, exit_code=3)
    failed = wait_condition(cluster, namespace, "flaky", "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert f"pod {second['metadata']['name']}) exited with code 3" in failed["message"]
    assert "backoffLimit (1) reached: 1 restart(s) used" in failed["message"]
    status = wait_state(cluster, namespace, "flaky", "Failed")
    assert (status["restarts"], status["restartsCountTowardsMax"]) == (1, 1) and status["completionTime"]
    restarting = cluster.condition(PLURAL, namespace, "flaky", "Restarting")
    assert restarting and restarting["status"] == "False"
    # The failed attempt's Job stays, with its pod, for `kubectl logs`; it is never restarted again.
    job = cluster.read("Job", namespace, "flaky")
    assert job and job["metadata"]["labels"][ATTEMPT] == "1"
    assert {"WorkerFailed", "BackoffLimitExceeded"} <= event_reasons(cluster, namespace, "flaky")


def test_a_configuration_error_fails_at_once_without_a_restart(
    cluster: Cluster, operator: OperatorProcess, kubelet: FakeKubelet, namespace: str
) -> None:
    cluster.kubectl.apply(
        training_job("badcfg", namespace, {"workers": {"replicas": 2}, "runPolicy": {"backoffLimit": 5}})
    )
    job = wait_for("the worker Job", lambda: cluster.read("Job", namespace, "badcfg"))
    pod, _ = wait_pods(cluster, namespace, "badcfg", 2)
    kubelet.finish(pod, exit_code=78)  # EX_CONFIG: the trainer rejected its configuration
    failed = wait_condition(cluster, namespace, "badcfg", "Failed")
    assert failed["reason"] == "PodFailurePolicy" and "exit code 78" in failed["message"]
    status = wait_state(cluster, namespace, "badcfg", "Failed")
    assert status.get("restarts", 0) == 0
    still = cluster.read("Job", namespace, "badcfg")
    assert still and still["metadata"]["uid"] == job["metadata"]["uid"]
    assert "WorkerFailed" not in event_reasons(cluster, namespace, "badcfg")


def fail_as_disrupted(cluster: Cluster, pod: dict[str, Any]) -> None:
    """What a kubelet reports for a worker preempted by the scheduler: DisruptionTarget, then the trainer's exit
    after SIGTERM (143), in one status write (the fake kubelet has no preemption of its own)."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    disruption = {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}
    terminated = {"exitCode": 143, "reason": "Error", "startedAt": now, "finishedAt": now}
    status = {
        "phase": "Failed",
        "conditions": [
            {**disruption, "lastTransitionTime": now},
            {"type": "Ready", "status": "False", "reason": "PodFailed", "lastTransitionTime": now},
        ],
        "containerStatuses": [
            {
                "name": "trainer",
                "ready": False,
                "restartCount": 0,
                "image": "fake",
                "imageID": "",
                "state": {"terminated": terminated},
            },
        ],
    }
    meta = pod["metadata"]
    cluster.core.patch_namespaced_pod_status(
        meta["name"], meta["namespace"], {"status": status}, _content_type="application/merge-patch+json"
    )


def test_a_disruption_restarts_the_group_without_using_the_budget(
    cluster: Cluster, operator: OperatorProcess, kubelet: FakeKubelet, namespace: str
) -> None:
    first_job, first = apply_and_run(cluster, kubelet, namespace, "evicted", {"runPolicy": {"backoffLimit": 0}})
    fail_as_disrupted(cluster, first[0])
    restarting = wait_condition(cluster, namespace, "evicted", "Restarting")
    assert restarting["reason"] == "WorkerDisrupted" and "PreemptionByScheduler" in restarting["message"]
    assert restart_counts(cluster, namespace, "evicted") == (1, 0)
    run_next_attempt(cluster, kubelet, namespace, "evicted", first_job, attempt=1)
    assert "WorkerDisrupted" in event_reasons(cluster, namespace, "evicted")


def job_failed(job: dict[str, Any] | None) -> bool:
    conds = ((job or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Failed" and c["status"] == "True" for c in conds)


def test_a_failure_while_the_operator_is_down_is_restarted_once_when_it_is_back(
    cluster: Cluster, operator: OperatorProcess, kubelet: FakeKubelet, namespace: str
) -> None:
    first_job, first = apply_and_run(cluster, kubelet, namespace, "orphaned")
    operator.stop(9)
    try:
        kubelet.finish(first[0], exit_code=1)
        wait_for("the Job to fail", lambda: job_failed(cluster.read("Job", namespace, "orphaned")))
    finally:
        operator.start()  # its resume and its first look at the Job both see the failure: one restart, not two
    run_next_attempt(cluster, kubelet, namespace, "orphaned", first_job, attempt=1)
    assert restart_counts(cluster, namespace, "orphaned") == (1, 1)
    job = cluster.read("Job", namespace, "orphaned")
    assert job and job["metadata"]["labels"][ATTEMPT] == "1"
