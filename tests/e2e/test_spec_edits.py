"""Edits of a MoETrainingJob's mutable fields reach what they govern (real control plane, fake kubelet): one test per
field of `spec.runPolicy` (`suspend` is test_training_lifecycle's)."""

from __future__ import annotations

from harness import Cluster, OperatorProcess, wait_for
from manifests import merge, training_job
from test_training_lifecycle import PLURAL, wait_condition, wait_state
from test_training_recovery import apply_and_run

from moeops.devcluster import FakeKubelet


def job_deadline(cluster: Cluster, namespace: str, name: str) -> int | None:
    return ((cluster.read("Job", namespace, name) or {}).get("spec") or {}).get("activeDeadlineSeconds")


def test_an_edited_deadline_reaches_the_running_job(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    manifest = training_job("deadline", namespace, {"runPolicy": {"activeDeadlineSeconds": 3600}})
    cluster.kubectl.apply(manifest)
    wait_for("the Job's deadline", lambda: job_deadline(cluster, namespace, "deadline") == 3600)

    cluster.kubectl.apply(merge(manifest, {"spec": {"runPolicy": {"activeDeadlineSeconds": 7200}}}))
    wait_for("the longer deadline on the Job", lambda: job_deadline(cluster, namespace, "deadline") == 7200)

    cluster.kubectl("patch", "mtj", "deadline", "-n", namespace, "--type=json",
                    "-p", '[{"op": "remove", "path": "/spec/runPolicy/activeDeadlineSeconds"}]')  # fmt: skip
    wait_for("no deadline on the Job", lambda: job_deadline(cluster, namespace, "deadline") is None and "gone")


def test_a_raised_backoff_limit_counts_at_the_next_failure(
    cluster: Cluster, operator: OperatorProcess, kubelet: FakeKubelet, namespace: str
) -> None:
    spec = {"runPolicy": {"backoffLimit": 0}}
    manifest = training_job("budget", namespace, spec)
    _, workers = apply_and_run(cluster, kubelet, namespace, "budget", spec)

    cluster.kubectl.apply(merge(manifest, {"spec": {"runPolicy": {"backoffLimit": 1}}}))
    wait_for("the edit observed", lambda: cluster.status(PLURAL, namespace, "budget").get("observedGeneration") == 2)
    kubelet.finish(workers[0], exit_code=1)
    restarting = wait_condition(cluster, namespace, "budget", "Restarting")  # with the old limit 0: Failed
    assert "restart 1 of 1" in restarting["message"]
    assert cluster.status(PLURAL, namespace, "budget")["state"] != "Failed"


def test_an_edited_ttl_reschedules_the_deletion(
    cluster: Cluster, operator: OperatorProcess, kubelet: FakeKubelet, namespace: str
) -> None:
    spec = {"runPolicy": {"ttlSecondsAfterFinished": 3600}}
    manifest = training_job("kept", namespace, spec)
    _, workers = apply_and_run(cluster, kubelet, namespace, "kept", spec)
    for pod in workers:
        kubelet.finish(pod, exit_code=0)
    wait_state(cluster, namespace, "kept", "Succeeded")

    cluster.kubectl.apply(merge(manifest, {"spec": {"runPolicy": {"ttlSecondsAfterFinished": 1}}}))
    wait_for(
        "the job deleted after the shorter TTL", lambda: cluster.get(PLURAL, namespace, "kept") is None, timeout=30
    )
