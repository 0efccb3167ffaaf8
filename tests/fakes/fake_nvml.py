"""A FAKE NVML: a test double of the pynvml calls `moeops.carbon.meter.nvml_reader` makes, driven by power traces.

Same function names, argument order and return types as pynvml (nvidia-ml-py 13.615.71); the same error shape (an
`NVMLError` whose `.value` is the NVML return code) and the same values for the constants used. A conformance test
(`test_carbon_nvml_reader_fake_nvml.py`) checks the names, arities and constants against the real module.

Time is the test's: every reading is taken at `clock()` (a `FakeClock` the test advances), never by sleeping. Each
GPU follows a `Trace` whose energy is the exact analytic integral of its power, so a test knows the true energy.
Behaviour follows real NVML where the reader depends on it: calls before `nvmlInit` fail with UNINITIALIZED; the
counter is in integer millijoules and restarts from 0 at a reset; power is in integer milliwatts; MIG device
handles support neither reading (NOT_SUPPORTED); an empty MIG slot is NOT_FOUND; a GPU without MIG support answers
NOT_SUPPORTED to the MIG calls.

MIG instances follow a `MigTrace` each (by MIG UUID in `FakeGpu.mig_traces`): their SM count
(`nvmlDeviceGetAttributes`), when their process runs (`nvmlDeviceGetComputeRunningProcesses` on the MIG handle),
and when the instance is destroyed (from then on its slot is empty, and calls on its old handle are NOT_FOUND).
Per-process utilization samples are NOT_SUPPORTED on MIG handles, as in NVML.
"""

# ruff: noqa: N802, N803, N815 -- the fake mirrors pynvml's camelCase names, which are not ours to choose.

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999
NVML_DEVICE_MIG_DISABLE = 0
NVML_DEVICE_MIG_ENABLE = 1

_MESSAGES = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLError(Exception):
    """pynvml's shape: constructed from the return code, which is kept as `.value`."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _MESSAGES.get(self.value, f"NVML Error with code {self.value}")


@dataclass
class FakeClock:
    now_s: float = 0.0

    def __call__(self) -> float:
        return self.now_s

    def advance(self, dt_s: float) -> None:
        self.now_s += dt_s


@dataclass(frozen=True)
class Trace:
    """Power over time and its exact integral from t = 0."""

    power_w: Callable[[float], float]
    energy_j: Callable[[float], float]

    @staticmethod
    def steady(watts: float) -> Trace:
        return Trace(lambda t: watts, lambda t: watts * t)

    @staticmethod
    def ramp(start_w: float, end_w: float, duration_s: float) -> Trace:
        """Linear from start_w to end_w over duration_s, flat at end_w afterwards."""
        slope = (end_w - start_w) / duration_s

        def energy(t: float) -> float:
            ramp_t = min(t, duration_s)
            return start_w * ramp_t + 0.5 * slope * ramp_t**2 + end_w * max(t - duration_s, 0.0)

        return Trace(lambda t: start_w + slope * min(t, duration_s), energy)

    @staticmethod
    def sine(mean_w: float, amplitude_w: float, period_s: float) -> Trace:
        omega = 2 * math.pi / period_s
        return Trace(
            lambda t: mean_w + amplitude_w * math.sin(omega * t),
            lambda t: mean_w * t + amplitude_w / omega * (1 - math.cos(omega * t)),
        )


@dataclass(frozen=True)
class Fault:
    """Calls named `call` on GPU `gpu` (None: every GPU) fail with `code` while start_s <= now < end_s."""

    call: str
    start_s: float
    end_s: float
    code: int = NVML_ERROR_UNKNOWN
    gpu: int | None = None


@dataclass(frozen=True)
class MigTrace:
    """One MIG instance over time: its SMs, the spans [start, end) in which its process `pid` runs, when it is
    destroyed (None: never)."""

    sm_count: int = 16
    busy: tuple[tuple[float, float], ...] = ()
    pid: int = 0
    destroyed_at_s: float | None = None

    def running(self, t_s: float) -> bool:
        return any(start <= t_s < end for start, end in self.busy)

    def exists(self, t_s: float) -> bool:
        return self.destroyed_at_s is None or t_s < self.destroyed_at_s


DIP_S = 0.05
"""How long a counter dip (`FakeGpu.counter_dips`) lasts: shorter than a poll, so one read sees it."""


@dataclass
class FakeGpu:
    uuid: str
    trace: Trace = field(default_factory=lambda: Trace.steady(300.0))
    name: str = "NVIDIA H100 80GB HBM3"
    counter: bool = True
    """Whether nvmlDeviceGetTotalEnergyConsumption is supported (Volta and newer)."""
    power: bool = True
    counter_start_mj: int = 123_456_789
    """The counter's value at t = 0: it counts from the driver load, long before the test."""
    resets_at_s: tuple[float, ...] = ()
    """Times at which the driver reloads: the counter restarts from 0."""
    counter_dips: tuple[tuple[float, int], ...] = ()
    """(time, mJ): a counter read within `DIP_S` after `time` is that much below the true value, as some drivers
    read a few joules back and forth (the next read is right again)."""
    mig_mode: int | None = None
    """Current MIG mode; None: the GPU has no MIG (the calls answer NOT_SUPPORTED)."""
    mig_slots: tuple[str | None, ...] = ()
    """MIG device UUIDs by slot; None is an empty slot."""
    mig_traces: dict[str, MigTrace] = field(default_factory=dict)
    """MIG device UUID → its trace (a slot's UUID without one: `MigTrace()`, idle for ever)."""
    sm_count: int = 132
    """The whole GPU's SMs (an H100 SXM's)."""
    sm_percent: dict[int, float] = field(default_factory=dict)
    """The processes with a compute context on this GPU (host PIDs) and the SM % each uses, steady."""

    def counter_mj(self, t_s: float) -> int:
        dip_mj = sum(mj for at_s, mj in self.counter_dips if at_s <= t_s < at_s + DIP_S)
        past_resets = [r for r in self.resets_at_s if r <= t_s]
        if past_resets:
            return math.floor(1000 * (self.trace.energy_j(t_s) - self.trace.energy_j(max(past_resets)))) - dip_mj
        return self.counter_start_mj + math.floor(1000 * self.trace.energy_j(t_s)) - dip_mj


