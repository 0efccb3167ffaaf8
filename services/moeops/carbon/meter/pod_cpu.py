"""CPU energy per pod: the CPU packages' energy of an interval (`rapl.CpuEnergyMeter`: RAPL, or its labelled
estimate) split over the pods by the CPU time their cgroups used (cgroup v2 `cpu.stat`, `usage_usec`).

Where the pods' cgroups are. The kubelet puts each pod under a `kubepods` hierarchy of the cgroup v2 tree
(`parse_cgroup_path` reads both drivers' names), at its top or a few levels down (`find_kubepods`). That tree is
the `cgroup2` mount, which is `/sys/fs/cgroup` on a unified host but `/sys/fs/cgroup/unified` on a hybrid one (v1
controllers beside it, whose `cpu.stat` has no `usage_usec`), so `find_cgroup2_root` takes it from
`/proc/self/mountinfo` rather than assuming a path. In a container the mount shows the agent's cgroup namespace;
the agent needs the host's tree mounted (a hostPath of `/sys/fs/cgroup`, or the host's cgroup namespace).

`usage_usec` is hierarchical (a pod's directory counts its containers' processes), and it is readable whether or
not the `cpu` controller is enabled for the subtree, so the pod's own directory is read.

What this module does not decide: whose workload a pod is (its labels, `attribution.pod_workload`) and which pods
to look for (the caller's `wanted`). Parsing is pure (`cgroup2_mount_point`, `parse_usage_usec`); the reads take
root paths, so tests use a tmp tree.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from moeops.carbon.meter.attribution import Split, cpu_idle_share_j, split_cpu
from moeops.carbon.meter.rapl import CpuEnergy, CpuEnergyMeter, parse_proc_stat
from moeops.carbon.podresources.cgroup import parse_cgroup_path
from moeops.carbon.podresources.devices import CgroupRef

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Guard(Protocol):
    """How a caller runs one part that may fail: `guard(kind, call, fallback)` (e.g. `NodeSource._guard`)."""

    def __call__(self, kind: str, call: Callable[[], T], fallback: T, /) -> T: ...


MOUNTINFO = Path("/proc/self/mountinfo")
KUBEPODS_SEARCH_DEPTH = 3
POD_DEPTH = 2  # below the pods hierarchy: kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice, or <qos>/pod<uid>


def _unescape_mount_path(field_text: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as 3-digit octal escapes (`\\040`)."""
    out, index = [], 0
    while index < len(field_text):
        chunk = field_text[index : index + 4]
        if len(chunk) == 4 and chunk[0] == "\\" and chunk[1:].isdigit():
            out.append(chr(int(chunk[1:], 8)))
            index += 4
        else:
            out.append(field_text[index])
            index += 1
    return "".join(out)


def cgroup2_mount_point(mountinfo: str) -> Path | None:
    """The first `cgroup2` mount of a `/proc/<pid>/mountinfo` text (fields: id, parent, dev, root, mount point,
    options, optional fields, `-`, fs type, ...), or None when there is none (a v1-only host)."""
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        separator = fields.index("-")
        if separator + 1 < len(fields) and fields[separator + 1] == "cgroup2" and len(fields) > 4:
            return Path(_unescape_mount_path(fields[4]))
    return None


def find_cgroup2_root(mountinfo: Path = MOUNTINFO) -> Path | None:
    """The cgroup v2 tree of this process's mount namespace (None when there is none, or mountinfo is
    unreadable)."""
    try:
        return cgroup2_mount_point(mountinfo.read_text())
    except OSError:
        return None


def parse_usage_usec(cpu_stat: str) -> int | None:
    """`usage_usec` of a cgroup v2 `cpu.stat` text; None when it has none (a v1 `cpu.stat`)."""
    for line in cpu_stat.splitlines():
        name, _, value = line.partition(" ")
        if name == "usage_usec":
            return int(value)
    return None


def is_kubepods(name: str) -> bool:
    """A kubelet's pods hierarchy: `kubepods` (cgroupfs), `kubepods.slice` (systemd), `kubelet-kubepods.slice`
    (kind's nested kubelet), or a test's `kubepods-<suffix>`."""
    return name.startswith("kubepods") or "-kubepods" in name


def find_kubepods(root: Path, depth: int = KUBEPODS_SEARCH_DEPTH) -> list[Path]:
    """The pods hierarchies at most `depth` levels below `root`, not looking inside one: at the top on a plain
    node, nested under the kubelet's or the runtime's cgroup elsewhere (kind: `kubelet.slice/kubelet-kubepods.slice`;
    docker-in-docker: `docker/<id>/kubepods`; the dev cluster's process node: `moeops-<node>/kubepods`)."""
    found: list[Path] = []
    for directory, subdirs, _ in os.walk(root):
        level = len(Path(directory).relative_to(root).parts)
        found += [Path(directory) / name for name in subdirs if is_kubepods(name)]
        subdirs[:] = [name for name in subdirs if not is_kubepods(name) and level + 1 < depth]
    return sorted(found)


