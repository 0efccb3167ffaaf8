"""Journey (d): one rank made slower (the trainer's fault injection, set through `spec.workers.env`) → the
rebalancer's plan reaches the workers, `.status.rebalance` shows it, and the step time falls.

The step times are those the ranks published on the bus (the metrics stream): per step, the slowest rank's. On the
busy 2 cores (load 10-20): median 5.8 s before the switch of step 11 to shares [14, 2], 1.8 s after; 194 s in all
with the platform's start. The same job whose plan never pays (minGain 1.0) kept 4.4 s → 4.2 s around step 11:
the comparison fails without a plan."""

from __future__ import annotations

import pytest
from harness import Cluster
from jobs import apply_with_claim, short_job, wait_done, worker_pods
from step_times import applied_plans, median_over, step_seconds, stored_metrics

from moeops.devcluster.platform import LocalPlatform

SLOWED_RANK = 1
DELAY_S_PER_SEQUENCE = 0.5
"""Rank 1 sleeps 8 × 0.5 = 4 s more per step on its even share: far more than the compute of a step, which swings
by seconds when other work crowds the machine's cores (and grows on rank 0 with the share it takes over)."""
STEPS = 32
"""The plan switches at about step 8 (5 steps reported by every rank, a round, then the 2-step margin): 20 after it."""
MIN_BEFORE, MIN_AFTER = 5, 15


@pytest.mark.timeout(1200)
def test_a_slowed_rank_gets_less_data_and_the_step_time_falls(
    platform: LocalPlatform, journey_cluster: Cluster, journey_namespace: str
) -> None:
    ns, name = journey_namespace, "slowed"
    job = short_job(name, steps=STEPS, interval=STEPS)
    job["spec"]["workers"]["env"] = [
        {"name": "MOEOPS_FAULT_SEQUENCE_DELAY", "value": f"{SLOWED_RANK}:{DELAY_S_PER_SEQUENCE}"}
    ]
    # One plan in this run: the next could only come intervalSteps after it (data shares too: their own default
    # interval is 2 steps).
    job["spec"]["rebalance"] = {"enabled": True, "intervalSteps": STEPS, "dataIntervalSteps": STEPS, "minGain": 0.05}
    apply_with_claim(journey_cluster, ns, job)
    final = wait_done(platform, journey_cluster, ns, name, timeout=600)
    assert final["state"] == "Succeeded", final

    rebalance = final.get("rebalance") or {}
    assert rebalance.get("epoch") is not None and rebalance.get("appliedAtStep"), rebalance
    logs = {
        int(pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]): journey_cluster.kubectl(
            "logs", "-n", ns, pod["metadata"]["name"]
        ).stdout
        for pod in worker_pods(journey_cluster, ns, name)
    }
    assert f"rank {SLOWED_RANK}: MOEOPS_FAULT_SEQUENCE_DELAY adds" in logs[SLOWED_RANK], logs[SLOWED_RANK][-3000:]
    log = logs[0]  # rank 0 says which plans every rank switched to
    plans = applied_plans(log)
    assert plans, f"no plan applied by the workers:\n{log[-3000:]}"
    first = plans[0]
    assert first.shares[SLOWED_RANK] < first.shares[1 - SLOWED_RANK], first
    assert rebalance["epoch"] == plans[-1].epoch, (rebalance, plans)  # the first plan is epoch 0

    assert platform.nats is not None
    times = step_seconds(stored_metrics(platform.nats.url, ns, name))
    # Step 1 warms up; the switch's own step also moves data: both left out. Medians: outliers do not move them.
    before = [s for s in times if 2 <= s < first.step]
    after = [s for s in times if s > first.step]
    assert len(before) >= MIN_BEFORE and len(after) >= MIN_AFTER, (first, sorted(times))
    slow, fast = median_over(times, before), median_over(times, after)
    summary = f"median step {slow:.2f}s before the plan of step {first.step}, {fast:.2f}s after; {times}"
    print(summary)  # shown with -rP: the figures of a passing run
    assert fast < 0.75 * slow, summary