@dataclass(frozen=True)
class FakeProcess:
    """pynvml's c_nvmlProcessInfo_t, as far as the callers read it."""

    pid: int
    usedGpuMemory: int | None = None


@dataclass(frozen=True)
class FakeDeviceAttributes:
    """pynvml's c_nvmlDeviceAttributes, as far as the callers read it."""

    multiprocessorCount: int
    gpuInstanceSliceCount: int = 1
    computeInstanceSliceCount: int = 1
    memorySizeMB: int = 10_240


@dataclass(frozen=True)
class FakeUtilizationSample:
    """pynvml's c_nvmlProcessUtilizationSample_t (timeStamp in µs)."""

    pid: int
    timeStamp: int
    smUtil: int
    memUtil: int = 0
    encUtil: int = 0
    decUtil: int = 0


SAMPLE_PERIOD_US = 166_667
"""The driver samples process utilization about six times a second."""


@dataclass(frozen=True)
class FakeHandle:
    gpu: int
    mig_slot: int | None = None


@dataclass
class FakeNvml:
    """The fake module: pass an instance where the reader takes the nvml module."""

    gpus: list[FakeGpu]
    clock: FakeClock = field(default_factory=FakeClock)
    faults: list[Fault] = field(default_factory=list)
    init_error: int | None = None
    """nvmlInit fails with this code (NVML_ERROR_LIBRARY_NOT_FOUND: a machine without the driver)."""
    initialized: bool = False
    calls: Counter[str] = field(default_factory=Counter)

    NVMLError = NVMLError
    NVML_ERROR_NOT_SUPPORTED = NVML_ERROR_NOT_SUPPORTED
    NVML_ERROR_NOT_FOUND = NVML_ERROR_NOT_FOUND
    NVML_DEVICE_MIG_ENABLE = NVML_DEVICE_MIG_ENABLE

    def _enter(self, call: str, gpu: int | None = None) -> None:
        """Count the call, check initialisation and the faults in force (on GPU `gpu`, when the call has one)."""
        self.calls[call] += 1
        if not self.initialized:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        now = self.clock()
        for fault in self.faults:
            on_gpu = gpu is None or fault.gpu is None or fault.gpu == gpu
            if fault.call == call and on_gpu and fault.start_s <= now < fault.end_s:
                raise NVMLError(fault.code)

    def _gpu(self, call: str, handle: object) -> tuple[FakeGpu, FakeHandle]:
        """The GPU behind a handle (and the handle, typed); a foreign handle is INVALID_ARGUMENT, as in NVML, and
        the handle of a destroyed MIG instance NOT_FOUND."""
        if not isinstance(handle, FakeHandle) or not 0 <= handle.gpu < len(self.gpus):
            self._enter(call)
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        self._enter(call, handle.gpu)
        gpu = self.gpus[handle.gpu]
        if handle.mig_slot is not None and not self._mig(gpu, handle.mig_slot).exists(self.clock()):
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return gpu, handle

    @staticmethod
    def _mig(gpu: FakeGpu, slot: int) -> MigTrace:
        uuid = gpu.mig_slots[slot]
        return MigTrace() if uuid is None else gpu.mig_traces.get(uuid, MigTrace())

    def nvmlInit(self) -> None:
        self.calls["nvmlInit"] += 1
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self.initialized = False

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self._enter("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return FakeHandle(index)

    def nvmlDeviceGetUUID(self, handle: object) -> str:
        gpu, fake = self._gpu("nvmlDeviceGetUUID", handle)
        if fake.mig_slot is None:
            return gpu.uuid
        uuid = gpu.mig_slots[fake.mig_slot]
        assert uuid is not None
        return uuid

    def nvmlDeviceGetName(self, handle: object) -> str:
        return self._gpu("nvmlDeviceGetName", handle)[0].name

    def nvmlDeviceGetMigMode(self, handle: object) -> list[int]:
        gpu, _ = self._gpu("nvmlDeviceGetMigMode", handle)
        if gpu.mig_mode is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return [gpu.mig_mode, gpu.mig_mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: object) -> int:
        gpu, _ = self._gpu("nvmlDeviceGetMaxMigDeviceCount", handle)
        if gpu.mig_mode is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return len(gpu.mig_slots)

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: object, index: int) -> FakeHandle:
        gpu, parent = self._gpu("nvmlDeviceGetMigDeviceHandleByIndex", handle)
        if gpu.mig_mode != NVML_DEVICE_MIG_ENABLE or not 0 <= index < len(gpu.mig_slots):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        if gpu.mig_slots[index] is None or not self._mig(gpu, index).exists(self.clock()):
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return FakeHandle(parent.gpu, index)

    def nvmlDeviceGetAttributes(self, handle: object) -> FakeDeviceAttributes:
        gpu, fake = self._gpu("nvmlDeviceGetAttributes", handle)
        if fake.mig_slot is None:
            return FakeDeviceAttributes(gpu.sm_count, gpuInstanceSliceCount=7, computeInstanceSliceCount=7)
        return FakeDeviceAttributes(self._mig(gpu, fake.mig_slot).sm_count)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: object) -> int:
        gpu, fake = self._gpu("nvmlDeviceGetTotalEnergyConsumption", handle)
        if not gpu.counter or fake.mig_slot is not None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return gpu.counter_mj(self.clock())

    def nvmlDeviceGetPowerUsage(self, handle: object) -> int:
        gpu, fake = self._gpu("nvmlDeviceGetPowerUsage", handle)
        if not gpu.power or fake.mig_slot is not None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return round(1000 * gpu.trace.power_w(self.clock()))

    def nvmlDeviceGetComputeRunningProcesses(self, handle: object) -> list[FakeProcess]:
        gpu, fake = self._gpu("nvmlDeviceGetComputeRunningProcesses", handle)
        if fake.mig_slot is not None:
            trace = self._mig(gpu, fake.mig_slot)
            return [FakeProcess(trace.pid)] if trace.running(self.clock()) else []
        return [FakeProcess(pid) for pid in gpu.sm_percent]

    def nvmlDeviceGetProcessUtilization(self, handle: object, timeStamp: int) -> list[FakeUtilizationSample]:
        """One sample per process per driver period after `timeStamp` (µs of the fake clock), up to now; NOT_FOUND
        when there is none, as NVML answers."""
        gpu, fake = self._gpu("nvmlDeviceGetProcessUtilization", handle)
        if fake.mig_slot is not None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        now_us = round(self.clock() * 1e6)
        first = (timeStamp // SAMPLE_PERIOD_US + 1) * SAMPLE_PERIOD_US
        stamps = range(first, now_us + 1, SAMPLE_PERIOD_US)
        samples = [FakeUtilizationSample(pid, t, round(sm)) for t in stamps for pid, sm in gpu.sm_percent.items()]
        if not samples:
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return samples
