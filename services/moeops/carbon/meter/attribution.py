"""Whose energy it was: one interval's GPU (and CPU) energy split over containers and node idle. Pure: no I/O.

Rules for one GPU (or MIG device) over one interval:

1. Idle first: `idle_power_w × dt_s` (configured, or measured on the idle GPU), capped at the interval's energy, is
   node idle. Why: an allocated GPU draws its idle power whether its pod computes or sleeps, and a GPU nobody holds
   draws it too; charging it to whoever happens to hold the GPU would make a job's footprint depend on how full the
   node is. The ledger keeps it per node, as the cluster's cost of being on.
2. The active rest goes to the GPU's consumers: the containers the kubelet assigned it to, plus the owners of the
   processes NVML saw on it (a container that sees every GPU, such as a privileged one, is a consumer too). Several
   consumers share it by SM utilization (`nvmlDeviceGetProcessUtilization`, summed per container); when none
   reported any, equally among them (the samples missed a short burst, or the GPU is time-sliced at low load).
3. Active energy nobody can be charged with (no consumer at all, or the share of processes that are in no pod) is
   `unowned_j`: the agent books it as node idle too, but it is counted apart so that it can be seen.

Every split is exact: `math.fsum` of the parts equals the energy given (the rounding residue goes to the largest
part), so the ledger's per-workload sums and the node meters' sums agree.

Pods carry the operator's labels (`moeops.operator.naming`, copied here: the carbon side must not import the
operator; a unit test keeps the copies equal), which `pod_workload` maps to the ledger's `WorkloadKey`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Generic, TypeVar

from moeops.carbon.accounting.ledger import DeltaId, EnergyDelta, Stage, WorkloadKey, WorkloadKind
from moeops.carbon.podresources.devices import CgroupRef

C = TypeVar("C", bound=Hashable)
"""A consumer: `ContainerRef` from the kubelet, or `CgroupRef` in the fallback."""

TRAINING_JOB_LABEL = "moeops.dev/training-job"
INFERENCE_SERVICE_LABEL = "moeops.dev/inference-service"
APP_LABELS = ("app.kubernetes.io/instance", "app.kubernetes.io/name", "app")
"""For a pod no moeops resource owns: the first of these it has names its workload, else the pod's own name."""
UNRESOLVED_NAMESPACE = "_unresolved"
"""Never a real namespace (`_` is not allowed in one): energy of a pod known only by its UID."""
MAX_SM_PERCENT = 100.0


def exact_split(total: float, weights: Mapping[C, float]) -> dict[C, float]:
    """`total` over the keys in proportion to their weights (all > 0, finite), with `math.fsum` of the result ==
    `total` exactly: the residue of rounding goes to the largest part, as many times as it takes (once, nearly
    always; the loop is bounded)."""
    weight_sum = math.fsum(weights.values())
    parts = {key: total * weight / weight_sum for key, weight in weights.items()}
    return settle(total, parts)


def settle(total: float, parts: dict[C, float]) -> dict[C, float]:
    """Make `math.fsum(parts.values()) == total` by moving the residue onto the largest part.

    Why the second step: after the largest part absorbs the residue, the exact sum can still sit on a rounding tie
    half an ulp from `total` (fsum then rounds to even, possibly away from it). Nudging the smallest positive part
    by its own ulp, at most half of `total`'s since it is at most half the sum, moves the sum off the tie towards
    `total`."""
    if not parts:
        return parts
    largest = max(parts, key=lambda key: parts[key])
    for _ in range(8):
        residue = total - math.fsum(parts.values())
        if residue == 0:
            break
        parts[largest] += residue
        off = math.fsum(parts.values()) - total
        positive = [key for key, value in parts.items() if value > 0 and key != largest]
        if off != 0 and positive:
            smallest = min(positive, key=lambda key: parts[key])
            parts[smallest] = math.nextafter(parts[smallest], -math.inf if off > 0 else math.inf)
    return parts


