"""The pure half of pod → GPU mapping: cgroup lines of real nodes (the fallback), the device map, its TTL cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from moeops.carbon.podresources.cgroup import parse_cgroup_path, parse_proc_cgroup, read_pid_cgroup
from moeops.carbon.podresources.devices import (
    AssignedDevices,
    CachedDeviceMap,
    CgroupRef,
    ContainerRef,
    DeviceMap,
    device_map,
)

UID = "8a2f9b1c-1234-4f6a-9d2e-0b9c8d7e6f5a"
UID_ = UID.replace("-", "_")
CID = "4c3f8e2a9b1d7c6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e"

# /proc/<pid>/cgroup as nodes write it, one case per cgroup version × driver × runtime.
CGROUP_V1_CGROUPFS_CONTAINERD = f"""\
12:hugetlb:/kubepods/burstable/pod{UID}/{CID}
11:memory:/kubepods/burstable/pod{UID}/{CID}
4:cpu,cpuacct:/kubepods/burstable/pod{UID}/{CID}
1:name=systemd:/kubepods/burstable/pod{UID}/{CID}
0::/
"""
CGROUP_V1_SYSTEMD_DOCKER = f"""\
11:cpuset:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{CID}.scope
10:devices:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{CID}.scope
1:name=systemd:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{CID}.scope
"""
CGROUP_V2_SYSTEMD_CONTAINERD = (
    f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope\n"
)
CGROUP_V2_SYSTEMD_CRIO_GUARANTEED = f"0::/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope\n"
CGROUP_V2_CGROUPFS = f"0::/kubepods/besteffort/pod{UID}/{CID}\n"
CGROUP_V2_KIND = (
    "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
    f"kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope\n"
)


@pytest.mark.parametrize(
    ("text", "runtime"),
    [
        (CGROUP_V1_CGROUPFS_CONTAINERD, None),
        (CGROUP_V1_SYSTEMD_DOCKER, "docker"),
        (CGROUP_V2_SYSTEMD_CONTAINERD, "containerd"),
        (CGROUP_V2_SYSTEMD_CRIO_GUARANTEED, "cri-o"),
        (CGROUP_V2_CGROUPFS, None),
        (CGROUP_V2_KIND, "containerd"),
    ],
    ids=["v1-cgroupfs", "v1-systemd-docker", "v2-systemd-containerd", "v2-systemd-crio", "v2-cgroupfs", "v2-kind"],
)
def test_pod_uid_and_container_id_from_real_cgroup_files(text: str, runtime: str | None) -> None:
    assert parse_proc_cgroup(text) == CgroupRef(UID, CID, runtime)


@pytest.mark.parametrize(
    "text",
    [
        "0::/system.slice/containerd.service\n",
        "0::/user.slice/user-1000.slice/session-3.scope\n",
        "0::/\n",  # a cgroup namespace hides the path
        "12:memory:/docker/" + CID + "\n",  # a container, but no pod
        "",
        "garbage\n",
    ],
)
def test_processes_outside_pods_have_none(text: str) -> None:
    assert parse_proc_cgroup(text) is None


def test_crio_conmon_and_the_pod_level_give_the_pod_without_a_container() -> None:
    conmon = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{CID}.scope"
    assert parse_cgroup_path(conmon) == CgroupRef(UID, None)
    assert parse_cgroup_path(f"/kubepods/pod{UID}") == CgroupRef(UID, None)


def test_a_static_pod_uid_is_a_manifest_hash() -> None:
    static = "6b1e3f0c9a8d7e6f5a4b3c2d1e0f9a8b"
    assert parse_cgroup_path(f"/kubepods/burstable/pod{static}/{CID}") == CgroupRef(static, CID)


def test_read_pid_cgroup_reads_proc_and_tolerates_a_vanished_process(tmp_path: Path) -> None:
    (tmp_path / "4242").mkdir()
    (tmp_path / "4242" / "cgroup").write_text(CGROUP_V2_SYSTEMD_CONTAINERD)
    assert read_pid_cgroup(4242, tmp_path) == CgroupRef(UID, CID, "containerd")
    assert read_pid_cgroup(4243, tmp_path) is None


GPU0, GPU1 = "GPU-11111111-2222-3333-4444-555555555555", "GPU-66666666-7777-8888-9999-000000000000"
MIG = "MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
TRAIN = ContainerRef("ml", "moe-0", "worker")
SERVE = ContainerRef("ml", "chat-1", "server")
SIDECAR = ContainerRef("ml", "chat-2", "server")


def test_device_map_keeps_gpus_and_mig_devices_and_merges_time_sliced_replicas() -> None:
    assigned = [
        AssignedDevices(TRAIN, "nvidia.com/gpu", (GPU0,)),
        AssignedDevices(TRAIN, "example.com/nic", ("eth1",)),
        AssignedDevices(SERVE, "nvidia.com/gpu", (f"{GPU1}::0",)),
        AssignedDevices(SIDECAR, "nvidia.com/gpu", (f"{GPU1}::3", "")),
        AssignedDevices(SERVE, "nvidia.com/mig-1g.10gb", (MIG,)),
    ]
    assert device_map(assigned) == {GPU0: (TRAIN,), GPU1: (SERVE, SIDECAR), MIG: (SERVE,)}


def test_cache_refreshes_after_the_ttl_and_retries_after_a_failure() -> None:
    now = [0.0]
    answers: list[DeviceMap | Exception] = [{GPU0: (TRAIN,)}, RuntimeError("kubelet down"), {GPU0: (SERVE,)}]

    def fetch() -> DeviceMap:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    cache = CachedDeviceMap(fetch, ttl_s=10.0, clock=lambda: now[0])
    assert cache.get() == {GPU0: (TRAIN,)}
    now[0] = 9.9
    assert cache.get() == {GPU0: (TRAIN,)}
    assert cache.refreshes == 1
    now[0] = 10.0
    with pytest.raises(RuntimeError, match="kubelet down"):
        cache.get()
    now[0] = 10.1  # no TTL wait after a failure
    assert cache.get() == {GPU0: (SERVE,)}
    assert cache.refreshes == 2
