"""MIG: how busy each instance of a MIG parent was, and the parent's energy as per-instance intervals.

NVML reads energy and power only on a MIG parent, so `nvml_reader` splits the parent's energy over its instances by
activity weights (`energy.split_by_weights`). `MigActivity` measures them, per instance (NVML calls on the MIG
device's handle, enumerated from the parent: `nvmlDeviceGetMaxMigDeviceCount`, `nvmlDeviceGetMigDeviceHandleByIndex`,
`nvmlDeviceGetUUID`):

    weight = its SM count (`nvmlDeviceGetAttributes(mig).multiprocessorCount`) while it has a running compute process
             (`nvmlDeviceGetComputeRunningProcesses(mig)` not empty), else 0.

So a busy interval's energy goes to the busy instances by their share of the busy SMs, and an interval in which no
instance runs anything stays with the node (`energy.IDLE`). Why SM count and not a measured utilization: NVML has
no per-instance utilization that works everywhere. `nvmlDeviceGetUtilizationRates` and
`nvmlDeviceGetProcessUtilization` answer NOT_SUPPORTED on MIG devices; GPM (`nvmlGpmMigSampleGet`, SM activity per
GPU instance) would measure real activity, but only on Hopper and newer, with two samples and a metrics query per
interval per instance, and nothing here has run it on a real GPU yet. The SM count is what an instance can draw
power with: a fair split of busy instances doing comparable work, not of one that computes and one that waits.

Errors, per instance, never raised: an instance that vanished (NOT_FOUND: destroyed since the enumeration) or whose
process list fails weighs 0 this time; an SM count NVML does not give (NOT_SUPPORTED) makes every busy instance of
that parent weigh 1 (an equal split of the busy ones rather than a mix of SMs and ones). Failures other than
NOT_FOUND and NOT_SUPPORTED are counted in `errors` by kind. Weights are measured at most every `interval_s`
(default 1 s, about 20 calls per parent): the reader polls at 10 Hz and processes start and stop far more rarely.

`mig_intervals` turns an interval's per-instance energy (the reader's per-instance totals, differenced) into
`attribution.GpuInterval`s keyed by MIG UUID, the key the kubelet's pod-resources map uses for
`nvidia.com/mig-<profile>` devices, so a pod holding an instance is charged like one holding a whole GPU.
"""

# ruff: noqa: N802 -- MigNvmlApi mirrors pynvml's camelCase names, which are not ours to choose.

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol, TypeVar

from moeops.carbon.meter.attribution import GpuInterval
from moeops.carbon.meter.energy import IDLE
from moeops.carbon.meter.nvml_reader import GpuInfo, NvmlErrorApi

T = TypeVar("T")
CLOCK_SLACK_S = 1e-6
"""Ten polls of 0.1 s add up to 0.999… s: without slack, the measurement would slip a poll every interval."""
Weights = dict[str, dict[str, float]]
"""MIG parent UUID → MIG device UUID → weight: what `NvmlReader.poll` takes."""


class _RunningProcess(Protocol):
    @property
    def pid(self) -> int: ...


class _DeviceAttributes(Protocol):
    @property
    def multiprocessorCount(self) -> int: ...


class MigNvmlApi(NvmlErrorApi, Protocol):
    """The part of pynvml used here (names as in pynvml; handles are opaque)."""

    def nvmlDeviceGetHandleByIndex(self, index: int, /) -> object: ...
    def nvmlDeviceGetMaxMigDeviceCount(self, handle: object, /) -> int: ...
    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: object, index: int, /) -> object: ...
    def nvmlDeviceGetUUID(self, handle: object, /) -> str: ...
    def nvmlDeviceGetAttributes(self, handle: object, /) -> _DeviceAttributes: ...
    def nvmlDeviceGetComputeRunningProcesses(self, handle: object, /) -> Sequence[_RunningProcess]: ...


