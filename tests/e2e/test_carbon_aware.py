"""Carbon-aware training on a real control plane: a scripted grid-intensity series crosses the job's
`spec.carbon.maxIntensity`, the operator suspends the workers (as `runPolicy.suspend` does), then resumes them.

The operator fixture reads the session's series file (MOEOPS_CARBON_INTENSITY_SERIES) every second; this test
writes rows for a region of its own, timestamped relative to now: dirty for DIRTY_S seconds, then clean."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from harness import Cluster, OperatorProcess, wait_for
from manifests import training_job
from test_training_lifecycle import event_reasons, pods, wait_condition, wait_pods, wait_state

from moeops.devcluster import FakeKubelet

DIRTY_S = 20.0
MAX_INTENSITY = 300


def add_rows(series: Path, rows: list[tuple[datetime, str, float]]) -> None:
    """Append rows atomically: the operator re-reads the whole file when it changes."""
    text = series.read_text(encoding="utf-8") + "".join(f"{t.isoformat()},{r},{v}\n" for t, r, v in rows)
    scratch = series.with_suffix(".tmp")
    scratch.write_text(text, encoding="utf-8")
    scratch.replace(series)


def test_the_job_pauses_while_the_grid_is_dirty_and_resumes_when_clean(
    cluster: Cluster, operator: OperatorProcess, kubelet: FakeKubelet, namespace: str, intensity_series: Path
) -> None:
    region = f"grid-{namespace}"
    carbon = {"carbon": {"region": region, "maxIntensity": MAX_INTENSITY, "minDwellSeconds": 0}}  # resume in seconds
    cluster.kubectl.apply(training_job("green", namespace, carbon))
    for pod in wait_pods(cluster, namespace, "green", 2):
        kubelet.run(pod)
    wait_state(cluster, namespace, "green", "Running")
    # No value for the region yet: the gate says why it cannot act, and never pauses.
    blind = wait_condition(cluster, namespace, "green", "CarbonGateActive", status="False")
    assert blind["reason"] == "UnknownRegion"
    assert "CarbonGateInactive" in event_reasons(cluster, namespace, "green")

    start = datetime.now(UTC)
    add_rows(intensity_series, [(start, region, 450.0), (start + timedelta(seconds=DIRTY_S), region, 120.0)])
    paused = wait_condition(cluster, namespace, "green", "CarbonPaused", timeout=DIRTY_S)
    assert paused["reason"] == "GridAboveThreshold"
    assert "450 gCO2e/kWh" in paused["message"] and f"maxIntensity {MAX_INTENSITY}" in paused["message"]
    job = cluster.read("Job", namespace, "green")
    assert job and job["spec"]["suspend"] is True  # the same suspension as a user's, so the pods checkpoint
    suspended = wait_condition(cluster, namespace, "green", "Suspended", timeout=DIRTY_S)
    assert suspended["reason"] == "CarbonPaused"
    assert cluster.status("moetrainingjobs", namespace, "green")["state"] == "Suspended"
    wait_for("workers to stop", lambda: not pods(cluster, namespace, "green", live_only=False), timeout=DIRTY_S)
    assert "CarbonPaused" in event_reasons(cluster, namespace, "green")

    resumed = wait_condition(cluster, namespace, "green", "CarbonPaused", status="False", timeout=DIRTY_S + 30)
    assert resumed["reason"] == "GridBelowThreshold" and "120 gCO2e/kWh" in resumed["message"]
    assert datetime.now(UTC) >= start + timedelta(seconds=DIRTY_S)  # not before the grid got cleaner
    assert wait_condition(cluster, namespace, "green", "Suspended", status="False")["reason"] == "Resumed"
    for pod in wait_pods(cluster, namespace, "green", 2):
        kubelet.run(pod)
    wait_state(cluster, namespace, "green", "Running")
    assert {"CarbonPaused", "CarbonResumed", "Resumed"} <= event_reasons(cluster, namespace, "green")
