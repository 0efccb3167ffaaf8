"""The carbon instruments fed at runtime, read with the SDK's InMemoryMetricReader: the node agent's polls over the
FAKE NVML (`NodeSource`'s `on_split` hook, `poll_telemetry.PollTelemetry`; MIG; the NVML-only source) and the
aggregator's totals (`cli.make_aggregator`'s `on_totals`, restored from a checkpoint without NATS; the same over a
real nats-server is in tests/integration/test_carbon_telemetry_nats.py). The traces' integrals are the truth."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from fakes import fake_nvml
from fakes.fake_nvml import FakeGpu, FakeNvml, Fault, MigTrace, Trace
from moeops.bus.connection import ConnectionOptions
from moeops.carbon import cli
from moeops.carbon.accounting.intensity import default_static_table
from moeops.carbon.accounting.ledger import CarbonLedger, DeltaId, EnergyDelta, Stage, WorkloadKey, WorkloadKind
from moeops.carbon.accounting.messages import LedgerCheckpoint, encode_carbon, workload_totals
from moeops.carbon.meter.attribution import PodInfo
from moeops.carbon.meter.nvml_reader import NvmlReader
from moeops.carbon.node.agent import AgentSettings, NodeAgent
from moeops.carbon.node.node_source import NodeSource, NodeSourceSettings
from moeops.carbon.node.poll_telemetry import PollTelemetry, pod_ref
from moeops.carbon.node.spool import Spool
from moeops.carbon.node.telemetry import CarbonTelemetry, GpuReading, PodRef, carbon_meter
from moeops.carbon.podresources.client import PodResourcesUnavailable
from moeops.carbon.podresources.devices import CgroupRef, ContainerRef, DeviceMap

NODE, NS, IDLE_W = "node-a", "ml", 50.0
G_SHARED, G_FREE, G_TRAIN = "GPU-shared", "GPU-free", "GPU-train"
UIDS = {"a": "11111111-2222-3333-4444-00000000000a", "b": "11111111-2222-3333-4444-00000000000b",
        "c": "11111111-2222-3333-4444-00000000000c"}  # fmt: skip
PIDS = {"a": 101, "b": 102, "c": 103}
NAMES = {"a": "moe-10b-0", "b": "notebook-0", "c": "moe-small-0"}
PODS = [PodInfo(NS, NAMES[p], UIDS[p], {}, {p * 64: "worker"}) for p in UIDS]
HOLDERS: DeviceMap = {
    G_SHARED: (ContainerRef(NS, NAMES["a"], "worker"), ContainerRef(NS, NAMES["b"], "worker")),
    G_TRAIN: (ContainerRef(NS, NAMES["c"], "worker"),),
}
Attrs = frozenset[tuple[str, Any]]


@pytest.fixture
def wired() -> tuple[CarbonTelemetry, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    return CarbonTelemetry(MeterProvider(metric_readers=[reader]).get_meter("moeops.carbon")), reader


def points(reader: InMemoryMetricReader, name: str) -> dict[Attrs, float]:
    data = reader.get_metrics_data()
    assert data is not None
    found: list[Any] = [
        m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics if m.name == name
    ]
    assert len(found) == 1, name
    return {frozenset(p.attributes.items()): p.value for p in found[0].data.data_points}


def gpu(gpu_id: str, pod: str | None = None, namespace: str = NS) -> Attrs:
    attrs = {"hw.id": gpu_id, "hw.type": "gpu", "k8s.node.name": NODE, "hw.name": "NVIDIA H100 80GB HBM3"}
    if pod is not None:
        attrs |= {"k8s.namespace.name": namespace, "k8s.pod.name": pod}
    return frozenset(attrs.items())


def per_gpu(energy: dict[Attrs, float]) -> dict[str, float]:
    sums: dict[str, list[float]] = {}
    for attrs, value in energy.items():
        sums.setdefault(dict(attrs)["hw.id"], []).append(value)
    return {gpu_id: math.fsum(values) for gpu_id, values in sums.items()}


def proc_tree(root: Path) -> Path:
    """/proc/<pid>/cgroup of the GPU processes (cgroup v2, systemd driver, containerd)."""
    for pod, pid in PIDS.items():
        slice_ = f"kubepods-burstable-pod{UIDS[pod].replace('-', '_')}.slice"
        (root / str(pid)).mkdir(parents=True)
        path = f"/kubepods.slice/kubepods-burstable.slice/{slice_}/cri-containerd-{pod * 64}.scope"
        (root / str(pid) / "cgroup").write_text(f"0::{path}\n")
    return root


def node_source(
    tmp_path: Path,
    fake_gpus: list[FakeGpu],
    telemetry: CarbonTelemetry,
    *,
    holders: DeviceMap | None = HOLDERS,
    pods: bool = True,
) -> tuple[NodeSource, FakeNvml]:
    """The source over the fake GPUs, its splits into `telemetry`; `holders` None: the kubelet is away."""

    def devices() -> DeviceMap:
        if holders is None:
            raise PodResourcesUnavailable("no kubelet socket")
        return holders

    nvml = FakeNvml(fake_gpus)
    reader = NvmlReader(nvml, clock=nvml.clock)
    reader.open()
    settings = NodeSourceSettings(NODE, "de", gpu_idle_power_w=IDLE_W, proc_root=proc_tree(tmp_path / "proc"),
                                  cgroup_root=tmp_path / "cgroup")  # fmt: skip
    hook = PollTelemetry(telemetry, NODE, reader)
    source = NodeSource(reader, nvml, settings, devices=devices, pods=lambda: PODS if pods else [], clock=nvml.clock,
                        on_split=hook)  # fmt: skip
    return source, nvml


def run_agent(source: NodeSource, nvml: FakeNvml, tmp_path: Path, seconds: float) -> list[EnergyDelta]:
    """The agent polling at 10 Hz and committing every second on the fake clock, then stopped (a last commit); the
    deltas it spooled."""
    settings = AgentSettings(poll_interval_s=0.1, commit_interval_s=1.0)
    agent = NodeAgent(source, Spool(tmp_path / "spool"), ConnectionOptions(), settings, clock=nvml.clock)
    for _ in range(round(seconds * 10)):
        agent.poll_once()
        nvml.clock.advance(0.1)
    agent.poll_once(commit=True)
    assert agent.counters.source_errors == 0
    return agent.spool.unacked(100_000)


def test_agent_polls_feed_each_gpus_energy_split_by_pod_and_its_last_power(wired: Any, tmp_path: Path) -> None:
    telemetry, reader = wired
    fake_gpus = [
        FakeGpu(G_SHARED, Trace.steady(300.0), sm_percent={PIDS["a"]: 60.0, PIDS["b"]: 20.0}),
        FakeGpu(G_FREE, Trace.sine(150.0, 50.0, 7.0)),
        FakeGpu(G_TRAIN, Trace.ramp(100.0, 300.0, 20.0), sm_percent={PIDS["c"]: 90.0}),
    ]
    source, nvml = node_source(tmp_path, fake_gpus, telemetry)
    seconds = 12.0
    deltas = run_agent(source, nvml, tmp_path, seconds)
    assert not source.degraded
    energy = points(reader, "hw.energy")

    # Per GPU, the data points add up to the device's trace; all of them to what the agent spooled for the ledger.
    truth = {g.uuid: g.trace.energy_j(seconds) - g.trace.energy_j(0.0) for g in fake_gpus}
    assert per_gpu(energy) == pytest.approx(truth, rel=0.005)
    assert math.fsum(energy.values()) == pytest.approx(math.fsum(d.gpu_energy_j for d in deltas), rel=1e-9)

    # The pods' points carry namespace and pod name; the shared GPU's active 250 W goes 60:20, idle to the node.
    assert set(energy) == {
        gpu(G_SHARED), gpu(G_SHARED, NAMES["a"]), gpu(G_SHARED, NAMES["b"]),
        gpu(G_FREE),
        gpu(G_TRAIN), gpu(G_TRAIN, NAMES["c"]),
    }  # fmt: skip
    assert energy[gpu(G_SHARED, NAMES["a"])] / energy[gpu(G_SHARED, NAMES["b"])] == pytest.approx(3.0, rel=0.02)
    assert energy[gpu(G_SHARED)] == pytest.approx(IDLE_W * seconds, rel=0.005)
    assert energy[gpu(G_TRAIN)] == pytest.approx(IDLE_W * seconds, rel=0.005)
    assert energy[gpu(G_TRAIN, NAMES["c"])] == pytest.approx(truth[G_TRAIN] - IDLE_W * seconds, rel=0.005)

    # hw.power: the last reading (the final commit's, at `seconds`), per GPU only.
    power = points(reader, "hw.power")
    assert power == pytest.approx({gpu(g.uuid): g.trace.power_w(seconds) for g in fake_gpus}, abs=1e-3)


def test_each_gpus_meter_state_is_a_metric_and_a_lost_gpu_shows_lost(wired: Any, tmp_path: Path) -> None:
    telemetry, reader = wired
    fake_gpus = [FakeGpu(G_FREE, Trace.steady(80.0)), FakeGpu(G_TRAIN, Trace.steady(250.0))]
    lost = [Fault(call, 5.0, 1e9, fake_nvml.NVML_ERROR_GPU_IS_LOST, gpu=1)
            for call in ("nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetPowerUsage")]  # fmt: skip
    source, nvml = node_source(tmp_path, fake_gpus, telemetry)
    nvml.faults = lost
    run_agent(source, nvml, tmp_path, 20.0)
    states = points(reader, "moeops.carbon.meter.state")
    current = {dict(attrs)["hw.id"]: dict(attrs)["moeops.carbon.meter.state"] for attrs, v in states.items() if v}
    assert current == {G_FREE: "metered", G_TRAIN: "lost"}
    assert len(states) == 2 * 3  # every state of every GPU, 0 but for the current one


def test_a_gpu_outage_with_a_counter_reset_is_exported_as_its_gap_and_estimate(wired: Any, tmp_path: Path) -> None:
    telemetry, reader = wired
    fake_gpus = [FakeGpu(G_FREE, Trace.steady(80.0)), FakeGpu(G_TRAIN, Trace.steady(250.0), resets_at_s=(8.0,))]
    outage = [Fault(call, 5.0, 12.0, fake_nvml.NVML_ERROR_GPU_IS_LOST, gpu=1)
              for call in ("nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetPowerUsage")]  # fmt: skip
    source, nvml = node_source(tmp_path, fake_gpus, telemetry)
    nvml.faults = outage
    run_agent(source, nvml, tmp_path, 20.0)
    gaps = {dict(attrs)["hw.id"]: value for attrs, value in points(reader, "moeops.carbon.meter.gap").items()}
    estimated = {dict(a)["hw.id"]: v for a, v in points(reader, "moeops.carbon.meter.estimated").items()}
    assert gaps[G_FREE] == 0.0 and estimated[G_FREE] == 0.0
    assert 7.0 <= gaps[G_TRAIN] <= 12.0  # the outage, to the first read after it (backoff)
    # Power stood in from 5 s to the first read after the outage; what the counter counted since its reset is measured.
    assert 250.0 * 2.5 <= estimated[G_TRAIN] <= 250.0 * gaps[G_TRAIN]


def test_cgroup_fallback_without_the_pod_list_charges_unresolved_pods(wired: Any, tmp_path: Path) -> None:
    telemetry, reader = wired
    fake_gpus = [FakeGpu(G_TRAIN, Trace.steady(250.0), sm_percent={PIDS["c"]: 90.0})]
    source, nvml = node_source(tmp_path, fake_gpus, telemetry, holders=None, pods=False)
    seconds = 5.0
    run_agent(source, nvml, tmp_path, seconds)
    energy = points(reader, "hw.energy")
    unresolved = gpu(G_TRAIN, f"pod-{UIDS['c']}", namespace="_unresolved")  # as the ledger books it
    assert set(energy) == {gpu(G_TRAIN), unresolved}
    assert energy[unresolved] == pytest.approx((250.0 - IDLE_W) * seconds, rel=0.02)
    assert per_gpu(energy)[G_TRAIN] == pytest.approx(250.0 * seconds, rel=0.005)
    assert set(source.degraded) <= {"device_map"}


def test_pod_refs_by_name_by_uid_and_unresolved() -> None:
    by_uid = {p.uid: p for p in PODS}
    assert pod_ref(ContainerRef("x", "p-0", "c"), by_uid) == PodRef("x", "p-0")
    assert pod_ref(CgroupRef(UIDS["b"], None), by_uid) == PodRef(NS, NAMES["b"])  # container id not listed
    assert pod_ref(CgroupRef("u-1", None), by_uid) == PodRef("_unresolved", "pod-u-1")


def test_a_mig_parent_is_one_hw_id_with_its_busy_instances_pods(wired: Any, tmp_path: Path) -> None:
    telemetry, reader = wired
    mig_a, mig_b = "MIG-aaaa", "MIG-bbbb"
    traces = {mig_a: MigTrace(sm_count=60, busy=((0.0, 100.0),), pid=PIDS["a"]),
              mig_b: MigTrace(sm_count=20, busy=((0.0, 100.0),), pid=PIDS["b"])}  # fmt: skip
    parent = FakeGpu("GPU-mig", Trace.steady(300.0), mig_mode=fake_nvml.NVML_DEVICE_MIG_ENABLE,
                     mig_slots=(mig_a, None, mig_b), mig_traces=traces)  # fmt: skip
    holders: DeviceMap = {
        mig_a: (ContainerRef(NS, NAMES["a"], "worker"),),
        mig_b: (ContainerRef(NS, NAMES["b"], "worker"),),
    }
    source, nvml = node_source(tmp_path, [parent], telemetry, holders=holders)
    seconds = 10.0
    run_agent(source, nvml, tmp_path, seconds)
    energy = points(reader, "hw.energy")
    assert set(energy) == {gpu("GPU-mig"), gpu("GPU-mig", NAMES["a"]), gpu("GPU-mig", NAMES["b"])}
    assert per_gpu(energy) == pytest.approx({"GPU-mig": 300.0 * seconds}, rel=0.005)
    assert energy[gpu("GPU-mig", NAMES["a"])] / energy[gpu("GPU-mig", NAMES["b"])] == pytest.approx(3.0, rel=0.01)
    assert set(points(reader, "hw.power")) == {gpu("GPU-mig")}


def test_the_nvml_only_source_feeds_energy_and_power_all_of_it_the_nodes(wired: Any) -> None:
    telemetry, reader = wired
    fake_gpus = [FakeGpu(G_FREE, Trace.sine(150.0, 50.0, 7.0)), FakeGpu(G_TRAIN, Trace.steady(250.0))]
    nvml = FakeNvml(fake_gpus)
    nvml_reader = NvmlReader(nvml, clock=nvml.clock)
    nvml_reader.open()
    source = cli.nvml_idle_source(nvml_reader, NODE, "de", telemetry)
    deltas: list[EnergyDelta] = []
    for _ in range(31):
        deltas += source()
        nvml.clock.advance(0.1)
    energy = points(reader, "hw.energy")
    assert set(energy) == {gpu(G_FREE), gpu(G_TRAIN)}
    spooled = {g.uuid: math.fsum(d.gpu_energy_j for d in deltas if d.id.source.endswith(g.uuid)) for g in fake_gpus}
    assert per_gpu(energy) == pytest.approx(spooled, rel=1e-12)
    assert energy[gpu(G_TRAIN)] == pytest.approx(250.0 * 3.0, rel=0.005)
    assert points(reader, "hw.power")[gpu(G_FREE)] == pytest.approx(fake_gpus[0].trace.power_w(3.0), abs=1e-3)


def test_the_aggregators_totals_reach_the_emissions_counter(wired: Any) -> None:
    """`cli.make_aggregator` wires `on_totals` to `record_totals`: the totals it tells after restoring a checkpoint
    (what a restarted aggregator tells first) become data points, per workload, stage and intensity source."""
    telemetry, reader = wired
    ledger = CarbonLedger(default_static_table())
    key = WorkloadKey(namespace=NS, kind=WorkloadKind.TRAINING_JOB, name="moe-10b", stage=Stage.TRAIN)
    for sequence, key_or_idle in enumerate([key, key, None], start=1):
        ledger.apply(EnergyDelta(id=DeltaId(source=f"{NODE}/energy", epoch=1, sequence=sequence), node=NODE,
                                 region="de", at=datetime(2026, 5, 1, tzinfo=UTC), key=key_or_idle,
                                 gpu_energy_j=3.6e6, cpu_energy_j=0.0))  # fmt: skip
    checkpoint = LedgerCheckpoint(stream_sequence=3, ledger=ledger.snapshot())

    class Bucket:
        async def get(self, _: str) -> SimpleNamespace:
            return SimpleNamespace(value=encode_carbon(checkpoint))

    aggregator = cli.make_aggregator({}, telemetry)
    asyncio.run(aggregator._restore(Bucket()))  # type: ignore[arg-type]
    [totals] = workload_totals(ledger.workloads())
    [(source, grams)] = totals.stages[Stage.TRAIN].gco2e_by_source.items()
    assert grams > 0
    expected = {
        ("k8s.namespace.name", NS), ("moeops.workload.kind", key.kind.value), ("moeops.workload.name", key.name),
        ("moeops.stage", key.stage.value), ("moeops.carbon.accounting.intensity.source", source),
    }  # fmt: skip
    assert points(reader, "moeops.carbon.emissions") == {frozenset(expected): pytest.approx(grams)}


def test_the_global_meter_without_a_configured_provider_accepts_the_readings() -> None:
    """What `cli` builds in a process that set up no SDK: the API's (proxy) meter; recording works."""
    meter = carbon_meter()
    assert meter.name == "moeops.carbon"
    telemetry = CarbonTelemetry(meter)
    telemetry.record_poll(NODE, [GpuReading(G_TRAIN, 10.0, 250.0, {PodRef(NS, NAMES["c"]): 8.0})])
