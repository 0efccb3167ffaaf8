"""Idle attribution for jobs of any length, over multi-hour FAKE NVML traces through the node agent's source (one
commit a second, the agent's default): the idle power is learned from the GPU's idle spans and kept, so a job's
energy is its GPU's draw above idle however long it runs. With the former one-hour window, a job busy for two hours
after a minute of idle got about half of it, and a job busy from the agent's start got 0 J."""

from __future__ import annotations

import math

import pytest

from fakes.fake_nvml import FakeGpu, FakeNvml, Trace
from moeops.carbon.accounting.ledger import EnergyDelta, Stage, WorkloadKey, WorkloadKind
from moeops.carbon.meter.attribution import PodInfo
from moeops.carbon.meter.nvml_reader import NvmlReader
from moeops.carbon.node.node_source import NodeSource, NodeSourceSettings
from moeops.carbon.podresources.devices import ContainerRef, DeviceMap

GPU, NS = "GPU-long", "ml"
IDLE_W = 70.0
POD = PodInfo(NS, "moe-long-0", "11111111-2222-3333-4444-00000000000d", {"moeops.dev/training-job": "moe-long"})
JOB = WorkloadKey(namespace=NS, kind=WorkloadKind.TRAINING_JOB, name="moe-long", stage=Stage.TRAIN)
HOURS_2 = 2 * 3600.0


def busy_between(start_s: float, end_s: float) -> Trace:
    """Idle at IDLE_W outside [start_s, end_s), a training load inside (320 W ± 60 W, a 90-s period)."""
    omega = 2 * math.pi / 90.0

    def power(t: float) -> float:
        return 320.0 + 60.0 * math.sin(omega * (t - start_s)) if start_s <= t < end_s else IDLE_W

    def busy_j(t: float) -> float:  # the load's energy above IDLE_W from start_s to t (t within the busy span)
        x = t - start_s
        return (320.0 - IDLE_W) * x + 60.0 / omega * (1 - math.cos(omega * x))

    def energy(t: float) -> float:
        return IDLE_W * t + busy_j(min(max(t, start_s), end_s))

    return Trace(power, energy)


def replay(gpu_trace: Trace, seconds: float, held: tuple[float, float]) -> list[EnergyDelta]:
    """The source called once a second (each call a commit, as the agent's default), the GPU held by the job's pod
    within `held`; idle power measured (no configured figure)."""
    nvml = FakeNvml([FakeGpu(GPU, gpu_trace)])
    reader = NvmlReader(nvml, clock=nvml.clock)
    reader.open()

    def holders() -> DeviceMap:
        return {GPU: (ContainerRef(NS, POD.name, "worker"),)} if held[0] <= nvml.clock() < held[1] else {}

    settings = NodeSourceSettings("node-a", "de", device_map_ttl_s=0.5)
    source = NodeSource(reader, nvml, settings, devices=holders, pods=lambda: [POD], clock=nvml.clock)
    deltas: list[EnergyDelta] = []
    for _ in range(round(seconds) + 1):
        deltas += source()
        nvml.clock.advance(1.0)
    return deltas


def energy_of(deltas: list[EnergyDelta], key: WorkloadKey | None) -> float:
    return math.fsum(d.gpu_energy_j for d in deltas if d.key == key)


@pytest.mark.slow
def test_a_two_hour_job_after_a_minute_of_idle_gets_its_draw_above_idle_fake_nvml() -> None:
    start_s, end_s = 60.0, 60.0 + HOURS_2
    trace = busy_between(start_s, end_s)
    deltas = replay(trace, end_s + 120.0, held=(start_s, end_s))
    analytic_job_j = trace.energy_j(end_s) - trace.energy_j(start_s) - IDLE_W * HOURS_2
    assert energy_of(deltas, JOB) == pytest.approx(analytic_job_j, rel=0.005)
    total_j = math.fsum(d.gpu_energy_j for d in deltas)
    assert total_j == pytest.approx(trace.energy_j(end_s + 120.0), rel=0.005)  # nothing dropped by a window
    assert energy_of(deltas, None) == pytest.approx(total_j - analytic_job_j, rel=0.005)


@pytest.mark.slow
def test_a_job_busy_from_the_agents_start_is_charged_until_the_gpu_is_first_seen_idle_fake_nvml() -> None:
    """No idle span before the job: nothing is known of the GPU's idle power, so the holder is charged all of its
    draw (never 0 J); once the GPU idles, its idle power is learned, and the next job on it gets its draw above it."""
    trace = busy_between(0.0, HOURS_2)
    deltas = replay(trace, HOURS_2 + 120.0, held=(0.0, HOURS_2 + 0.5))  # the call at HOURS_2 books the last busy s
    assert energy_of(deltas, JOB) == pytest.approx(trace.energy_j(HOURS_2), rel=0.005)
    assert energy_of(deltas, None) == pytest.approx(IDLE_W * 120.0, rel=0.02)
