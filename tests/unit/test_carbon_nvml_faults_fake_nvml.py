"""NVML faults replayed through the node agent's own path (FAKE NVML → NvmlReader → NodeSource → NodeAgent → spool):
a transient NOT_SUPPORTED, a counter that reads a little back, a driver reload with a 5 s outage, a GPU lost for
half a minute. Each trace's exact integral is the truth: the spooled deltas are within 0.5 % of it, or the missing
span is reported as a gap with its size and booked as an estimate."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

from fakes import fake_nvml
from fakes.fake_nvml import FakeGpu, FakeNvml, Fault, Trace
from moeops.bus.connection import ConnectionOptions
from moeops.carbon.accounting.ledger import EnergyDelta, Stage, WorkloadKey, WorkloadKind
from moeops.carbon.meter.attribution import PodInfo
from moeops.carbon.meter.nvml_reader import COUNTER, POWER, NvmlReader
from moeops.carbon.meter.read_health import MeterState
from moeops.carbon.node.agent import AgentSettings, NodeAgent
from moeops.carbon.node.node_source import NodeSource, NodeSourceSettings
from moeops.carbon.node.spool import Spool
from moeops.carbon.podresources.devices import ContainerRef

COUNTER_CALL, POWER_CALL = "nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetPowerUsage"
LOGGER = "moeops.carbon.meter.nvml_reader"
G_TRAIN, NS, IDLE_W = "GPU-train", "ml", 50.0
POD = PodInfo(NS, "moe-small-0", "11111111-2222-3333-4444-00000000000c", {"moeops.dev/training-job": "moe-small"})
TRAIN_SMALL = WorkloadKey(namespace=NS, kind=WorkloadKind.TRAINING_JOB, name="moe-small", stage=Stage.TRAIN)


def make_source(tmp_path: Path, gpu: FakeGpu, faults: list[Fault]) -> tuple[NodeSource, FakeNvml]:
    """The node source over one GPU that the kubelet assigned to one training pod (one holder: no process samples)."""
    nvml = FakeNvml([gpu], faults=faults)
    reader = NvmlReader(nvml, clock=nvml.clock)
    reader.open()
    settings = NodeSourceSettings("node-a", "de", gpu_idle_power_w=IDLE_W, proc_root=tmp_path / "proc",
                                  cgroup_root=tmp_path / "cgroup")  # fmt: skip
    holders = {G_TRAIN: (ContainerRef(NS, POD.name, "worker"),)}
    source = NodeSource(reader, nvml, settings, devices=lambda: holders, pods=lambda: [POD], clock=nvml.clock)
    return source, nvml


def replay(
    tmp_path: Path, gpu: FakeGpu, seconds: float, faults: list[Fault], *, watch: float | None = None
) -> tuple[NodeAgent, NodeSource, list[EnergyDelta], dict[float, MeterState]]:
    """The agent at 10 Hz, committing every second, over one GPU held by one training pod; the spooled deltas and
    the GPU's meter state seen at each whole second (and at `watch`)."""
    source, nvml = make_source(tmp_path, gpu, faults)
    agent = NodeAgent(source, Spool(tmp_path / "spool"), ConnectionOptions(), AgentSettings(0.1, 1.0), clock=nvml.clock)
    states: dict[float, MeterState] = {}
    for tick in range(round(seconds * 10)):
        agent.poll_once()
        if tick % 10 == 0 or (watch is not None and math.isclose(tick / 10, watch)):
            states[tick / 10] = source.meter_states[gpu.uuid]
        nvml.clock.advance(0.1)
    agent.poll_once(commit=True)
    return agent, source, agent.spool.unacked(100_000), states


def total(deltas: list[EnergyDelta]) -> float:
    return math.fsum(d.gpu_energy_j for d in deltas)


def estimated(deltas: list[EnergyDelta]) -> float:
    return math.fsum(d.gpu_estimated_j for d in deltas)