@dataclass
class MigActivity:
    """Per MIG parent of `parents()` (the reader's GPUs; the others are skipped), each instance's weight (see the
    module docstring), measured at most every `interval_s` and held in between."""

    nvml: MigNvmlApi
    parents: Callable[[], Sequence[GpuInfo]]
    interval_s: float = 1.0
    clock: Callable[[], float] = time.monotonic
    errors: Counter[str] = field(default_factory=Counter)
    _parent_handles: dict[str, tuple[object, int]] = field(default_factory=dict)
    """Parent UUID → its handle and its number of MIG slots (both fixed while NVML runs)."""
    _handles: dict[str, object] = field(default_factory=dict)
    """MIG UUID → its handle, as of the last enumeration."""
    _sm_counts: dict[str, int | None] = field(default_factory=dict)
    """MIG UUID → SM count (None: not known). An instance keeps its UUID for life, and its SMs with it."""
    _weights: Weights = field(default_factory=dict)
    _measured_at_s: float = -math.inf

    def weights(self) -> Weights:
        now_s = self.clock()
        if now_s - self._measured_at_s >= self.interval_s - CLOCK_SLACK_S:
            self._measured_at_s = now_s
            handles: dict[str, object] = {}
            self._weights = {gpu.uuid: self._parent(gpu, handles) for gpu in self.parents() if gpu.mig_enabled}
            self._handles = handles
        return self._weights

    def handle(self, mig_uuid: str) -> object | None:
        """The MIG device's handle from the last enumeration (for its process list), or None."""
        return self._handles.get(mig_uuid)

    def _parent(self, gpu: GpuInfo, handles: dict[str, object]) -> dict[str, float]:
        busy: dict[str, int | None] = {}
        parent_handle, slots = self._call("mig_parent", partial(self._parent_handle, gpu)) or (None, 0)
        for slot in range(slots):
            instance = self._call("mig_device", partial(self._instance, parent_handle, slot))
            if instance is None:  # an empty slot, or an instance destroyed since the last enumeration
                continue
            uuid, handle = instance
            handles[uuid] = handle
            processes = self._call("mig_processes", partial(self.nvml.nvmlDeviceGetComputeRunningProcesses, handle))
            if processes:
                busy[uuid] = self._sm_count(uuid, handle)
        if any(count is None for count in busy.values()):
            return dict.fromkeys(busy, 1.0)
        return {uuid: float(count or 0) for uuid, count in busy.items()}

    def _parent_handle(self, gpu: GpuInfo) -> tuple[object, int]:
        if gpu.uuid not in self._parent_handles:
            handle = self.nvml.nvmlDeviceGetHandleByIndex(gpu.index)
            self._parent_handles[gpu.uuid] = handle, self.nvml.nvmlDeviceGetMaxMigDeviceCount(handle)
        return self._parent_handles[gpu.uuid]

    def _instance(self, parent: object, slot: int) -> tuple[str, object]:
        handle = self.nvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, slot)
        return self.nvml.nvmlDeviceGetUUID(handle), handle

    def _sm_count(self, uuid: str, handle: object) -> int | None:
        """Cached once known (None is asked again: a failure may pass, and one call a second is cheap)."""
        if self._sm_counts.get(uuid) is None:
            attributes = self._call("mig_attributes", partial(self.nvml.nvmlDeviceGetAttributes, handle))
            self._sm_counts[uuid] = None if attributes is None else int(attributes.multiprocessorCount)
        return self._sm_counts[uuid]

    def _call(self, kind: str, call: Callable[[], T]) -> T | None:
        """The call's value, or None on an NVML error: NOT_FOUND (empty slot, vanished instance) and NOT_SUPPORTED
        are answers, any other error is counted."""
        try:
            return call()
        except self.nvml.NVMLError as error:
            code = getattr(error, "value", None)
            if code not in (self.nvml.NVML_ERROR_NOT_FOUND, self.nvml.NVML_ERROR_NOT_SUPPORTED):
                self.errors[kind] += 1
            return None


@dataclass
class MigDeltas:
    """The reader's per-instance totals (`GpuEnergy.mig_j`, cumulative) as per-interval energy."""

    _totals: dict[tuple[str, str], float] = field(default_factory=dict)

    def delta(self, parent: str, totals_j: Mapping[str, float]) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, total_j in totals_j.items():
            previous_j = self._totals.get((parent, name), 0.0)
            out[name] = max(total_j - previous_j, 0.0)
            # A total that fell (a returning counter withdrew a too-high estimate) books nothing until it is made up.
            self._totals[(parent, name)] = max(total_j, previous_j)
        return out


def mig_intervals(
    energy_j: Mapping[str, float], dt_s: float, parent_idle_power_w: float
) -> tuple[list[GpuInterval], float]:
    """One interval of a MIG parent: `energy_j` by MIG UUID plus `energy.IDLE` (the parts of the interval in which
    no instance was busy) → an interval per busy instance, and the joules that are the node's.

    The parent's idle power is node idle as a whole GPU's is, and is taken from the busy instances in proportion to
    their energy: each instance's interval has `parent_idle_power_w × its share` as its idle power (the "slice of
    the parent's" of `GpuInterval`), so `attribution` books that much to node idle and the rest to its holder, and
    the busy instances' active energy keeps the ratio of their weights."""
    node_j = max(energy_j.get(IDLE, 0.0), 0.0)
    busy = {uuid: j for uuid, j in energy_j.items() if uuid != IDLE and math.isfinite(j) and j > 0}
    total_j = math.fsum([node_j, *busy.values()])
    intervals = [
        GpuInterval(uuid, j, dt_s, parent_idle_power_w * j / total_j if total_j > 0 and dt_s > 0 else 0.0)
        for uuid, j in busy.items()
    ]
    return intervals, node_j
