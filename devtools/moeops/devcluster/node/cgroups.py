"""Cgroups of the process node's containers: `<hierarchy>/<node's own cgroup>/moeops-<node>/kubepods/pod<uid>/<id>`.

As under a kubelet with the cgroupfs driver, a container's cgroup is named after its pod's UID and its container
id, so whatever maps processes to pods through `/proc/<pid>/cgroup` (the carbon agent's fallback) works unchanged.
cgroup v2 (where it is mounted: alone, or beside v1 in a hybrid layout) gives `cpu.stat` and `cgroup.kill`; v1
`memory` (where mounted) enforces `limits.memory` and tells an OOM kill; v1 `cpu` enforces `limits.cpu`. Every
hierarchy is optional: what is not mounted or not writable is skipped and said once in the node's log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

log = logging.getLogger(__name__)

MOUNTINFO = Path("/proc/self/mountinfo")
CFS_PERIOD_US = 100_000


def _mounts() -> dict[str, Path]:
    """'unified' → the cgroup2 mount; each v1 controller (cpu, memory, …) → its mount."""
    found: dict[str, Path] = {}
    for line in MOUNTINFO.read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, _source, options = ([*right.split(" "), "", "", ""])[:3]
        point = Path(left.split(" ")[4])
        if fstype == "cgroup2":
            found.setdefault("unified", point)
        elif fstype == "cgroup":
            for option in options.split(","):
                if option in ("cpu", "cpuacct", "memory", "pids"):
                    found.setdefault(option, point)
    return found


def _own_path(hierarchy: str) -> str:
    """This process's cgroup in a hierarchy ('unified' for v2), from /proc/self/cgroup."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        names = controllers.split(",")
        if (hierarchy == "unified" and controllers == "") or hierarchy in names:
            return path
    return "/"


@dataclass
class CgroupTree:
    """The node's branch in every usable hierarchy."""

    roots: dict[str, Path]

    @classmethod
    def for_node(cls, node: str) -> CgroupTree:
        """The branch `moeops-<node>-<pid>`: two platforms on one machine (a demo and a test run) never touch
        each other's pods; branches of nodes that died are cleaned by `clean`."""
        roots: dict[str, Path] = {}
        for hierarchy, mount in _mounts().items():
            root = mount / _own_path(hierarchy).lstrip("/") / f"moeops-{node}-{os.getpid()}" / "kubepods"
            try:
                root.mkdir(parents=True, exist_ok=True)
                roots[hierarchy] = root
            except OSError as error:
                log.warning("cgroup hierarchy %s not usable (%s): skipped", hierarchy, error)
        if "unified" not in roots:
            log.warning("no cgroup v2: no per-pod CPU accounting, and leftover processes are killed by PID")
        return cls(roots)

    def container(self, pod_uid: str, container_id: str) -> ContainerCgroup:
        paths = {h: root / f"pod{pod_uid}" / container_id for h, root in self.roots.items()}
        for path in paths.values():
            path.mkdir(parents=True, exist_ok=True)
        return ContainerCgroup(paths)

    def remove(self) -> None:
        """The node's branch itself, once its pods are gone."""
        for root in self.roots.values():
            _remove_tree(root.parent)

    def remove_pod(self, pod_uid: str) -> None:
        for root in self.roots.values():
            _remove_tree(root / f"pod{pod_uid}")

    def clean(self) -> None:
        """Kill and remove the pods of this node, and of any process node whose agent died without cleaning up
        (a node that dies ends its containers, as the machine's reboot would)."""
        for hierarchy, root in self.roots.items():
            branches = [root] + [
                branch / "kubepods"
                for branch in root.parents[1].glob("moeops-*-*")
                if branch != root.parent and not _alive(branch.name.rsplit("-", 1)[1])
            ]
            for kubepods in branches:
                for pod in list(kubepods.glob("pod*")):
                    for container in pod.iterdir():
                        if container.is_dir():
                            ContainerCgroup({hierarchy: container}).kill()
                    _remove_tree(pod)
                if kubepods != root:
                    _remove_tree(kubepods.parent)


def _alive(pid: str) -> bool:
    if not pid.isdigit():
        return True  # not one of ours: leave it alone
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_tree(path: Path) -> None:
    if not path.is_dir():
        return
    for child in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if child.is_dir():
            with contextlib.suppress(OSError):
                child.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()


@dataclass
class ContainerCgroup:
    paths: dict[str, Path]

    def join_paths(self) -> list[str]:
        return [str(p) for p in self.paths.values()]

    def limit(self, memory_bytes: int | None, cpus: Fraction | None) -> None:
        if memory_bytes and "memory" in self.paths:
            (self.paths["memory"] / "memory.limit_in_bytes").write_text(str(memory_bytes))
        if cpus and "cpu" in self.paths:
            (self.paths["cpu"] / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
            (self.paths["cpu"] / "cpu.cfs_quota_us").write_text(str(max(1000, int(cpus * CFS_PERIOD_US))))

    def pids(self) -> list[int]:
        for path in self.paths.values():
            with contextlib.suppress(OSError):
                return [int(p) for p in (path / "cgroup.procs").read_text().split()]
        return []

    def oom_killed(self) -> bool:
        control = self.paths.get("memory")
        if control is None:
            return False
        with contextlib.suppress(OSError):
            for line in (control / "memory.oom_control").read_text().splitlines():
                name, _, value = line.partition(" ")
                if name == "oom_kill" and int(value) > 0:
                    return True
        return False

    def kill(self, timeout_s: float = 5.0) -> None:
        """SIGKILL every process left in the container (its entry point's children, once it has exited)."""
        unified = self.paths.get("unified")
        if unified is not None and (unified / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                (unified / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + timeout_s
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    def remove(self) -> None:
        for path in self.paths.values():
            with contextlib.suppress(OSError):
                path.rmdir()
