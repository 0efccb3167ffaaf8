"""The node agent's source on a node without NVML (no GPU, or no driver): the CPU packages' energy, charged to pods.

Each call (one agent commit, every second by default):

1. Every pod cgroup under the cgroup v2 tree's pods hierarchies (`pod_cpu.find_kubepods`, looked for again every
   `pods_ttl_s`), whether the pod list knows the pod yet or not: a pod that started a moment ago is measured from
   its first second. A walk to pod depth is a few hundred directories on a busy node, cheap at once a second.
2. The pods' labels from the API server (`node_source.kube_pod_lister`: `list pods` on this node) every
   `pods_ttl_s`, and sooner, at most every `MIN_POD_REFRESH_S`, when a pod cgroup appears that the list lacks (not
   for one the last list lacked already: another node's pod on a shared dev machine, or a leftover). A failed list
   is tried again after the TTL (the call blocks the poll for up to its timeout).
3. `pod_cpu.CpuAttribution`: RAPL or the labelled estimate, split by the pods' `cpu.stat` CPU time; the busy time
   outside every pod (the agent itself, the control plane, the kernel) and RAPL's idle share are the node's.
4. One delta per ledger key on the node's meter `<node>/energy` (the GPU source's meter name: a node that gains
   NVML later keeps one meter). A pod known only by its UID (not listed, or the list failing) is booked under
   `attribution.unresolved_workload`, visibly unresolved, and re-keyed once the list has it.

Nothing here raises for a part that fails (`pod_cpu.DegradingGuard`: counted in `degraded`, logged once per kind).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Set
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from moeops.carbon.accounting.ledger import DeltaId, EnergyDelta, WorkloadKey
from moeops.carbon.meter.attribution import PodInfo, node_deltas, pod_workload, unresolved_workload, workload_energy
from moeops.carbon.meter.pod_cpu import CpuAttribution, DegradingGuard, find_kubepods, scan_pod_cgroups
from moeops.carbon.meter.rapl import CpuEnergyMeter
from moeops.carbon.podresources.devices import CgroupRef

logger = logging.getLogger(__name__)

METER = "energy"
MIN_POD_REFRESH_S = 2.0


@dataclass(frozen=True)
class CpuSourceSettings:
    node: str
    region: str
    cgroup_root: Path
    """The cgroup v2 tree (`pod_cpu.find_cgroup2_root`), e.g. /sys/fs/cgroup or, hybrid, /sys/fs/cgroup/unified."""
    pods_ttl_s: float = 30.0
    proc_root: Path = Path("/proc")


@dataclass
class _PodList:
    by_uid: dict[str, PodInfo] = field(default_factory=dict)
    not_listed: set[str] = field(default_factory=set)
    """Pod cgroups the last successful list did not have (another node's, or left over): no reason to list again."""
    attempted_s: float | None = None
    succeeded_s: float | None = None


class CpuNodeSource:
    """The agent's `DeltaSource` where NVML is not there (module docstring). `pods`: the pod lister
    (`kube_pod_lister`, or a list in tests); `cpu`: the meter (RAPL or estimate)."""

    def __init__(
        self,
        settings: CpuSourceSettings,
        *,
        pods: Callable[[], Iterable[PodInfo]],
        cpu: CpuEnergyMeter,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._guard = DegradingGuard(logger)
        self.degraded = self._guard.counts
        self._list_pods, self._pods = pods, _PodList()
        self._cpu = CpuAttribution(cpu, settings.proc_root, self._guard)
        self._clock = clock
        self._meter = DeltaId(source=f"{settings.node}/{METER}", epoch=0, sequence=0)  # the spool stamps the ids
        self._pods_present: bool | None = None
        self._kubepods: list[Path] = []
        self._kubepods_found_s = -math.inf

    def _scan(self, now_s: float) -> dict[str, Path]:
        """Every pod cgroup; the pods hierarchies themselves are looked for again every `pods_ttl_s`, and every
        `MIN_POD_REFRESH_S` while there is none (the node's pods may not have started yet)."""
        due = self.settings.pods_ttl_s if self._kubepods else MIN_POD_REFRESH_S
        if now_s - self._kubepods_found_s >= due:
            self._kubepods, self._kubepods_found_s = find_kubepods(self.settings.cgroup_root), now_s
        return scan_pod_cgroups(self.settings.cgroup_root, kubepods=self._kubepods)

    def __call__(self) -> list[EnergyDelta]:
        now_s = self._clock()
        no_cgroups: dict[str, Path] = {}
        cgroups = self._guard("cgroup_scan", lambda: self._scan(now_s), no_cgroups)
        self._log_cgroups(len(cgroups))
        self._guard("pods", lambda: self._refresh_pods(now_s, cgroups.keys()), None)
        interval = self._cpu.split(cgroups)
        if interval is None:
            return []
        cpu_j: dict[WorkloadKey | None, float] = dict(workload_energy(interval.split.consumers_j, self._key_of).items())
        cpu_j[None] = interval.split.node_j
        settings = self.settings
        return node_deltas(self._meter, settings.node, settings.region, datetime.now(UTC), {}, cpu_j,
                           cpu_estimated=interval.energy.estimated)  # fmt: skip

    def _key_of(self, ref: CgroupRef) -> WorkloadKey:
        pod = self._pods.by_uid.get(ref.pod_uid)
        return unresolved_workload(ref) if pod is None else pod_workload(pod.namespace, pod.name, pod.labels)

    def _refresh_pods(self, now_s: float, uids: Set[str]) -> None:
        """The list again when its TTL is out, or when a pod cgroup appeared that it lacks, at most every
        `MIN_POD_REFRESH_S`; after a failed list, only when the TTL is out."""
        listing = self._pods
        if listing.attempted_s is not None:
            failed = listing.attempted_s != listing.succeeded_s
            new = not uids <= listing.by_uid.keys() | listing.not_listed
            due = MIN_POD_REFRESH_S if new and not failed else self.settings.pods_ttl_s
            if now_s - listing.attempted_s < due:
                return
        listing.attempted_s = now_s
        listing.by_uid = {pod.uid: pod for pod in self._list_pods()}
        listing.not_listed = set(uids - listing.by_uid.keys())
        listing.succeeded_s = now_s

    def _log_cgroups(self, count: int) -> None:
        """Says where pods are looked for: at the first call, and whenever pods appear where there were none or
        the last one goes."""
        present = count > 0
        if present == self._pods_present:
            return
        self._pods_present = present
        if present:
            logger.info("CPU time of %d pod cgroup(s) under %s", count, ", ".join(map(str, self._kubepods)))
        else:
            hierarchies = ", ".join(map(str, self._kubepods)) or "none yet"
            logger.info("no pod cgroup under %s (pods hierarchies: %s): the CPU energy is the node's until one "
                        "appears", self.settings.cgroup_root, hierarchies)  # fmt: skip
