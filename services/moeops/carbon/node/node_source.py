"""The node agent's energy source: each poll, the node's GPU and CPU energy since the previous one, charged to pods.

One poll (`NodeSource.__call__`, the agent's `DeltaSource`; between two of them, `sample()` only reads NVML, at
the agent's poll rate, so the energy integrates every reading while the rest runs once per commit):

1. NVML: every GPU's energy since the last poll (`NvmlReader`, counter or power integral).
2. Who holds which GPU: the kubelet's pod-resources map (`CachedDeviceMap`, refreshed every `device_map_ttl_s`).
   When the kubelet does not answer (`PodResourcesUnavailable`), the cgroup fallback: the PIDs NVML sees on each
   GPU, mapped to pods through `/proc/<pid>/cgroup`; the kubelet is asked again after a TTL, not every poll.
3. Shared GPUs (two holders or more, and every GPU in the fallback): per-process SM samples (`ProcessSampler`),
   the PIDs' containers from their cgroups and the pod list's container ids.
4. Pod labels: the pods on this node (`list pods` with `spec.nodeName=<node>`: the agent's RBAC needs only that),
   cached for `pods_ttl_s` and refreshed early (at most every `MIN_POD_REFRESH_S`) when a holder is not in it.
5. CPU, every `cpu_interval_s`: RAPL or the labelled estimate (`CpuEnergyMeter`), split over pods by their
   cgroup v2 `cpu.stat` usage (`pod_cpu`); the CPU time outside every pod, and all of it where no cpu.stat is
   readable, is node. A node without NVML runs `cpu_source.CpuNodeSource` instead.
6. `attribution` splits it: GPU idle power to node idle, the active rest to workloads by SM share.
7. MIG parents (`mig.py`): the instances' weights (SM count while running a compute process, else 0) split the
   parent's energy at every NVML poll; a busy instance is then a device keyed by its MIG UUID (as the kubelet's map
   keys `nvidia.com/mig-*`), charged to its holder like a whole GPU; energy while none is busy is node idle.

Idle power per GPU: configured (`gpu_idle_power_w`, one figure for every GPU of the node) or, by default, learned
from the GPU's own idle spans (nobody holds it, no process, no busy MIG instance) and kept for the agent's life
(`attribution.IdlePower`, which says why and what it costs): no window, so a job of any length keeps its energy.
A MIG parent's idle power is node idle too, taken from its busy instances in proportion to their energy.

Gaps: the part of each GPU's energy that is an estimate (`EnergyReport.estimated_j`: power across a counter reset
or a given-up counter, long power gaps) goes into the deltas as `gpu_estimated_j`, in proportion to their GPU
energy; `meter_states` is each GPU's `read_health.MeterState` after the last poll (metered / degraded / lost).

One delta per ledger key per poll (GPU and CPU joules together, meter `<node>/energy`; per-GPU meters would spool
8× as many). Every part but the NVML read degrades instead of raising (counted in `degraded`, logged once per
kind): the poll's NVML deltas are already taken, and an exception would lose them.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

from moeops.carbon.accounting.ledger import DeltaId, EnergyDelta, WorkloadKey
from moeops.carbon.meter.attribution import (
    GpuInterval,
    IdlePower,
    PodInfo,
    Split,
    node_deltas,
    pod_workload,
    pods_from_list,
    sm_weights,
    split_node,
    unresolved_workload,
    workload_energy,
)
from moeops.carbon.meter.gpu_processes import ProcessNvmlApi, ProcessSampler
from moeops.carbon.meter.mig import MigActivity, MigDeltas, MigNvmlApi, mig_intervals
from moeops.carbon.meter.nvml_reader import NvmlReader
from moeops.carbon.meter.pod_cpu import CpuAttribution, DegradingGuard, scan_pod_cgroups
from moeops.carbon.meter.rapl import CpuEnergyMeter
from moeops.carbon.meter.read_health import MeterState
from moeops.carbon.podresources.cgroup import read_pid_cgroup
from moeops.carbon.podresources.devices import CachedDeviceMap, CgroupRef, ContainerRef, DeviceMap

logger = logging.getLogger(__name__)

Consumer = ContainerRef | CgroupRef
AnyConsumer = TypeVar("AnyConsumer", bound=Consumer)
METER = "energy"
MIN_POD_REFRESH_S = 2.0
SM_HOLD_S = 1.0
"""An interval without SM samples reuses the GPU's last weights this long: the driver samples about every 1/6 s,
so at 10 Hz many polls see none, and an equal split for those would blur a 3:1 share towards 1:1."""


class SourceNvmlApi(ProcessNvmlApi, MigNvmlApi, Protocol):
    """pynvml as the source uses it beside the reader (handles by index, the process and the MIG calls)."""


def kube_pod_lister(node: str, *, timeout_s: float = 5.0) -> Callable[[], list[PodInfo]]:
    """The pods on `node`, from the API server with the pod's service account (or the local kubeconfig), loaded at
    the first call so that a failure degrades like any other. RBAC: `list` on `pods`, cluster-wide (the field
    selector keeps the answer to this node's pods)."""
    apis: list[Any] = []

    def list_pods() -> list[PodInfo]:
        from kubernetes import client, config  # imported here: tests and NVML-only runs need no cluster config

        if not apis:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            apis.append(client.CoreV1Api())
        # Raw JSON rather than the client's models: a node's 100+ pods deserialize several times faster.
        response = apis[0].list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={node}", _preload_content=False, _request_timeout=timeout_s
        )
        return pods_from_list(json.loads(response.data))

    return list_pods