@dataclass(frozen=True)
class GpuInterval:
    """One device's energy over one interval: a GPU by UUID, or a MIG device by MIG UUID (its share of the parent,
    from `nvml_reader`)."""

    device_id: str
    energy_j: float
    dt_s: float
    idle_power_w: float
    """Below this the device is idle. A MIG device's own idle power is its slice of the parent's (or 0, with the
    parent's idle booked once under the parent's UUID)."""

    def __post_init__(self) -> None:
        for name in ("energy_j", "dt_s", "idle_power_w"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be finite and non-negative, got {value} for {self.device_id}")


@dataclass(frozen=True)
class Split(Generic[C]):
    """Where one interval's energy went. `math.fsum` of idle_j, unowned_j and consumers_j equals the input."""

    idle_j: float
    unowned_j: float
    consumers_j: Mapping[C, float]
    equal_split: bool = False
    """The consumers shared it equally because none reported SM (or CPU) activity."""

    @property
    def node_j(self) -> float:
        """What the ledger books as the node's idle energy (key None)."""
        return self.idle_j + self.unowned_j


def sm_weights(samples: Iterable[tuple[int, float]]) -> dict[int, float]:
    """PID → its summed SM utilization over an interval's samples (`nvmlDeviceGetProcessUtilization` gives one per
    process per sampling period, so the sum is proportional to SM time). Readings outside 0–100 % are dropped:
    NVML reports an unsupported or unknown value as a huge unsigned number."""
    weights: dict[int, float] = {}
    for pid, sm_percent in samples:
        if math.isfinite(sm_percent) and 0 <= sm_percent <= MAX_SM_PERCENT:
            weights[pid] = weights.get(pid, 0.0) + sm_percent
    return weights


class _Bucket(Enum):
    """The parts of a split that are no consumer (an enum, so that no consumer can be equal to one)."""

    IDLE = "idle"
    UNOWNED = "unowned"


def split_active(
    energy_j: float,
    idle_j: float,
    assigned: Sequence[C],
    activity: Mapping[int, float],
    owner: Mapping[int, C],
) -> Split[C]:
    """`energy_j` of which `idle_j` is idle; the rest over `assigned` ∪ the owners of the PIDs in `activity`
    (PID → activity weight on this device), by activity, equally when there is none, unowned when nobody is there."""
    idle_j = min(max(idle_j, 0.0), energy_j)
    active_j = energy_j - idle_j
    if not activity and len(assigned) <= 1:  # a GPU with one holder (no samples taken) or none: nothing to weigh
        only: C | _Bucket = assigned[0] if assigned else _Bucket.UNOWNED
        return _settled(energy_j, idle_j, {only: active_j}, equal=bool(assigned))
    consumers: list[C] = list(dict.fromkeys([*assigned, *(owner[pid] for pid in activity if pid in owner)]))
    weights: dict[C, float] = dict.fromkeys(consumers, 0.0)
    unowned_weight = 0.0
    for pid, weight in activity.items():
        clean = weight if math.isfinite(weight) and weight > 0 else 0.0
        if pid in owner:
            weights[owner[pid]] += clean
        else:
            unowned_weight += clean
    positive: dict[C | _Bucket, float] = {key: w for key, w in weights.items() if w > 0}
    if unowned_weight > 0:
        positive[_Bucket.UNOWNED] = unowned_weight
    equal = False
    if positive:
        shares = exact_split(active_j, positive)
    elif consumers:
        shares, equal = exact_split(active_j, dict.fromkeys(consumers, 1.0)), True
    else:
        shares = {_Bucket.UNOWNED: active_j}
    return _settled(energy_j, idle_j, shares, equal=equal)


def _settled(energy_j: float, idle_j: float, shares: Mapping[C | _Bucket, float], *, equal: bool) -> Split[C]:
    """The split of `energy_j` into `idle_j` and the active `shares`, its sum made exact (`settle`)."""
    parts: dict[C | _Bucket, float] = {_Bucket.IDLE: idle_j, _Bucket.UNOWNED: 0.0, **shares}
    parts = settle(energy_j, parts)
    consumers_j: dict[C, float] = {key: value for key, value in parts.items() if not isinstance(key, _Bucket)}
    return Split(parts[_Bucket.IDLE], parts[_Bucket.UNOWNED], consumers_j, equal)


def split_gpu(
    interval: GpuInterval,
    assigned: Sequence[C],
    sm_by_pid: Mapping[int, float],
    owner: Mapping[int, C],
) -> Split[C]:
    """One device's interval over node idle, its consumers and unowned (see the module docstring)."""
    return split_active(interval.energy_j, interval.idle_power_w * interval.dt_s, assigned, sm_by_pid, owner)


def split_cpu(energy_j: float, idle_j: float, cpu_s: Mapping[C, float], node_busy_cpu_s: float) -> Split[C]:
    """The CPU package's interval (RAPL or estimate): `idle_j` to idle, the rest by CPU time (cgroup `cpu.stat`
    usage per container over the interval); the node's busy CPU time outside every container (the kubelet, the
    runtime, the kernel) is unowned. With no CPU time measured at all, the active part is unowned."""
    clean = {key: s for key, s in cpu_s.items() if math.isfinite(s) and s > 0}
    others_s = max(node_busy_cpu_s - math.fsum(clean.values()), 0.0) if math.isfinite(node_busy_cpu_s) else 0.0
    activity: dict[int, float] = {}
    owner: dict[int, C] = {}
    for index, (key, seconds) in enumerate(clean.items()):
        activity[index], owner[index] = seconds, key
    if others_s > 0:
        activity[-1] = others_s
    return split_active(energy_j, idle_j, (), activity, owner)


@dataclass
class NodeAttribution(Generic[C]):
    """A node's intervals added up: per consumer, idle and unowned (each summed with `math.fsum`)."""

    devices: dict[str, Split[C]] = field(default_factory=dict)

    def add(self, device_id: str, split: Split[C]) -> None:
        self.devices[device_id] = split

    @property
    def consumers_j(self) -> dict[C, float]:
        parts: dict[C, list[float]] = {}
        for split in self.devices.values():
            for key, value in split.consumers_j.items():
                parts.setdefault(key, []).append(value)
        return {key: math.fsum(values) for key, values in parts.items()}

    @property
    def idle_j(self) -> float:
        return math.fsum(split.idle_j for split in self.devices.values())

    @property
    def unowned_j(self) -> float:
        return math.fsum(split.unowned_j for split in self.devices.values())


def split_node(
    intervals: Iterable[GpuInterval],
    assigned: Mapping[str, Sequence[C]],
    sm_by_device: Mapping[str, Mapping[int, float]],
    owner: Mapping[int, C],
) -> NodeAttribution[C]:
    """Every device of a node over one interval: `assigned` is the device map (device id → containers),
    `sm_by_device` device id → PID → SM weight, `owner` PID → container."""
    node: NodeAttribution[C] = NodeAttribution()
    for interval in intervals:
        device = interval.device_id
        node.add(device, split_gpu(interval, assigned.get(device, ()), sm_by_device.get(device, {}), owner))
    return node


@dataclass(frozen=True)
class PodInfo:
    """A pod on this node as attribution needs it (`pods_from_list`): its labels name its workload."""

    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str] = field(default_factory=dict)
    container_ids: Mapping[str, str] = field(default_factory=dict)
    """Runtime container id (the 64 hex digits, without `containerd://`) → container name."""


