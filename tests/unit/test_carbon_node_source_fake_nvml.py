"""The node agent's source (moeops.carbon.node.node_source) over the FAKE NVML: GPU energy to pods by the kubelet's map
(a dict here), SM shares of shared GPUs (fake per-process samples), PIDs to pods through /proc/<pid>/cgroup files
in a tmp tree, pod labels from a list. The traces' exact integrals are the truth the sums are checked against."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from fakes.fake_nvml import FakeGpu, FakeNvml, Fault, Trace
from moeops.bus.connection import ConnectionOptions
from moeops.carbon.accounting.ledger import EnergyDelta, Stage, WorkloadKey, WorkloadKind
from moeops.carbon.meter.attribution import IdlePower, PodInfo, pods_from_list
from moeops.carbon.meter.nvml_reader import NvmlReader
from moeops.carbon.meter.rapl import CpuEnergyMeter
from moeops.carbon.node.agent import AgentSettings, NodeAgent
from moeops.carbon.node.node_source import NodeSource, NodeSourceSettings
from moeops.carbon.node.spool import Spool
from moeops.carbon.podresources.client import PodResourcesUnavailable
from moeops.carbon.podresources.devices import ContainerRef, DeviceMap

G_SHARED, G_FREE, G_TRAIN = "GPU-shared", "GPU-free", "GPU-train"
NS = "ml"
IDLE_W = 50.0
UIDS = {"a": "11111111-2222-3333-4444-00000000000a", "b": "11111111-2222-3333-4444-00000000000b",
        "c": "11111111-2222-3333-4444-00000000000c"}  # fmt: skip
CIDS = {pod: pod * 64 for pod in UIDS}
PIDS = {"a": 101, "b": 102, "c": 103}
PODS = [
    PodInfo(NS, "moe-10b-0", UIDS["a"], {"moeops.dev/training-job": "moe-10b"}, {CIDS["a"]: "worker"}),
    PodInfo(NS, "notebook-0", UIDS["b"], {"app": "notebook"}, {CIDS["b"]: "jupyter"}),
    PodInfo(NS, "moe-small-0", UIDS["c"], {"moeops.dev/training-job": "moe-small"}, {CIDS["c"]: "worker"}),
]
HOLDERS: DeviceMap = {
    G_SHARED: (ContainerRef(NS, "moe-10b-0", "worker"), ContainerRef(NS, "notebook-0", "jupyter")),
    G_TRAIN: (ContainerRef(NS, "moe-small-0", "worker"),),
}
TRAIN_10B = WorkloadKey(namespace=NS, kind=WorkloadKind.TRAINING_JOB, name="moe-10b", stage=Stage.TRAIN)
TRAIN_SMALL = WorkloadKey(namespace=NS, kind=WorkloadKind.TRAINING_JOB, name="moe-small", stage=Stage.TRAIN)
NOTEBOOK = WorkloadKey(namespace=NS, kind=WorkloadKind.OTHER, name="notebook", stage=Stage.INFERENCE)


def gpus() -> list[FakeGpu]:
    return [
        FakeGpu(G_SHARED, Trace.steady(300.0), sm_percent={PIDS["a"]: 60.0, PIDS["b"]: 20.0}),
        FakeGpu(G_FREE, Trace.steady(80.0)),
        FakeGpu(G_TRAIN, Trace.steady(250.0), sm_percent={PIDS["c"]: 90.0}),
    ]


def proc_tree(root: Path) -> Path:
    """/proc/<pid>/cgroup of the three GPU processes (cgroup v2, systemd driver, containerd)."""
    for pod, pid in PIDS.items():
        slice_ = f"kubepods-burstable-pod{UIDS[pod].replace('-', '_')}.slice"
        (root / str(pid)).mkdir(parents=True)
        path = f"/kubepods.slice/kubepods-burstable.slice/{slice_}/cri-containerd-{CIDS[pod]}.scope"
        (root / str(pid) / "cgroup").write_text(f"0::{path}\n")
    return root


def make_source(
    tmp_path: Path,
    *,
    devices: Callable[[], DeviceMap] | None = lambda: HOLDERS,
    pods: Callable[[], Iterable[PodInfo]] = lambda: PODS,
    idle_w: float | None = IDLE_W,
    fake_gpus: list[FakeGpu] | None = None,
    faults: list[Fault] | None = None,
    cpu: CpuEnergyMeter | None = None,
    device_map_ttl_s: float = 10.0,
) -> tuple[NodeSource, FakeNvml]:
    nvml = FakeNvml(fake_gpus or gpus(), faults=faults or [])
    reader = NvmlReader(nvml, clock=nvml.clock)
    reader.open()
    settings = NodeSourceSettings("node-a", "de", gpu_idle_power_w=idle_w, proc_root=proc_tree(tmp_path / "proc"),
                                  cgroup_root=tmp_path / "cgroup", device_map_ttl_s=device_map_ttl_s)  # fmt: skip
    return NodeSource(reader, nvml, settings, devices=devices, pods=pods, cpu=cpu, clock=nvml.clock), nvml


def run(source: NodeSource, nvml: FakeNvml, seconds: float, hz: float = 10.0) -> list[EnergyDelta]:
    deltas: list[EnergyDelta] = []
    for _ in range(round(seconds * hz) + 1):
        deltas += source()
        nvml.clock.advance(1 / hz)
    return deltas


def by_key(deltas: list[EnergyDelta]) -> dict[WorkloadKey | None, float]:
    parts: dict[WorkloadKey | None, list[float]] = {}
    for delta in deltas:
        parts.setdefault(delta.key, []).append(delta.gpu_energy_j)
    return {key: math.fsum(values) for key, values in parts.items()}


def trace_energy(fake_gpus: list[FakeGpu], seconds: float, since: float = 0.0) -> float:
    return math.fsum(gpu.trace.energy_j(seconds) - gpu.trace.energy_j(since) for gpu in fake_gpus)


def test_shared_gpu_split_by_sm_share_training_pod_keyed_free_gpu_idle_and_sums_exact(tmp_path: Path) -> None:
    source, nvml = make_source(tmp_path)
    seconds = 20.0
    energy = by_key(run(source, nvml, seconds))
    assert set(energy) == {TRAIN_10B, NOTEBOOK, TRAIN_SMALL, None}
    total = math.fsum(energy.values())
    assert total == pytest.approx(trace_energy(nvml.gpus, seconds), rel=0.005)
    # The shared GPU's active 250 W goes 60:20 (the first interval, before any SM sample, equally).
    assert energy[TRAIN_10B] / energy[NOTEBOOK] == pytest.approx(3.0, rel=0.02)
    assert energy[TRAIN_10B] + energy[NOTEBOOK] == pytest.approx((300 - IDLE_W) * seconds, rel=0.005)
    assert energy[TRAIN_SMALL] == pytest.approx((250 - IDLE_W) * seconds, rel=0.005)
    # Node idle: both held GPUs' idle power and the whole of the GPU nobody holds.
    assert energy[None] == pytest.approx((2 * IDLE_W + 80) * seconds, rel=0.005)
    assert not source.degraded
    assert source.fallback_polls == 0
    # Only the shared GPU was sampled: one holder needs no samples.
    assert nvml.calls["nvmlDeviceGetProcessUtilization"] == round(seconds * 10) + 1


def agent_energy(tmp_path: Path, fake_gpus: list[FakeGpu], seconds: float, commit_s: float) -> NodeAgent:
    """The agent over the source, polled at 10 Hz on the fake clock and committing every `commit_s`; stopped."""
    source, nvml = make_source(tmp_path, fake_gpus=fake_gpus)
    settings = AgentSettings(poll_interval_s=0.1, commit_interval_s=commit_s)
    agent = NodeAgent(source, Spool(tmp_path / "spool"), ConnectionOptions(), settings, clock=nvml.clock)
    for _ in range(round(seconds * 10)):
        agent.poll_once()
        nvml.clock.advance(0.1)
    agent.poll_once(commit=True)
    return agent


def test_commits_every_second_book_the_ten_hz_integral(tmp_path: Path) -> None:
    """Power only (no counter): the reader integrates every 10-Hz reading, sampled or committed, so committing
    once a second books what committing every poll does, within 0.5 % of the traces, split alike."""

    def fake() -> list[FakeGpu]:
        shared_sm = {PIDS["a"]: 60.0, PIDS["b"]: 20.0}
        return [
            FakeGpu(G_SHARED, Trace.sine(300.0, 120.0, 7.0), counter=False, sm_percent=shared_sm),
            FakeGpu(G_FREE, Trace.sine(90.0, 30.0, 5.0), counter=False),
            FakeGpu(G_TRAIN, Trace.sine(250.0, 100.0, 3.0), counter=False, sm_percent={PIDS["c"]: 90.0}),
        ]

    seconds = 20.0
    every_poll = agent_energy(tmp_path / "every-poll", fake(), seconds, commit_s=0.1)
    every_second = agent_energy(tmp_path / "every-second", fake(), seconds, commit_s=1.0)
    assert every_poll.counters.commits == 201
    assert every_second.counters.commits == 21  # at 0, 1, …, 19 s and the last poll's
    energy = by_key(every_second.spool.unacked(10_000))
    reference = by_key(every_poll.spool.unacked(10_000))
    assert math.fsum(energy.values()) == pytest.approx(math.fsum(reference.values()), rel=1e-9)
    assert math.fsum(energy.values()) == pytest.approx(trace_energy(fake(), seconds), rel=0.005)
    assert energy[TRAIN_10B] / energy[NOTEBOOK] == pytest.approx(3.0, rel=0.02)
    assert energy == pytest.approx(reference, rel=0.01)


def test_deltas_are_one_per_key_per_poll_on_one_meter(tmp_path: Path) -> None:
    source, nvml = make_source(tmp_path)
    source()
    nvml.clock.advance(1.0)
    deltas = source()
    assert [d.key for d in deltas].count(None) == 1
    assert len(deltas) == len({d.key for d in deltas}) == 4
    assert {d.id.source for d in deltas} == {"node-a/energy"}
    assert all(d.node == "node-a" and d.region == "de" and d.cpu_energy_j == 0 for d in deltas)


def test_idle_power_is_learned_while_nobody_holds_the_gpu(tmp_path: Path) -> None:
    low_w, busy_w, switch_s = 70.0, 300.0, 3.0
    step = Trace(lambda t: low_w if t < switch_s else busy_w,
                 lambda t: low_w * min(t, switch_s) + busy_w * max(t - switch_s, 0.0))  # fmt: skip
    fake = [FakeGpu(G_TRAIN, step, sm_percent={PIDS["c"]: 90.0})]
    clock: list[FakeNvml] = []
    holders = lambda: HOLDERS if clock[0].clock() >= switch_s else {}  # noqa: E731 -- the pod arrives at switch_s
    source, nvml = make_source(tmp_path, idle_w=None, fake_gpus=fake, devices=holders, device_map_ttl_s=0.05)
    clock.append(nvml)
    energy = by_key(run(source, nvml, 13.0))
    assert energy[TRAIN_SMALL] == pytest.approx((busy_w - low_w) * 10.0, rel=0.005)
    assert math.fsum(energy.values()) == pytest.approx(step.energy_j(13.0), rel=0.005)


def test_idle_power_is_the_lowest_idle_second_kept_and_ignores_busy_spans_and_short_dips() -> None:
    idle = IdlePower(span_s=1.0)
    assert idle.power_w() is None
    idle.add(200.0, 1.0, idle=False)  # busy: never idle power, however low
    assert idle.power_w() is None
    for _ in range(5):
        idle.add(60.0, 1.0, idle=True)
    idle.add(1.0, 0.1, idle=True)  # a 10-W dip for 0.1 s in a span that averages far higher
    idle.add(270.0, 0.9, idle=True)
    for _ in range(100_000):  # busy for a day and more: nothing is forgotten
        idle.add(200.0, 1.0, idle=False)
    assert idle.power_w() == pytest.approx(60.0)


def test_without_the_kubelet_the_cgroup_fallback_still_splits_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def unavailable() -> DeviceMap:
        raise PodResourcesUnavailable("kubelet pod-resources socket not found")

    source, nvml = make_source(tmp_path, devices=unavailable)
    with caplog.at_level(logging.WARNING, logger="moeops.carbon.node.node_source"):
        energy = by_key(run(source, nvml, 25.0))
    assert source.degraded["device_map"] == 3  # asked again once per TTL (10 s), not every poll
    assert source.fallback_polls == 251
    assert sum("device_map failed" in r.getMessage() for r in caplog.records) == 1
    assert energy[TRAIN_10B] / energy[NOTEBOOK] == pytest.approx(3.0, rel=0.02)
    assert energy[TRAIN_SMALL] == pytest.approx((250 - IDLE_W) * 25.0, rel=0.005)
    assert math.fsum(energy.values()) == pytest.approx(trace_energy(nvml.gpus, 25.0), rel=0.005)


def test_failing_pod_list_nvml_samples_and_handles_degrade_without_losing_energy(tmp_path: Path) -> None:
    def no_api_server() -> list[PodInfo]:
        raise ConnectionRefusedError("API server unreachable")

    faults = [Fault("nvmlDeviceGetProcessUtilization", 0.0, 100.0), Fault("nvmlDeviceGetHandleByIndex", 0.01, 1.0)]
    source, nvml = make_source(tmp_path, pods=no_api_server, faults=faults)
    nvml.clock.advance(0.05)  # the reader opened at 0 s, before the handle fault
    energy = by_key(run(source, nvml, 10.0))
    assert source.degraded["pods"] == 1  # retried after the TTL (30 s), not every poll
    assert source.degraded["gpu_handle"] == 10  # asked again each poll until the fault ends at 1 s
    assert source._sampler.errors["utilization"] > 0
    # Unlabelled pods are booked by pod name as kind `other`; no samples: the shared GPU is split equally.
    shared = [WorkloadKey(namespace=NS, kind=WorkloadKind.OTHER, name=n, stage=Stage.INFERENCE)
              for n in ("moe-10b-0", "notebook-0")]  # fmt: skip
    assert energy[shared[0]] == pytest.approx(energy[shared[1]], rel=1e-9)
    assert math.fsum(energy.values()) == pytest.approx(trace_energy(nvml.gpus, 10.05, since=0.05), rel=0.005)


def test_a_pod_missing_from_the_list_triggers_an_early_refresh(tmp_path: Path) -> None:
    lists: list[int] = []

    def growing() -> list[PodInfo]:
        lists.append(1)
        return PODS if len(lists) > 1 else PODS[1:]  # the training pod started after the first list

    source, nvml = make_source(tmp_path, pods=growing)
    energy = by_key(run(source, nvml, 5.0))
    assert len(lists) == 2
    assert energy[TRAIN_10B] > 0


def test_cpu_energy_split_by_pod_cgroup_usage(tmp_path: Path) -> None:
    stat = tmp_path / "proc" / "stat"
    pod_cgroup = tmp_path / "cgroup" / "kubepods.slice" / "kubepods-burstable.slice"
    pod_cgroup = pod_cgroup / f"kubepods-burstable-pod{UIDS['a'].replace('-', '_')}.slice"
    pod_cgroup.mkdir(parents=True)

    def write(busy: int, idle: int, pod_usec: int) -> None:
        stat.write_text(f"cpu {busy} 0 0 {idle} 0 0 0 0\ncpu0 0 0 0 0\ncpu1 0 0 0 0\n")
        (pod_cgroup / "cpu.stat").write_text(f"usage_usec {pod_usec}\nuser_usec 0\n")

    nvml_clock: list[FakeNvml] = []
    meter = CpuEnergyMeter(powercap_root=tmp_path / "none", proc_stat=stat, clock=lambda: nvml_clock[0].clock())
    source, nvml = make_source(tmp_path, cpu=meter)
    nvml_clock.append(nvml)
    write(0, 0, 0)
    source()
    hz = __import__("os").sysconf("SC_CLK_TCK")
    write(hz, hz, 500_000)  # 1 s busy of 2 CPU-seconds; the pod used 0.5 s of it
    nvml.clock.advance(1.0)
    deltas = source()
    cpu = {d.key: d.cpu_energy_j for d in deltas if d.cpu_energy_j > 0}
    total = 5.0 * 2 * 0.5  # the estimate: 5 W per CPU × 2 CPUs × 50 % busy, over 1 s
    assert math.fsum(cpu.values()) == pytest.approx(total)
    assert cpu[TRAIN_10B] == pytest.approx(total / 2)
    assert all(d.cpu_estimated for d in deltas if d.cpu_energy_j > 0)


def test_pods_from_a_pod_list() -> None:
    body = {"items": [{"metadata": {"namespace": NS, "name": "p", "uid": "u", "labels": {"app": "x"}},
                       "status": {"containerStatuses": [{"name": "c", "containerID": "containerd://abc"},
                                                        {"name": "pending"}]}}]}  # fmt: skip
    assert pods_from_list(body) == [PodInfo(NS, "p", "u", {"app": "x"}, {"abc": "c"})]
