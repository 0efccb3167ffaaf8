"""MIG instances' activity (moeops.carbon.meter.mig) and the node source's MIG attribution, over the FAKE NVML driven by
MIG traces: per-instance SM counts, busy spans and destroyed instances. The traces' integrals are the truth."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest

from fakes import fake_nvml
from fakes.fake_nvml import FakeGpu, FakeNvml, Fault, MigTrace, Trace
from missing import PYNVML, import_or_missing
from moeops.carbon.accounting.ledger import EnergyDelta, Stage, WorkloadKey, WorkloadKind
from moeops.carbon.meter.attribution import PodInfo, split_node
from moeops.carbon.meter.energy import IDLE
from moeops.carbon.meter.mig import MigActivity, MigDeltas, MigNvmlApi, mig_intervals
from moeops.carbon.meter.nvml_reader import NvmlReader
from moeops.carbon.node.node_source import NodeSource, NodeSourceSettings
from moeops.carbon.podresources.client import PodResourcesUnavailable
from moeops.carbon.podresources.devices import ContainerRef, DeviceMap

PARENT, WHOLE = "GPU-mig", "GPU-whole"
MIG_A, MIG_B, MIG_C = "MIG-aaaa", "MIG-bbbb", "MIG-cccc"
NS, IDLE_W, BUSY_W, IDLE_GPU_W = "ml", 50.0, 300.0, 60.0
UIDS = {"a": "11111111-2222-3333-4444-0000000000aa", "b": "11111111-2222-3333-4444-0000000000bb"}
PIDS = {"a": 201, "b": 202}
PODS = [
    PodInfo(NS, "big-0", UIDS["a"], {"moeops.dev/training-job": "big"}, {"a" * 64: "worker"}),
    PodInfo(NS, "small-0", UIDS["b"], {"moeops.dev/inference-service": "small"}, {"b" * 64: "server"}),
]
HOLDERS: DeviceMap = {MIG_A: (ContainerRef(NS, "big-0", "worker"),), MIG_B: (ContainerRef(NS, "small-0", "server"),)}
BIG = WorkloadKey(namespace=NS, kind=WorkloadKind.TRAINING_JOB, name="big", stage=Stage.TRAIN)
SMALL = WorkloadKey(namespace=NS, kind=WorkloadKind.INFERENCE_SERVICE, name="small", stage=Stage.INFERENCE)


def mig_gpu(busy_until_s: float = 10.0, trace: Trace | None = None) -> FakeGpu:
    """A MIG parent: a 3g (60 SMs, pod `big`) and a 1g (20 SMs, pod `small`) instance, both busy until
    `busy_until_s`, an empty slot, and an instance destroyed at 2 s; 300 W while busy, 60 W after."""
    step = Trace(lambda t: BUSY_W if t < busy_until_s else IDLE_GPU_W,
                 lambda t: BUSY_W * min(t, busy_until_s) + IDLE_GPU_W * max(t - busy_until_s, 0.0))  # fmt: skip
    traces = {
        MIG_A: MigTrace(sm_count=60, busy=((0.0, busy_until_s),), pid=PIDS["a"]),
        MIG_B: MigTrace(sm_count=20, busy=((0.0, busy_until_s),), pid=PIDS["b"]),
        MIG_C: MigTrace(sm_count=14, busy=((0.0, 100.0),), pid=999, destroyed_at_s=2.0),
    }
    return FakeGpu(PARENT, trace or step, mig_mode=fake_nvml.NVML_DEVICE_MIG_ENABLE,
                   mig_slots=(MIG_A, MIG_B, None, MIG_C), mig_traces=traces)  # fmt: skip


def activity(*gpus: FakeGpu, faults: list[Fault] | None = None) -> tuple[MigActivity, FakeNvml]:
    nvml = FakeNvml(list(gpus), faults=faults or [])
    reader = NvmlReader(nvml, clock=nvml.clock)
    reader.open()
    return MigActivity(nvml, lambda: reader.gpus, interval_s=1.0, clock=nvml.clock), nvml


def test_weights_are_the_sm_counts_of_busy_instances_and_a_destroyed_one_weighs_nothing() -> None:
    mig, nvml = activity(FakeGpu(WHOLE), mig_gpu(busy_until_s=5.0))
    nvml.clock.advance(1.0)
    assert mig.weights() == {PARENT: {MIG_A: 60.0, MIG_B: 20.0, MIG_C: 14.0}}
    calls = sum(nvml.calls.values())
    nvml.clock.advance(0.5)
    assert mig.weights() == {PARENT: {MIG_A: 60.0, MIG_B: 20.0, MIG_C: 14.0}}  # held within the interval
    assert sum(nvml.calls.values()) == calls
    nvml.clock.advance(0.5)
    assert mig.weights() == {PARENT: {MIG_A: 60.0, MIG_B: 20.0}}  # MIG-c was destroyed at 2 s
    assert mig.handle(MIG_C) is None and mig.handle(MIG_A) is not None
    nvml.clock.advance(4.0)
    assert mig.weights() == {PARENT: {}}  # nothing runs: all of it will be the parent's idle
    assert not mig.errors
    assert nvml.calls["nvmlDeviceGetAttributes"] == 3  # once per instance: an instance keeps its SMs


def test_an_instance_gone_between_enumeration_and_its_calls_weighs_nothing_and_nothing_raises() -> None:
    mig, nvml = activity(mig_gpu())
    mig.weights()
    nvml.clock.advance(1.0)
    stale = mig.handle(MIG_C)
    nvml.clock.advance(1.0)  # MIG-c is destroyed: its old handle answers NOT_FOUND
    with pytest.raises(fake_nvml.NVMLError) as gone:
        nvml.nvmlDeviceGetComputeRunningProcesses(stale)
    assert gone.value.value == fake_nvml.NVML_ERROR_NOT_FOUND
    assert MIG_C not in mig.weights()[PARENT]
    assert not mig.errors


def test_unknown_sm_counts_split_equally_and_failing_process_lists_are_counted() -> None:
    not_supported = Fault("nvmlDeviceGetAttributes", 0.0, 100.0, code=fake_nvml.NVML_ERROR_NOT_SUPPORTED)
    mig, nvml = activity(mig_gpu(), faults=[not_supported])
    nvml.clock.advance(2.5)
    assert mig.weights() == {PARENT: {MIG_A: 1.0, MIG_B: 1.0}}
    assert not mig.errors
    nvml.faults.append(Fault("nvmlDeviceGetComputeRunningProcesses", 0.0, 100.0))
    nvml.clock.advance(1.0)
    assert mig.weights() == {PARENT: {}}
    assert mig.errors["mig_processes"] == 2


def test_mig_intervals_take_the_parent_idle_power_from_the_busy_instances_by_energy() -> None:
    deltas = MigDeltas()
    assert deltas.delta(PARENT, {MIG_A: 10.0, IDLE: 1.0}) == {MIG_A: 10.0, IDLE: 1.0}
    energy = deltas.delta(PARENT, {MIG_A: 40.0, MIG_B: 10.0, IDLE: 6.0})
    assert energy == {MIG_A: 30.0, MIG_B: 10.0, IDLE: 5.0}
    intervals, node_j = mig_intervals(energy, 1.0, 18.0)
    assert node_j == 5.0
    assert [(i.device_id, i.energy_j, i.idle_power_w) for i in intervals] == [(MIG_A, 30.0, 12.0), (MIG_B, 10.0, 4.0)]
    split = split_node(intervals, {MIG_A: ("a",), MIG_B: ("b",)}, {}, {})
    assert split.idle_j == pytest.approx(16.0)
    assert split.consumers_j == pytest.approx({"a": 18.0, "b": 6.0})  # the 3:1 of the busy energy is kept
    assert mig_intervals({IDLE: 7.0}, 1.0, 18.0) == ([], 7.0)


def source(tmp_path: Path, devices: DeviceMap | None) -> tuple[NodeSource, FakeNvml]:
    """The node source over the MIG GPU; `devices` None: the kubelet is away (the cgroup fallback)."""
    for pod, pid in PIDS.items():
        (tmp_path / "proc" / str(pid)).mkdir(parents=True)
        slice_ = f"kubepods-pod{UIDS[pod].replace('-', '_')}.slice"
        path = f"/kubepods.slice/{slice_}/cri-containerd-{pod * 64}.scope"
        (tmp_path / "proc" / str(pid) / "cgroup").write_text(f"0::{path}\n")

    def device_map() -> DeviceMap:
        if devices is None:
            raise PodResourcesUnavailable("no kubelet socket")
        return devices

    nvml = FakeNvml([mig_gpu()])
    reader = NvmlReader(nvml, clock=nvml.clock)
    reader.open()
    settings = NodeSourceSettings("node-a", "de", gpu_idle_power_w=IDLE_W, proc_root=tmp_path / "proc",
                                  cgroup_root=tmp_path / "cgroup")  # fmt: skip
    return NodeSource(reader, nvml, settings, devices=device_map, pods=lambda: PODS, clock=nvml.clock), nvml


def energy_by_key(source: NodeSource, nvml: FakeNvml, seconds: float) -> dict[WorkloadKey | None, float]:
    """Polls at 10 Hz, committing once a second (the agent's default), on the fake clock."""
    deltas: list[EnergyDelta] = []
    for step in range(round(seconds * 10) + 1):
        if step % 10 == 0:
            deltas += source()
        else:
            source.sample()
        nvml.clock.advance(0.1)
    deltas += source()
    parts: dict[WorkloadKey | None, list[float]] = {}
    for delta in deltas:
        parts.setdefault(delta.key, []).append(delta.gpu_energy_j)
    return {key: math.fsum(values) for key, values in parts.items()}


@pytest.mark.parametrize("kubelet", [True, False], ids=["pod-resources", "cgroup-fallback"])
def test_mig_parent_energy_goes_to_the_pods_by_sm_share_and_idle_intervals_to_the_node(
    tmp_path: Path, kubelet: bool
) -> None:
    node, nvml = source(tmp_path, HOLDERS if kubelet else None)
    seconds = 15.0
    energy = energy_by_key(node, nvml, seconds)
    assert set(energy) == {BIG, SMALL, None}
    truth = nvml.gpus[0].trace.energy_j(nvml.clock())
    assert math.fsum(energy.values()) == pytest.approx(truth, rel=0.005)
    assert energy[BIG] / energy[SMALL] == pytest.approx(60 / 20, rel=0.005)
    # Busy 10 s: the parent's 50 W idle to the node, the active 250 W to the pods, but for the first 2 s MIG-c's
    # share of the SMs (14 of 94: busy, held by no pod, so the node's); then 5 s of nobody: the node's.
    unowned_j = (BUSY_W - IDLE_W) * 2.0 * 14 / 94
    assert energy[BIG] + energy[SMALL] == pytest.approx((BUSY_W - IDLE_W) * 10.0 - unowned_j, rel=0.01)
    assert energy[None] == pytest.approx(IDLE_W * 10.0 + unowned_j + IDLE_GPU_W * 5.0, rel=0.02)
    assert set(node.degraded) <= {"device_map"}  # the kubelet's absence, and nothing else
    assert node.fallback_polls == (0 if kubelet else 17)


def test_the_fake_mirrors_pynvml_for_the_mig_calls() -> None:
    pynvml = import_or_missing("pynvml", PYNVML)
    used = [name for name in dir(MigNvmlApi) if name.startswith("nvml")]
    assert len(used) == 6
    for name in used:
        real_arity = len(inspect.signature(getattr(pynvml, name)).parameters)
        assert len(inspect.signature(getattr(FakeNvml, name)).parameters) - 1 == real_arity, name  # minus self
    fields = {name for name, _ in pynvml.c_nvmlDeviceAttributes._fields_}
    assert {f.name for f in __import__("dataclasses").fields(fake_nvml.FakeDeviceAttributes)} <= fields