def scan_pod_cgroups(
    root: Path, wanted: Callable[[str], bool] = lambda _uid: True, kubepods: Iterable[Path] | None = None
) -> dict[str, Path]:
    """Pod UID → the pod's cgroup directory, for the pods (both drivers) whose UID `wanted` accepts under the
    `kubepods` hierarchies (default: `find_kubepods(root)`). Each is walked no deeper than a pod's level: a node's
    other cgroups (system.slice, user sessions) and the containers' are never read."""
    found: dict[str, Path] = {}
    for top in find_kubepods(root) if kubepods is None else kubepods:
        for directory, subdirs, _ in os.walk(top):
            relative = Path(directory).relative_to(top)
            ref = parse_cgroup_path(str(relative)) if relative.parts else None
            if ref is not None and ref.container_id is None:
                if wanted(ref.pod_uid):
                    found[ref.pod_uid] = Path(directory)
                subdirs.clear()
            elif len(relative.parts) >= POD_DEPTH:
                subdirs.clear()
    return found


@dataclass
class PodCpuUsage:
    """`read(cgroups)`: CPU seconds per pod since the previous read. A pod's first read only sets its baseline (its
    usage before it is not this interval's); a pod whose counter went back (a new cgroup under the same UID)
    counts 0 for that interval."""

    _usage_s: dict[str, float] = field(default_factory=dict)

    def read(self, cgroups: Mapping[str, Path]) -> dict[CgroupRef, float]:
        usage: dict[CgroupRef, float] = {}
        current: dict[str, float] = {}
        for uid, directory in cgroups.items():
            try:
                usec = parse_usage_usec((directory / "cpu.stat").read_text())
            except FileNotFoundError:  # the pod ended between the scan and this read
                continue
            if usec is None:
                continue
            current[uid] = usec / 1e6
            if uid in self._usage_s:
                usage[CgroupRef(uid, None)] = max(current[uid] - self._usage_s[uid], 0.0)
        self._usage_s = current
        return usage


@dataclass(frozen=True)
class CpuInterval:
    """One interval's CPU energy, split: pods (by UID) and node (`split.node_j`: idle, and the busy time outside
    every pod)."""

    split: Split[CgroupRef]
    energy: CpuEnergy


def _no_guard(_kind: str, call: Callable[[], T], _fallback: T) -> T:
    return call()


@dataclass
class DegradingGuard:
    """A `Guard` that degrades instead of raising: a failing part returns its fallback, is counted per kind in
    `counts`, and logged on `log` the first time for its kind only (a part that fails every poll would flood it)."""

    log: logging.Logger
    counts: Counter[str] = field(default_factory=Counter)

    def __call__(self, kind: str, call: Callable[[], T], fallback: T, /) -> T:
        try:
            return call()
        except Exception as error:  # any failure of one part: the poll's other energy must still be booked
            self.counts[kind] += 1
            if self.counts[kind] == 1:
                self.log.warning("carbon source: %s failed (%s: %s); degrading, further %s failures are only counted",
                                 kind, type(error).__name__, error, kind)  # fmt: skip
            return fallback


@dataclass
class CpuAttribution:
    """`split(cgroups)` every CPU interval: the packages' energy since the previous call over the pods of
    `cgroups` (UID → directory) and the node. None for the first call, and when the energy or /proc/stat cannot
    be read (`guard` decides what a failure does; the default raises). Logs the method (RAPL or the estimate)
    when it first learns it and whenever it changes."""

    meter: CpuEnergyMeter
    proc_root: Path = Path("/proc")
    guard: Guard = _no_guard
    _usage: PodCpuUsage = field(default_factory=PodCpuUsage, init=False)
    _busy_ticks: int | None = field(default=None, init=False)
    _method: str | None = field(default=None, init=False)

    def split(self, cgroups: Mapping[str, Path]) -> CpuInterval | None:
        energy = self.guard("cpu_energy", self.meter.sample, None)
        busy_s = self.guard("proc_stat", self._busy_seconds, None)
        usage: dict[CgroupRef, float] = self.guard("cgroup_cpu", lambda: self._usage.read(cgroups), {})
        if energy is None or busy_s is None:
            return None
        self._log_method(energy)
        cpus = os.cpu_count() or 1
        busy_share = busy_s / (energy.dt_s * cpus) if energy.dt_s > 0 else 0.0
        idle_j = cpu_idle_share_j(energy.energy_j, busy_share, estimated=energy.estimated)
        return CpuInterval(split_cpu(energy.energy_j, idle_j, usage, busy_s), energy)

    def _busy_seconds(self) -> float | None:
        """Busy CPU seconds on the node since the last call (all CPUs), from /proc/stat."""
        ticks = parse_proc_stat((self.proc_root / "stat").read_text()).busy
        previous, self._busy_ticks = self._busy_ticks, ticks
        return None if previous is None else max(ticks - previous, 0) / os.sysconf("SC_CLK_TCK")

    def _log_method(self, energy: CpuEnergy) -> None:
        if energy.method == self._method:
            return
        self._method = energy.method
        if energy.estimated:
            logger.warning("CPU energy is ESTIMATED (%s: %.1f W per logical CPU × busy share, no idle power): %s",
                           energy.method, self.meter.watts_per_cpu, energy.reason or "RAPL not readable")  # fmt: skip
        else:
            logger.info("CPU energy is measured by RAPL (package counters under %s)", self.meter.powercap_root)
