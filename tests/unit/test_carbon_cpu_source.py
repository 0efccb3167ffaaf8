"""The CPU-only node source (moeops.carbon.node.cpu_source) and its cgroup v2 reads (moeops.carbon.meter.pod_cpu)
over a tmp tree shaped like a node's: /proc/stat and the pods' `cpu.stat` written by the test, pod labels from a
list. The estimate's figure (5 W per CPU × CPUs × busy share) is the truth the sums are checked against."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

import pytest

from moeops.carbon.accounting.ledger import EnergyDelta, Stage, WorkloadKey, WorkloadKind
from moeops.carbon.meter.attribution import PodInfo
from moeops.carbon.meter.pod_cpu import cgroup2_mount_point, find_kubepods, parse_usage_usec, scan_pod_cgroups
from moeops.carbon.meter.rapl import CpuEnergyMeter
from moeops.carbon.node.cpu_source import MIN_POD_REFRESH_S, CpuNodeSource, CpuSourceSettings
from moeops.operator.naming import training_labels

NS = "ml"
UID_A, UID_B = "aaaaaaaa-0000-4000-8000-00000000000a", "bbbbbbbb-0000-4000-8000-00000000000b"
CID = "c" * 64
HZ = os.sysconf("SC_CLK_TCK")
JOB = WorkloadKey(namespace=NS, kind=WorkloadKind.TRAINING_JOB, name="moe-debug", stage=Stage.TRAIN)
NOTEBOOK = WorkloadKey(namespace=NS, kind=WorkloadKind.OTHER, name="notebook", stage=Stage.INFERENCE)


def test_the_cgroup2_mount_of_unified_hybrid_and_v1_hosts() -> None:
    unified = "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
    hybrid = (
        "31 23 0:28 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 master:2 - cgroup2 cgroup2 rw\n"
    )
    assert cgroup2_mount_point(unified) == Path("/sys/fs/cgroup")
    assert cgroup2_mount_point(hybrid) == Path("/sys/fs/cgroup/unified")
    assert cgroup2_mount_point(hybrid.splitlines()[1]) is None
    assert cgroup2_mount_point("7 1 0:5 / /mnt/my\\040cgroups rw - cgroup2 none rw\n") == Path("/mnt/my cgroups")


def test_usage_usec_only_from_a_v2_cpu_stat() -> None:
    assert parse_usage_usec("usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n") == 1234
    assert parse_usage_usec("nr_periods 0\nnr_throttled 0\nthrottled_time 0\n") is None  # cgroup v1 cpu.stat


def pod_dir(root: Path, uid: str, *, systemd: bool = False) -> Path:
    if systemd:
        slice_ = f"kubepods-burstable-pod{uid.replace('-', '_')}.slice"
        return root / "kubepods.slice" / "kubepods-burstable.slice" / slice_
    return root / "kubepods" / f"pod{uid}"


def test_scan_finds_pods_of_both_drivers_and_nothing_else(tmp_path: Path) -> None:
    (pod_dir(tmp_path, UID_A) / CID).mkdir(parents=True)
    pod_dir(tmp_path, UID_B, systemd=True).mkdir(parents=True)
    (tmp_path / "system.slice" / f"pod{UID_A}").mkdir(parents=True)  # not under kubepods: never a pod
    systemd_b = pod_dir(tmp_path, UID_B, systemd=True)
    assert scan_pod_cgroups(tmp_path) == {UID_A: pod_dir(tmp_path, UID_A), UID_B: systemd_b}
    assert scan_pod_cgroups(tmp_path, lambda uid: uid == UID_B) == {UID_B: systemd_b}


@pytest.mark.parametrize(
    "hierarchy",
    [
        "moeops-process-node-0/kubepods",  # the dev cluster's process node
        "kubelet.slice/kubelet-kubepods.slice",  # kind's nested kubelet
        "docker/0123abcd/kubepods",  # docker-in-docker
    ],
)
def test_pods_hierarchies_nested_a_few_levels_down_are_found(tmp_path: Path, hierarchy: str) -> None:
    pod = tmp_path / hierarchy / "burstable" / f"pod{UID_A}"
    (pod / CID).mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "kubepods" / f"pod{UID_B}").mkdir(parents=True)  # deeper than anyone nests it
    assert find_kubepods(tmp_path) == [tmp_path / hierarchy]
    assert scan_pod_cgroups(tmp_path) == {UID_A: pod}


class Node:
    """A tmp node: /proc/stat (2 CPUs), pod cgroups with `cpu.stat`, a clock, and the pods the API server lists."""

    def __init__(self, root: Path) -> None:
        self.root, self.now_s = root, 0.0
        self.proc, self.cgroups = root / "proc", root / "cgroup"
        self.proc.mkdir()
        (self.cgroups / "kubepods").mkdir(parents=True)  # the kubelet's, there before any pod
        self.busy = self.idle = 0
        self.pods: list[PodInfo] = []
        self.lists = 0
        self.list_fails = False
        self.write_stat()

    def write_stat(self) -> None:
        (self.proc / "stat").write_text(f"cpu {self.busy} 0 0 {self.idle} 0 0 0 0\ncpu0 0 0 0 0\ncpu1 0 0 0 0\n")

    def usage(self, uid: str, usec: int) -> None:
        directory = pod_dir(self.cgroups, uid) / CID
        directory.mkdir(parents=True, exist_ok=True)
        (directory.parent / "cpu.stat").write_text(f"usage_usec {usec}\nuser_usec {usec}\nsystem_usec 0\n")

    def advance(self, seconds: float, busy_cpu_s: float) -> None:
        """`seconds` pass with `busy_cpu_s` of the 2 CPUs' time busy."""
        self.now_s += seconds
        self.busy += round(busy_cpu_s * HZ)
        self.idle += round((2 * seconds - busy_cpu_s) * HZ)
        self.write_stat()

    def list_pods(self) -> Iterable[PodInfo]:
        self.lists += 1
        if self.list_fails:
            raise ConnectionRefusedError("no API server")
        return list(self.pods)

    def source(self) -> CpuNodeSource:
        meter = CpuEnergyMeter(powercap_root=self.root / "no-powercap", proc_stat=self.proc / "stat", clock=self.clock)
        settings = CpuSourceSettings("node-a", "de", cgroup_root=self.cgroups, pods_ttl_s=30.0, proc_root=self.proc)
        return CpuNodeSource(settings, pods=self.list_pods, cpu=meter, clock=self.clock)

    def clock(self) -> float:
        return self.now_s