@pytest.mark.parametrize("kind", [COUNTER, POWER])
def test_one_transient_not_supported_does_not_stop_a_reading_kind_fake_nvml(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: one NOT_SUPPORTED at 10 s marked the kind unsupported for good, and 20 s of 30 were lost (-67 %)."""
    trace = Trace.sine(300.0, 80.0, 6.0)
    gpu = FakeGpu(G_TRAIN, trace, counter=kind == COUNTER)
    call = COUNTER_CALL if kind == COUNTER else POWER_CALL
    fault = Fault(call, 9.95, 10.05, fake_nvml.NVML_ERROR_NOT_SUPPORTED)  # one poll (the clock sums 0.1s)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        agent, source, deltas, _ = replay(tmp_path, gpu, 30.0, [fault])
    assert total(deltas) == pytest.approx(trace.energy_j(30.0), rel=0.005)
    assert source._reader.errors == {kind: 1}  # counted, and logged once
    assert [r.getMessage() for r in caplog.records if "Not Supported" in r.getMessage()]
    assert source.meter_states[G_TRAIN] is MeterState.METERED
    assert agent.counters.source_errors == 0


def test_a_counter_reading_a_little_back_is_jitter_not_a_reset_fake_nvml(tmp_path: Path) -> None:
    """Before: each of the 11 readings 50 J low was booked as a reset and its interval counted twice (+550 J)."""
    trace = Trace.steady(300.0)
    dips = tuple((4.98 + 2.0 * i, 50_000) for i in range(11))  # one poll each; 50 J > the 30 J of a poll
    gpu = FakeGpu(G_TRAIN, trace, counter_dips=dips)
    _, source, deltas, _ = replay(tmp_path, gpu, 30.0, [])
    report = source._reader.report()[0].energy
    assert report.counter_jitter == 11 and report.counter_resets == 0 and report.rejected_deltas == 0
    assert total(deltas) == pytest.approx(trace.energy_j(30.0), rel=1e-3)
    assert estimated(deltas) == 0.0


def test_a_driver_reload_with_a_five_second_outage_is_a_reported_gap_estimated_from_power_fake_nvml(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: the counter restarted from 0 during the outage and the 2.5 s before the reset (1.5 kJ at 600 W) were
    lost, with no gap in the report."""
    trace = Trace.steady(600.0)
    gpu = FakeGpu(G_TRAIN, trace, resets_at_s=(12.5,))
    outage = [Fault(call, 10.0, 15.0, fake_nvml.NVML_ERROR_UNKNOWN) for call in (COUNTER_CALL, POWER_CALL)]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _, source, deltas, states = replay(tmp_path, gpu, 30.0, outage, watch=12.0)
    report = source._reader.report()[0].energy
    assert [r.getMessage() for r in caplog.records if "not measured" in r.getMessage()]  # every gap is logged
    assert report.counter_resets == 1 and report.gaps == 1
    assert 5.0 <= report.gap_s <= 7.5  # the outage, to the first good read after it (backoff: within 3.2 s)
    assert total(deltas) == pytest.approx(trace.energy_j(30.0), rel=0.005)
    # The span the counter did not see is in the deltas as an estimate: ≈ 2.5 s of 600 W, give or take a poll.
    assert estimated(deltas) == pytest.approx(1500.0, abs=600.0 * 1.0)
    assert estimated(deltas) == pytest.approx(report.estimated_j, rel=1e-9)
    assert states[12.0] is MeterState.DEGRADED and states[29.0] is MeterState.METERED
    # The outage's energy arrives in one commit; its idle share is the idle power over the time it covers (the whole
    # outage), not over that commit's second: the job gets its draw above idle.
    train = math.fsum(d.gpu_energy_j for d in deltas if d.key == TRAIN_SMALL)
    assert train == pytest.approx((600.0 - IDLE_W) * 30.0, rel=0.005)


def test_a_gpu_lost_for_thirty_seconds_is_given_up_reported_lost_and_measured_again_fake_nvml(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trace = Trace.ramp(200.0, 500.0, 60.0)
    gpu = FakeGpu(G_TRAIN, trace)
    lost = [Fault(call, 10.0, 40.0, fake_nvml.NVML_ERROR_GPU_IS_LOST) for call in (COUNTER_CALL, POWER_CALL)]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _, source, deltas, states = replay(tmp_path, gpu, 60.0, lost)
    reader = source._reader
    assert reader.give_ups == {COUNTER: 1, POWER: 1}
    assert states[9.0] is MeterState.METERED and states[11.0] is MeterState.DEGRADED
    assert states[20.0] is MeterState.LOST and states[59.0] is MeterState.METERED
    messages = [r.getMessage() for r in caplog.records]
    assert sum("gave up" in m for m in messages) == 2 and any("answers again" in m for m in messages)
    # Back without a reset: the counter's delta over the outage is exact, and any stand-in estimate is withdrawn.
    assert total(deltas) == pytest.approx(trace.energy_j(60.0), rel=0.005)
    assert reader.report()[0].energy.estimated_j == pytest.approx(0.0, abs=1e-6)