@dataclass(frozen=True)
class NodeSourceSettings:
    node: str
    region: str
    gpu_idle_power_w: float | None = None
    """None: measured per GPU (see the module docstring)."""
    device_map_ttl_s: float = 10.0
    pods_ttl_s: float = 30.0
    cpu_interval_s: float = 1.0
    """CPU energy and cgroup reads at most this often: a poll at 10 Hz need not read 100 pods' cpu.stat."""
    mig_interval_s: float = 1.0
    """MIG instances' activity measured at most this often (`mig.MigActivity`), and held in between."""
    proc_root: Path = Path("/proc")
    cgroup_root: Path = Path("/sys/fs/cgroup")


@dataclass
class _Pods:
    """The node's pods by name and by UID, as of the last successful list."""

    by_name: dict[tuple[str, str], PodInfo] = field(default_factory=dict)
    by_uid: dict[str, PodInfo] = field(default_factory=dict)
    cgroups: dict[str, Path] = field(default_factory=dict)  # pod UID → its cgroup directory, rescanned per list
    fetched_at_s: float | None = None


class NodeSource:
    """The agent's `DeltaSource` (module docstring). `devices`: the kubelet's map (`PodResourcesClient.devices`),
    None for the cgroup fallback only; `pods`: the pod lister (`kube_pod_lister`, or a list in tests); `cpu`: None
    for GPU energy only; `on_split`: each call's split per device and pods by UID (`poll_telemetry`, guarded)."""

    def __init__(
        self,
        reader: NvmlReader,
        nvml: SourceNvmlApi,
        settings: NodeSourceSettings,
        *,
        devices: Callable[[], DeviceMap] | None,
        pods: Callable[[], Iterable[PodInfo]],
        cpu: CpuEnergyMeter | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_split: Callable[[Mapping[str, Split[Consumer]], Mapping[str, PodInfo]], None] = lambda *_: None,
    ) -> None:
        self._reader, self._nvml, self.settings = reader, nvml, settings
        self._guard = DegradingGuard(logger)
        self.degraded = self._guard.counts
        self._devices = None if devices is None else CachedDeviceMap(devices, settings.device_map_ttl_s, clock)
        self._device_retry_at_s = self._cpu_due_s = -math.inf
        self._list_pods, self._pods = pods, _Pods()
        self._pods_attempt_s: float | None = None
        self._cpu = None if cpu is None else CpuAttribution(cpu, settings.proc_root, self._guard)
        self._clock, self._on_split = clock, on_split
        self._sampler = ProcessSampler(nvml)
        self._mig = MigActivity(nvml, lambda: reader.gpus, settings.mig_interval_s, clock)
        self._mig_deltas = MigDeltas()
        self._handles: dict[str, object] = {}
        self._owners: dict[int, Consumer | None] = {}
        self._keys: dict[Consumer, WorkloadKey] = {}
        self._last_sm: dict[str, tuple[float, dict[int, float]]] = {}
        self._idle: dict[str, IdlePower] = {}
        self._gpu_total_j: dict[str, float] = {}
        self._gpu_estimated_j: dict[str, float] = {}
        self._gpu_covered_s: dict[str, float] = {}
        self.meter_states: dict[str, MeterState] = {}
        self._meter = DeltaId(source=f"{settings.node}/{METER}", epoch=0, sequence=0)  # the spool stamps the ids
        self.fallback_polls = 0  # polls attributed through cgroups: the kubelet's map was unavailable

    def sample(self) -> None:
        """A reading between two calls (the agent's polls between commits): NVML only, attributed at the next call."""
        self._reader.poll(self._guard("mig_activity", self._mig.weights, None))

    def __call__(self) -> list[EnergyDelta]:
        self.sample()
        now_s = self._clock()
        intervals, mig_j, gpus = self._gpu_intervals()
        self._guard("pods", lambda: self._refresh_pods(now_s, force=False), None)
        holders = self._holders(now_s)
        sm_by_device, owner, found = self._activity(now_s, intervals, holders)
        assigned: Mapping[str, Sequence[Consumer]] = holders if holders is not None else found
        gpu = split_node(intervals, assigned, sm_by_device, owner)
        for uuid, (energy_j, covered_s, busy_mig) in gpus.items():  # after the split: this call used the old figure
            idle = not busy_mig and not assigned.get(uuid) and not sm_by_device.get(uuid)
            self._idle.setdefault(uuid, IdlePower()).add(energy_j, covered_s, idle=idle)
        self._guard("telemetry", partial(self._on_split, gpu.devices, self._pods.by_uid), None)
        gpu_j = self._by_key(gpu.consumers_j, math.fsum([gpu.idle_j, gpu.unowned_j, mig_j]))
        estimated_j = math.fsum(self._estimated_since_last())
        cpu_j, estimated = self._cpu_split(now_s)
        return self._deltas(gpu_j, cpu_j, estimated, estimated_j)

    def _gpu_intervals(self) -> tuple[list[GpuInterval], float, dict[str, tuple[float, float, bool]]]:
        """Each GPU's interval (idle power learned or configured), a MIG parent's busy instances' instead
        (`mig.mig_intervals`); the MIG parents' energy of no instance (the node's); and per GPU its energy and
        the time it covers and whether a MIG instance was busy (for `IdlePower`)."""
        intervals: list[GpuInterval] = []
        mig_j = 0.0
        gpus: dict[str, tuple[float, float, bool]] = {}
        for gpu in self._reader.report():
            uuid = gpu.gpu.uuid
            self.meter_states[uuid] = gpu.state
            total_j = gpu.energy.energy_j
            if total_j is None:  # unknown energy is not 0 J: nothing to book
                continue
            # A total below the last one (a returning counter withdrew a too-high estimate) books nothing until the
            # total passes the last one again: the deltas' sum stays the meter's.
            energy_j = max(total_j - self._gpu_total_j.get(uuid, 0.0), 0.0)
            self._gpu_total_j[uuid] = max(total_j, self._gpu_total_j.get(uuid, 0.0))
            # The time this energy covers, not the wall time since the last call: energy a counter catches up after
            # an outage covers the outage, and its idle share is the idle power over all of it.
            covered_s = max(gpu.energy.covered_s - self._gpu_covered_s.get(uuid, 0.0), 0.0)
            self._gpu_covered_s[uuid] = max(gpu.energy.covered_s, self._gpu_covered_s.get(uuid, 0.0))
            interval_s = covered_s
            idle_w = self.settings.gpu_idle_power_w
            if idle_w is None:
                idle_w = self._idle.setdefault(uuid, IdlePower()).power_w() or 0.0
            if gpu.gpu.mig_enabled:
                instances, node_j = mig_intervals(self._mig_deltas.delta(uuid, gpu.mig_j), interval_s, idle_w)
                intervals += instances
                mig_j += node_j
                gpus[uuid] = (energy_j, interval_s, bool(instances))
            else:
                intervals.append(GpuInterval(uuid, energy_j, interval_s, idle_w))
                gpus[uuid] = (energy_j, interval_s, False)
        return intervals, mig_j, gpus

    def _estimated_since_last(self) -> list[float]:
        """Per GPU, the estimated joules added since the previous call (withdrawn estimates carried as above)."""
        parts = []
        for gpu in self._reader.report():
            uuid, estimated_j = gpu.gpu.uuid, gpu.energy.estimated_j
            parts.append(max(estimated_j - self._gpu_estimated_j.get(uuid, 0.0), 0.0))
            self._gpu_estimated_j[uuid] = max(estimated_j, self._gpu_estimated_j.get(uuid, 0.0))
        return parts

    def _holders(self, now_s: float) -> DeviceMap | None:
        """The kubelet's device map, or None for the cgroup fallback this poll."""
        holders = None
        if self._devices is not None and now_s >= self._device_retry_at_s:
            holders = self._guard("device_map", self._devices.get, None)  # PodResourcesUnavailable, mostly
            if holders is None:  # asked again after a TTL: a kubelet that times out would stall every poll
                self._device_retry_at_s = now_s + self.settings.device_map_ttl_s
        self.fallback_polls += holders is None
        return holders

    def _activity(
        self, now_s: float, intervals: list[GpuInterval], holders: DeviceMap | None
    ) -> tuple[dict[str, dict[int, float]], dict[int, Consumer], dict[str, tuple[Consumer, ...]]]:
        """SM weights per device, PID → consumer, and (fallback) the consumers found on each device."""
        sm_by_device: dict[str, dict[int, float]] = {}
        owner: dict[int, Consumer] = {}
        found: dict[str, tuple[Consumer, ...]] = {}
        for interval in intervals:
            uuid = interval.device_id
            if holders is not None and len(holders.get(uuid, ())) < 2:
                continue  # one holder (or none) takes the whole active energy: no samples needed
            handle = self._handle(uuid)
            if handle is None:
                continue
            pids = self._sampler.running_pids(uuid, handle) if holders is None else ()
            weights = sm_weights(self._sampler.sm_samples(uuid, handle))
            if weights:
                self._last_sm[uuid] = (now_s, weights)
            elif (last := self._last_sm.get(uuid)) and now_s - last[0] <= SM_HOLD_S:
                weights = last[1]
            sm_by_device[uuid] = weights
            for pid in {*pids, *weights}:
                if (consumer := self._owner(pid)) is not None:
                    owner[pid] = consumer
            found[uuid] = tuple(dict.fromkeys(owner[pid] for pid in pids if pid in owner))
        return sm_by_device, owner, found

    def _handle(self, uuid: str) -> object | None:
        """A GPU's handle, or a MIG device's (no SM samples there: holders of one instance share it equally)."""
        if uuid not in self._handles:
            index = next((gpu.index for gpu in self._reader.gpus if gpu.uuid == uuid), None)
            if index is None:
                return self._mig.handle(uuid)
            handle = self._guard("gpu_handle", partial(self._nvml.nvmlDeviceGetHandleByIndex, index), None)
            if handle is None:
                return None
            self._handles[uuid] = handle
        return self._handles[uuid]

    def _owner(self, pid: int) -> Consumer | None:
        """The container of a GPU process: by name where the pod list knows its cgroup's pod and container id,
        else the cgroup itself (booked under the pod's UID). Cached: PIDs live as long as their process."""
        if pid not in self._owners:
            self._owners[pid] = self._resolve(read_pid_cgroup(pid, self.settings.proc_root))
        return self._owners[pid]

    def _resolve(self, ref: CgroupRef | None) -> Consumer | None:
        if ref is None:
            return None
        pod = self._known(lambda: self._pods.by_uid.get(ref.pod_uid))
        if pod is None or ref.container_id is None or ref.container_id not in pod.container_ids:
            return ref
        return ContainerRef(pod.namespace, pod.name, pod.container_ids[ref.container_id])

    def _refresh_pods(self, now_s: float, *, force: bool) -> None:
        """List the pods when the TTL is out, or (`force`) when a holder is missing from the list, but never again
        within the TTL of a failed list: the call blocks the poll for up to its timeout."""
        attempted, succeeded = self._pods_attempt_s, self._pods.fetched_at_s
        ok = attempted is None or attempted == succeeded
        due = MIN_POD_REFRESH_S if force and ok else self.settings.pods_ttl_s
        if attempted is not None and now_s - attempted < due:
            return
        self._pods_attempt_s = now_s
        pods = list(self._list_pods())
        self._pods = _Pods({(p.namespace, p.name): p for p in pods}, {p.uid: p for p in pods}, fetched_at_s=now_s)
        scan = partial(scan_pod_cgroups, self.settings.cgroup_root, lambda uid: uid in self._pods.by_uid)
        self._pods.cgroups = self._guard("cgroup_scan", scan, {})
        self._owners, self._keys = {}, {}  # re-resolved against the new list (and a reused PID is not kept)

    def _by_key(self, consumers_j: Mapping[AnyConsumer, float], node_j: float) -> dict[WorkloadKey | None, float]:
        """Energy per ledger key, None being the node's idle energy."""
        by_key: dict[WorkloadKey | None, float] = dict(workload_energy(consumers_j, self._key_of).items())
        return {**by_key, None: node_j}

    def _known(self, find: Callable[[], PodInfo | None]) -> PodInfo | None:
        """A pod of the list; when it is not there, the list again (at most every `MIN_POD_REFRESH_S`): a pod that
        started since the last list should not have its first half-minute booked as `other` or unresolved."""
        if (pod := find()) is None:
            self._guard("pods", lambda: self._refresh_pods(self._clock(), force=True), None)
            pod = find()
        return pod

    def _key_of(self, consumer: Consumer) -> WorkloadKey:
        """Cached until the next pod list: building the key (pydantic) per consumer per poll was a tenth of a poll."""
        if (key := self._keys.get(consumer)) is not None:
            return key
        if isinstance(consumer, CgroupRef):
            pod = self._known(lambda: self._pods.by_uid.get(consumer.pod_uid))
            key = unresolved_workload(consumer) if pod is None else pod_workload(pod.namespace, pod.name, pod.labels)
        else:
            pod = self._known(lambda: self._pods.by_name.get((consumer.namespace, consumer.pod)))
            key = pod_workload(consumer.namespace, consumer.pod, pod.labels if pod else {})
        if pod is not None:  # a pod not (yet) listed is looked up again next time
            self._keys[consumer] = key
        return key

    def _cpu_split(self, now_s: float) -> tuple[dict[WorkloadKey | None, float], bool]:
        """The CPU energy of the interval per key, and whether it is an estimate; empty between CPU intervals."""
        if self._cpu is None or now_s < self._cpu_due_s:
            return {}, False
        self._cpu_due_s = now_s + self.settings.cpu_interval_s
        interval = self._cpu.split(self._pods.cgroups)
        if interval is None:
            return {}, False
        return self._by_key(interval.split.consumers_j, interval.split.node_j), interval.energy.estimated

    def _deltas(
        self,
        gpu_j: Mapping[WorkloadKey | None, float],
        cpu_j: Mapping[WorkloadKey | None, float],
        estimated: bool,
        gpu_estimated_j: float,
    ) -> list[EnergyDelta]:
        settings = self.settings
        return node_deltas(self._meter, settings.node, settings.region, datetime.now(UTC), gpu_j, cpu_j,
                           cpu_estimated=estimated, gpu_estimated_j=gpu_estimated_j)  # fmt: skip