def by_key(deltas: Iterable[EnergyDelta]) -> dict[WorkloadKey | None, float]:
    return {d.key: d.cpu_energy_j for d in deltas}


def test_a_busy_pod_gets_its_share_of_the_estimate(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.pods = [
        PodInfo(NS, "moe-debug-0", UID_A, training_labels("moe-debug"), {CID: "worker"}),
        PodInfo(NS, "notebook-0", UID_B, {"app": "notebook"}),
    ]
    node.usage(UID_A, 0)
    node.usage(UID_B, 0)
    source = node.source()
    assert source() == []  # the first call sets the baselines
    node.advance(1.0, busy_cpu_s=1.0)
    node.usage(UID_A, 600_000)
    node.usage(UID_B, 200_000)
    deltas = source()
    energy = by_key(deltas)
    total_j = 5.0 * 2 * 0.5  # 5 W per CPU × 2 CPUs × 50 % busy, over 1 s
    assert math.fsum(energy.values()) == pytest.approx(total_j)
    assert energy[JOB] == pytest.approx(total_j * 0.6)
    assert energy[NOTEBOOK] == pytest.approx(total_j * 0.2)
    assert energy[None] == pytest.approx(total_j * 0.2)  # busy outside every pod: the node's
    assert all(d.cpu_estimated and d.gpu_energy_j == 0 and d.id.source == "node-a/energy" for d in deltas)
    assert not source.degraded


def test_a_pod_the_list_lacks_is_listed_again_soon_and_unresolved_meanwhile(tmp_path: Path) -> None:
    node = Node(tmp_path)
    source = node.source()
    source()
    assert node.lists == 1
    node.usage(UID_A, 0)  # a pod starts; the list has not caught up
    node.advance(1.0, busy_cpu_s=1.0)
    source()  # its baseline, and no second list within MIN_POD_REFRESH_S
    assert node.lists == 1
    node.pods = [PodInfo(NS, "moe-debug-0", UID_A, training_labels("moe-debug"), {CID: "worker"})]
    node.advance(MIN_POD_REFRESH_S, busy_cpu_s=2.0)
    node.usage(UID_A, 1_000_000)
    energy = by_key(source())
    assert node.lists == 2
    assert energy[JOB] == pytest.approx(5.0 * 2 * 0.5 * 2 * 0.5)  # half the busy time, of 2 s at 50 %


def test_without_the_api_server_a_pod_is_booked_by_uid_and_the_list_waits_for_the_ttl(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.list_fails = True
    node.usage(UID_A, 0)
    source = node.source()
    source()
    for _ in range(5):
        node.advance(1.0, busy_cpu_s=1.0)
        node.usage(UID_A, round(node.now_s * 1e6))
        energy = by_key(source())
    unresolved = [key for key in energy if key is not None]
    assert [key.name for key in unresolved] == [f"pod-{UID_A}"] and unresolved[0].namespace == "_unresolved"
    assert node.lists == 1 and source.degraded["pods"] == 1  # tried again after the TTL, not every poll


def test_a_pod_cgroup_the_list_keeps_lacking_is_not_listed_again_before_the_ttl(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.usage(UID_B, 0)  # another node's pod on a shared dev machine, or a leftover cgroup
    source = node.source()
    for _ in range(10):
        source()
        node.advance(1.0, busy_cpu_s=0.5)
    assert node.lists == 1
