"""The carbon OpenTelemetry instruments, read with the SDK's InMemoryMetricReader: names, units, attributes, values."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from moeops.carbon.accounting.intensity import Intensity
from moeops.carbon.accounting.ledger import Stage, Totals, WorkloadKind
from moeops.carbon.accounting.messages import WorkloadCarbon
from moeops.carbon.node.telemetry import CarbonTelemetry, GpuReading, PodRef

AT = datetime(2026, 3, 1, 12, tzinfo=UTC)
POD = PodRef("team-a", "llm-worker-0")


@pytest.fixture
def wired() -> tuple[CarbonTelemetry, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    return CarbonTelemetry(provider.get_meter("moeops.carbon")), reader


def metrics(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}


def points(metric: Any) -> dict[frozenset[tuple[str, Any]], float]:
    return {frozenset(p.attributes.items()): p.value for p in metric.data.data_points}


def gpu(gpu_id: str, **pod: str) -> frozenset[tuple[str, Any]]:
    base = {"hw.id": gpu_id, "hw.type": "gpu", "k8s.node.name": "node-1"}
    return frozenset((base | pod).items())


def test_gpu_energy_is_a_cumulative_joule_counter_split_by_pod(wired: Any) -> None:
    telemetry, reader = wired
    telemetry.record_poll("node-1", [GpuReading("GPU-a", 300.0, 250.0, {POD: 200.0}), GpuReading("GPU-b", 50.0)])
    telemetry.record_poll("node-1", [GpuReading("GPU-a", 100.0, 180.5, {POD: 60.0})])
    found = metrics(reader)

    energy = found["hw.energy"]
    assert energy.unit == "J"
    assert energy.data.is_monotonic  # a Sum that only grows: an OTel Counter
    pod_attrs = {"k8s.namespace.name": "team-a", "k8s.pod.name": "llm-worker-0"}
    assert points(energy) == {
        gpu("GPU-a", **pod_attrs): 260.0,
        gpu("GPU-a"): 140.0,  # the rest of the device: idle and unowned
        gpu("GPU-b"): 50.0,
    }
    assert sum(v for k, v in points(energy).items() if ("hw.id", "GPU-a") in k) == 400.0  # the device meter

    power = found["hw.power"]
    assert power.unit == "W"
    assert type(power.data).__name__ == "Gauge"
    assert points(power) == {gpu("GPU-a"): 180.5}  # the latest reading; GPU-b has none


def test_a_pod_gone_for_the_expiry_stops_being_reported() -> None:
    reader, now = InMemoryMetricReader(), [0.0]
    meter = MeterProvider(metric_readers=[reader]).get_meter("moeops.carbon")
    telemetry = CarbonTelemetry(meter, pod_expiry_s=600.0, clock=lambda: now[0])
    later = PodRef("team-a", "llm-worker-1")
    telemetry.record_poll("node-1", [GpuReading("GPU-a", 300.0, 250.0, {POD: 200.0})])
    for now[0] in (300.0, 600.0, 601.0):  # POD ended at 0 s; `later` runs on the GPU from 300 s
        telemetry.record_poll("node-1", [GpuReading("GPU-a", 100.0, 250.0, {later: 100.0})])
    energy = points(metrics(reader)["hw.energy"])
    assert energy == {gpu("GPU-a"): 100.0, gpu("GPU-a", **{"k8s.namespace.name": "team-a",
                                                          "k8s.pod.name": "llm-worker-1"}): 300.0}  # fmt: skip


def test_a_bad_reading_changes_nothing(wired: Any) -> None:
    telemetry, reader = wired
    telemetry.record_poll("node-1", [GpuReading("GPU-a", 10.0)])
    for bad in (
        GpuReading("GPU-a", -1.0),
        GpuReading("GPU-a", float("nan")),
        GpuReading("GPU-a", 1.0, pods={POD: 2.0}),
    ):
        with pytest.raises(ValueError, match="GPU-a"):
            telemetry.record_poll("node-1", [GpuReading("GPU-b", 5.0), bad])
    assert points(metrics(reader)["hw.energy"]) == {gpu("GPU-a"): 10.0}


def totals(grams: dict[str, float]) -> Totals:
    intensity = Intensity(g_co2e_per_kwh=380.0, source="static:ember-2023", region="DE", valid_from=AT)
    return Totals(energy_j=3.6e6, gpu_energy_j=3.0e6, cpu_energy_j=0.6e6, gco2e=sum(grams.values()),
                  gco2e_by_source=grams, last_update=AT, intensity=intensity)  # fmt: skip


def test_emissions_counter_in_grams_per_workload_stage_and_source(wired: Any) -> None:
    telemetry, reader = wired
    first = {Stage.TRAIN: totals({"static:ember-2023": 500.0, "live:electricitymaps (stale)": 92.8})}
    workload = WorkloadCarbon(namespace="team-a", kind=WorkloadKind.TRAINING_JOB, name="llm", stages=first,
                              energy_j=3.6e6, gco2e=592.8)  # fmt: skip
    telemetry.record_totals([workload])
    later = {Stage.TRAIN: totals({"static:ember-2023": 700.0, "live:electricitymaps (stale)": 92.8})}
    telemetry.record_totals([workload.model_copy(update={"stages": later, "gco2e": 792.8})])

    emissions = metrics(reader)["moeops.carbon.emissions"]
    assert emissions.unit == "g"
    assert emissions.data.is_monotonic

    def attrs(source: str) -> frozenset[tuple[str, Any]]:
        return frozenset({"k8s.namespace.name": "team-a", "moeops.workload.kind": "MoETrainingJob",
                          "moeops.workload.name": "llm", "moeops.stage": "train",
                          "moeops.carbon.accounting.intensity.source": source}.items())  # fmt: skip

    assert points(emissions) == {attrs("static:ember-2023"): 700.0, attrs("live:electricitymaps (stale)"): 92.8}