def pods_from_list(body: Mapping[str, Any]) -> list[PodInfo]:
    """A `PodList` as JSON (what `list pods` answers) → the fields attribution needs."""
    pods = []
    for item in body.get("items") or []:
        meta, status = item.get("metadata") or {}, item.get("status") or {}
        statuses = [*(status.get("containerStatuses") or []), *(status.get("initContainerStatuses") or [])]
        ids = {s["containerID"].split("://", 1)[-1]: s["name"] for s in statuses if s.get("containerID")}
        pods.append(PodInfo(meta["namespace"], meta["name"], meta["uid"], dict(meta.get("labels") or {}), ids))
    return pods


def pod_workload(
    namespace: str, pod: str, labels: Mapping[str, str], *, other_stage: Stage = Stage.INFERENCE
) -> WorkloadKey:
    """The ledger key of a pod from its labels: a MoETrainingJob's workers train, an InferenceService's pods serve;
    any other pod is kind `other`, named by its app label (or its own name), at `other_stage` (the ledger has no
    stage for "not ours"; serving is what most long-running GPU pods do)."""
    if job := labels.get(TRAINING_JOB_LABEL):
        return WorkloadKey(namespace=namespace, kind=WorkloadKind.TRAINING_JOB, name=job, stage=Stage.TRAIN)
    if service := labels.get(INFERENCE_SERVICE_LABEL):
        return WorkloadKey(
            namespace=namespace, kind=WorkloadKind.INFERENCE_SERVICE, name=service, stage=Stage.INFERENCE
        )
    name = next((value for label in APP_LABELS if (value := labels.get(label))), pod)
    return WorkloadKey(namespace=namespace, kind=WorkloadKind.OTHER, name=name, stage=other_stage)


def unresolved_workload(ref: CgroupRef, *, stage: Stage = Stage.INFERENCE) -> WorkloadKey:
    """The ledger key of a pod known only by UID (cgroup fallback, API server not asked or not answering): kind
    `other` in the namespace `_unresolved`, named `pod-<uid>`, so that it is booked, visibly unresolved."""
    return WorkloadKey(namespace=UNRESOLVED_NAMESPACE, kind=WorkloadKind.OTHER, name=f"pod-{ref.pod_uid}", stage=stage)


