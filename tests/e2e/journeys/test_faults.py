"""Journeys after success: a worker killed, the bus gone for a while, the job deleted mid-run."""

from __future__ import annotations

import time
from typing import Any

import pytest
from harness import Cluster, wait_for
from jobs import (
    apply_with_claim,
    checkpoint_steps,
    job_status,
    kill_training_rank,
    pod_pids,
    short_job,
    wait_done,
    wait_step,
    worker_pods,
)

from moeops.devcluster.platform import LocalPlatform

# Long enough that the fault lands mid-run on an idle machine (~30 steps a second at 16 sequences of 64 tokens):
# the bus goes at step 30 and stays away OUTAGE_S, ~330 steps on an idle machine (the test checks the run outlasted it).
STEPS_KILLED, STEPS_NO_BUS, OUTAGE_S = 600, 800, 10


@pytest.mark.timeout(1200)
def test_a_killed_worker_costs_at_most_one_checkpoint_interval(
    platform: LocalPlatform, journey_cluster: Cluster, journey_namespace: str
) -> None:
    ns, name, interval = journey_namespace, "killed", 100
    apply_with_claim(journey_cluster, ns, short_job(name, steps=STEPS_KILLED, interval=interval))
    before = wait_step(platform, journey_cluster, ns, name, 150)
    loss_before = before["progress"]["loss"]
    victim = worker_pods(journey_cluster, ns, name)[-1]
    kill_training_rank(victim)
    killed_at = job_status(platform, journey_cluster, ns, name)["progress"]["step"]
    saved = [s for s in checkpoint_steps(platform, ns, name) if s <= killed_at]
    assert saved, "no checkpoint before the kill"

    def restarting_now() -> dict[str, Any] | None:
        found = journey_cluster.condition("moetrainingjobs", ns, name, "Restarting")
        return found if found and found["status"] == "True" else None

    restarting = wait_for("the Restarting condition", restarting_now, timeout=180)
    assert victim["metadata"]["name"] in restarting["message"], restarting
    resumed: list[dict[str, Any]] = []

    def first_report_after_restart() -> dict[str, Any] | None:
        status = job_status(platform, journey_cluster, ns, name)
        if (status.get("restarts") or 0) >= 1 and status.get("progress", {}).get("step", 0) != killed_at:
            resumed.append(status["progress"])
            return status
        return None

    wait_for("progress after the restart", first_report_after_restart, timeout=300, interval=0.5)
    final = wait_done(platform, journey_cluster, ns, name)
    assert final["state"] == "Succeeded", final
    assert final["restarts"] == 1 and final["progress"]["step"] == STEPS_KILLED
    lost = killed_at - max(saved)
    assert lost <= interval, f"killed at {killed_at}, last checkpoint {max(saved)}"
    assert resumed[0]["step"] >= max(saved), resumed
    # The loss curve continues from where it was, it does not start again from an untrained model's.
    assert resumed[0]["loss"] < 1.5 * loss_before, (loss_before, resumed[0])


@pytest.mark.timeout(1200)
def test_training_goes_on_while_the_bus_is_down(
    platform: LocalPlatform, journey_cluster: Cluster, journey_namespace: str
) -> None:
    ns, name = journey_namespace, "no-bus"
    apply_with_claim(journey_cluster, ns, short_job(name, steps=STEPS_NO_BUS, interval=1000))
    at_stop = wait_step(platform, journey_cluster, ns, name, 30)["progress"]["step"]
    assert platform.nats is not None
    platform.nats.stop()
    time.sleep(OUTAGE_S)  # the workers train on with the bus gone; the operator's view of progress stalls
    pods = worker_pods(journey_cluster, ns, name)
    assert all(pod_pids(p["metadata"]["uid"]) for p in pods), "the job ended before the bus came back: more steps"
    platform.nats.start()
    final = wait_done(platform, journey_cluster, ns, name)
    assert final["state"] == "Succeeded" and not final.get("restarts"), final
    assert final["progress"]["step"] == STEPS_NO_BUS > at_stop

    # Every rank's step metrics reached the bus in the end: buffered through the outage, sent after it.
    logs = journey_cluster.kubectl("logs", "-n", ns, "-l", f"moeops.dev/training-job={name}", "--tail=-1").stdout
    closed = [line for line in logs.splitlines() if "NATS metrics sink closed" in line]
    assert len(closed) == 2 and all(f"{STEPS_NO_BUS} sent, 0 dropped" in line for line in closed), closed


@pytest.mark.timeout(1200)
def test_deleting_a_job_ends_its_processes_within_the_grace_period_with_a_checkpoint(
    platform: LocalPlatform, journey_cluster: Cluster, journey_namespace: str
) -> None:
    ns, name = journey_namespace, "deleted"
    apply_with_claim(journey_cluster, ns, short_job(name, steps=2000, interval=1000))
    wait_step(platform, journey_cluster, ns, name, 10)
    pods = worker_pods(journey_cluster, ns, name)
    assert all(pod_pids(p["metadata"]["uid"]) for p in pods)
    grace = pods[0]["spec"]["terminationGracePeriodSeconds"]
    started = time.monotonic()
    journey_cluster.kubectl("delete", "mtj", "-n", ns, name, "--wait=false")
    wait_for("every worker process to end", lambda: not any(pod_pids(p["metadata"]["uid"]) for p in pods),
             timeout=grace + 30, interval=0.5)  # fmt: skip
    took = time.monotonic() - started
    assert took < grace, f"the workers took {took:.0f}s to end, grace {grace}s"
    saved = checkpoint_steps(platform, ns, name)
    assert saved and saved[-1] >= 10 and saved[-1] < 1000, f"no checkpoint on SIGTERM: {saved}"
    wait_for("the pods to be gone", lambda: not worker_pods(journey_cluster, ns, name), timeout=60)
