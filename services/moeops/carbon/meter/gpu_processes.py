"""The NVML edge for attribution: which processes run on a GPU, and how much of its SMs each used.

Two calls, on the handles `nvml_reader` already holds (and with the same injectable nvml module):

- `nvmlDeviceGetComputeRunningProcesses`: the PIDs with a CUDA context on the device (host PIDs: the agent needs
  `hostPID: true` to find them in /proc), for the cgroup fallback and for charging a process the kubelet did not
  assign the GPU to.
- `nvmlDeviceGetProcessUtilization(handle, lastSeenTimeStamp)`: per-process samples (SM %, one per driver sampling
  period, about 1/6 s) newer than the timestamp, in µs. `ProcessSampler` keeps each device's latest timestamp, so
  every call returns only the samples of the interval since the previous one, which `attribution.sm_weights` sums.

"No samples since then" is an answer, not an error: NVML says NOT_FOUND, and pynvml raises NVMLError(0) when the
size query succeeds with zero samples; both give an empty list. NOT_SUPPORTED (GPUs before Maxwell, MIG devices)
is remembered per device, and other NVML errors are counted in `errors`: attribution then falls back to an equal
split among the containers that hold the GPU.
"""

# ruff: noqa: N802 -- mirrors pynvml's camelCase names, which are not ours to choose.

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from moeops.carbon.meter.nvml_reader import NvmlErrorApi

NVML_SUCCESS = 0


class _RunningProcess(Protocol):
    @property
    def pid(self) -> int: ...


class _UtilizationSample(Protocol):
    @property
    def pid(self) -> int: ...
    @property
    def timeStamp(self) -> int: ...
    @property
    def smUtil(self) -> int: ...


class ProcessNvmlApi(NvmlErrorApi, Protocol):
    """The part of pynvml used here (names as in pynvml; handles are opaque)."""

    def nvmlDeviceGetComputeRunningProcesses(self, handle: object, /) -> Sequence[_RunningProcess]: ...
    def nvmlDeviceGetProcessUtilization(self, handle: object, last_seen_us: int, /) -> Sequence[_UtilizationSample]: ...


@dataclass
class ProcessSampler:
    """Per-device process lists and SM samples; `device` (a GPU UUID) keys the remembered state."""

    nvml: ProcessNvmlApi
    errors: Counter[str] = field(default_factory=Counter)
    unsupported: set[tuple[str, str]] = field(default_factory=set)
    _last_seen_us: dict[str, int] = field(default_factory=dict)

    def _failed(self, device: str, kind: str, error: Exception) -> bool:
        """True when the error means "nothing there" (no samples); otherwise recorded."""
        code = getattr(error, "value", None)
        if code in (self.nvml.NVML_ERROR_NOT_FOUND, NVML_SUCCESS):
            return True
        if code == self.nvml.NVML_ERROR_NOT_SUPPORTED:
            self.unsupported.add((device, kind))
        else:
            self.errors[kind] += 1
        return False

    def running_pids(self, device: str, handle: object) -> tuple[int, ...]:
        """PIDs with a compute context on the device (empty when unknown)."""
        if (device, "processes") in self.unsupported:
            return ()
        try:
            processes = self.nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except self.nvml.NVMLError as error:
            self._failed(device, "processes", error)
            return ()
        return tuple(sorted({int(process.pid) for process in processes}))

    def sm_samples(self, device: str, handle: object) -> list[tuple[int, float]]:
        """(pid, SM %) for every sample since the previous call for this device (the first call: whatever NVML
        still buffers, a few seconds)."""
        if (device, "utilization") in self.unsupported:
            return []
        last_seen_us = self._last_seen_us.get(device, 0)
        try:
            samples = self.nvml.nvmlDeviceGetProcessUtilization(handle, last_seen_us)
        except self.nvml.NVMLError as error:
            self._failed(device, "utilization", error)
            return []
        fresh = [s for s in samples if int(s.timeStamp) > last_seen_us]
        if fresh:
            self._last_seen_us[device] = max(int(s.timeStamp) for s in fresh)
        return [(int(s.pid), float(s.smUtil)) for s in fresh]