def workload_energy(consumers_j: Mapping[C, float], key_of: Callable[[C], WorkloadKey]) -> dict[WorkloadKey, float]:
    """Consumers' energy per ledger key (two containers of one pod, or two pods of one job, share a key), each
    summed with `math.fsum`, so the keys' sum is the consumers' sum."""
    parts: dict[WorkloadKey, list[float]] = {}
    for consumer, energy_j in consumers_j.items():
        parts.setdefault(key_of(consumer), []).append(energy_j)
    return {key: math.fsum(values) for key, values in parts.items()}


def node_deltas(
    meter: DeltaId,
    node: str,
    region: str,
    at: datetime,
    gpu_j: Mapping[WorkloadKey | None, float],
    cpu_j: Mapping[WorkloadKey | None, float],
    *,
    cpu_estimated: bool,
    gpu_estimated_j: float = 0.0,
) -> list[EnergyDelta]:
    """One delta per ledger key (None: node idle) with energy, GPU and CPU joules together on the node's meter.
    `gpu_estimated_j`, the estimated part of the GPU energy, is spread over the deltas in proportion to their GPU
    energy (an estimate is the GPU's, not any one workload's)."""
    gpu_total_j = math.fsum(gpu_j.values())
    share = min(gpu_estimated_j / gpu_total_j, 1.0) if gpu_total_j > 0 and gpu_estimated_j > 0 else 0.0
    out = []
    for key in dict.fromkeys([*gpu_j, *cpu_j]):
        gpu, cpu = gpu_j.get(key, 0.0), cpu_j.get(key, 0.0)
        if gpu > 0 or cpu > 0:
            out.append(EnergyDelta(id=meter, node=node, region=region, at=at, key=key, gpu_energy_j=gpu,
                                   cpu_energy_j=cpu, cpu_estimated=cpu_estimated and cpu > 0,
                                   gpu_estimated_j=gpu * share))  # fmt: skip
    return out


@dataclass
class IdlePower:
    """A device's idle power, learned from its idle spans and kept: the lowest mean power of any span of at least
    `span_s` in which nobody used the device (no holder, no process, no busy MIG instance).

    Why only idle spans: the lowest power of *any* span is a busy GPU's floor when it never idles, so a job busy from
    the agent's start would have its whole draw booked as idle (0 J to the job). Why kept, not windowed: an hour's
    window forgot the idle spans of a job that started more than an hour ago, and its energy went to node idle
    from then on. Why the minimum, over spans of a second rather than single polls: an idle GPU's draw varies by
    clocks and memory state, and a short dip between two readings is not a state.

    Until the device has idled for a span it has no learned idle power (`power_w()` is None): the caller then uses
    the configured figure, or none, so that the holder is charged all of it (an overcharge by the idle power, which
    is visible, rather than a job booked at 0 J)."""

    span_s: float = 1.0
    learned_w: float | None = None
    _energy_j: float = field(default=0.0, init=False)
    _dt_s: float = field(default=0.0, init=False)

    def add(self, energy_j: float, dt_s: float, *, idle: bool) -> None:
        """An interval of `dt_s` in which the device used `energy_j`; `idle`: nobody was using it."""
        if not idle:
            self._energy_j = self._dt_s = 0.0  # a span is idle through and through
            return
        if dt_s <= 0 or not math.isfinite(energy_j) or energy_j < 0:
            return
        self._energy_j += energy_j
        self._dt_s += dt_s
        if self._dt_s >= self.span_s:
            power_w = self._energy_j / self._dt_s
            self.learned_w = power_w if self.learned_w is None else min(self.learned_w, power_w)
            self._energy_j = self._dt_s = 0.0

    def power_w(self) -> float | None:
        """The learned idle power; None before the device was seen idle for a span."""
        return self.learned_w


def cpu_idle_share_j(energy_j: float, busy_share: float, *, estimated: bool) -> float:
    """The CPU package energy booked as node idle: the share of the interval the CPUs were idle. Why: RAPL measures
    the package whether it computes or not, and like a GPU's idle power that is nobody's doing. An estimate from
    utilization (`rapl.ESTIMATE_METHOD`) already models no idle power, so none of it is idle."""
    if estimated or not math.isfinite(busy_share):
        return 0.0
    return energy_j * (1.0 - min(max(busy_share, 0.0), 1.0))
