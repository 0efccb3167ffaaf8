"""The fallback without the kubelet socket: a GPU process's pod from its cgroup (`/proc/<pid>/cgroup`).

Why a fallback: the pod-resources socket is absent where the agent's pod does not mount
`/var/lib/kubelet/pod-resources` (or on a kubelet with the API disabled), but NVML still lists the PIDs running on
each GPU (`nvmlDeviceGetComputeRunningProcesses`), and with `hostPID: true` the agent can read their cgroups. The
kubelet names every container's cgroup after the pod's UID and the runtime's container id:

- cgroupfs driver: `/kubepods/<qos>/pod<uid>/<container id>` (Guaranteed pods have no `<qos>` level);
- systemd driver: `/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid with _>.slice/<runtime>-<id>.scope`
  with `<runtime>` `cri-containerd`, `crio` or `docker`.

cgroup v2 has one line `0::<path>`; v1 one line per hierarchy (`<id>:<controllers>:<path>`), all naming the same
container, so the first line with a pod in it is used. A path may carry a prefix (kind nodes nest the kubelet in
`/kubelet.slice/kubelet-kubepods.slice`, or `/docker/<id>/kubepods/…`), so the pod segment is searched, not
anchored. What this cannot give is the pod's name and namespace: `CgroupRef` keeps the UID, and the agent resolves
it through the API server (or books the energy under the UID, see `attribution.unresolved_workload`).
"""

from __future__ import annotations

import re
from pathlib import Path

from .devices import CgroupRef

_UUID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
_POD_SEGMENT = re.compile(rf"^(?:[a-z.-]*kubepods[a-z-]*-)?pod(?P<uid>{_UUID}|[0-9a-f]{{32}})(?:\.slice)?$")
"""`pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid>.slice` (systemd; kind nodes prefix `kubelet-`). A static
pod's UID is the 32-hex hash of its manifest rather than a UUID."""
_CONTAINER_SCOPE = re.compile(r"^(?P<prefix>cri-containerd|crio|docker)-(?P<id>[0-9a-f]{64})\.scope$")
_BARE_CONTAINER = re.compile(r"^(?P<id>[0-9a-f]{64})$")
_RUNTIMES = {"cri-containerd": "containerd", "crio": "cri-o", "docker": "docker"}


def parse_cgroup_path(path: str) -> CgroupRef | None:
    """The pod and container a cgroup path names, or None when it is not a pod's cgroup.

    The pod's own cgroup (no container level below it, or a level that is no container, such as cri-o's
    `crio-conmon-<id>.scope`) gives the pod with `container_id=None`."""
    segments = [s for s in path.split("/") if s]
    for index, segment in enumerate(segments):
        pod = _POD_SEGMENT.match(segment)
        if pod is None:
            continue
        uid = pod.group("uid").replace("_", "-")
        below = segments[index + 1] if index + 1 < len(segments) else ""
        if scope := _CONTAINER_SCOPE.match(below):
            return CgroupRef(uid, scope.group("id"), _RUNTIMES[scope.group("prefix")])
        if bare := _BARE_CONTAINER.match(below):
            return CgroupRef(uid, bare.group("id"))
        return CgroupRef(uid, None)
    return None


def parse_proc_cgroup(text: str) -> CgroupRef | None:
    """The pod and container of a process from the text of `/proc/<pid>/cgroup` (v1 or v2), or None (not in a
    pod, or a cgroup namespace hides the path: `0::/` inside a container)."""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        ref = parse_cgroup_path(parts[2])
        if ref is not None:
            return ref
    return None


def read_pid_cgroup(pid: int, proc_root: Path = Path("/proc")) -> CgroupRef | None:
    """`parse_proc_cgroup` of a live process; None when it is gone, unreadable, or in no pod. The agent needs the
    host's PID namespace (`hostPID: true`): NVML reports host PIDs."""
    try:
        text = (proc_root / str(pid) / "cgroup").read_text()
    except OSError:  # exited between NVML's list and this read, or not ours to read
        return None
    return parse_proc_cgroup(text)
