"""The NVML edge of carbon accounting: enumerate the GPUs, read their energy counter and power, feed `energy`.

`NvmlReader` is the only module that calls NVML. It takes the nvml module as a dependency (default: `pynvml`
from nvidia-ml-py, imported when the reader opens, so that importing this module needs neither the package nor a
GPU); tests pass the fake in `tests/fakes/fake_nvml.py`.

Errors: a machine where NVML cannot start (no driver, no package) raises `NvmlUnavailable` from `open()` with
NVML's own message. After that a poll never raises an NVML error. A failed reading is retried with backoff and a
kind is given up only after repeated failures (`read_health`: NOT_SUPPORTED is permanent only for a kind that never
answered); every error is counted in `errors` by kind and logged once per kind (a GPU that fell off the bus would
otherwise log ten times a second), every give-up and recovery is logged and counted in `give_ups`, and each GPU's
`MeterState` (metered / degraded / lost) is in its `GpuEnergy`.

MIG: NVML reads energy and power only on the parent GPU, so a MIG parent's energy is split over its instances by
activity weights the caller passes to `poll()`, keyed by MIG device UUID; with none (or all 0), it is booked as the
parent's idle energy (`energy.IDLE`). The node agent passes `mig.MigActivity`'s: each instance's SM count while it
runs a compute process, else 0. The instances listed in `GpuInfo.mig_devices` are those at `open()`; the split
follows whatever UUIDs the weights name, so an instance created or destroyed later is still accounted for.
"""

# ruff: noqa: N802 -- NvmlApi mirrors pynvml's camelCase names, which are not ours to choose.

from __future__ import annotations

import importlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from types import TracebackType
from typing import Protocol, TypeVar, cast

from moeops.carbon.meter.energy import EnergyReport, GpuEnergyMeter, MeterLimits, MigAccount, Sample
from moeops.carbon.meter.poll_interval import AdaptiveInterval, IntervalPolicy
from moeops.carbon.meter.read_health import MeterState, Outcome, ReadHealth, RetryPolicy, meter_state

logger = logging.getLogger(__name__)

T = TypeVar("T")


class NvmlErrorApi(Protocol):
    """pynvml's error class and the error codes every NVML caller here tells apart."""

    @property
    def NVMLError(self) -> type[Exception]: ...
    @property
    def NVML_ERROR_NOT_SUPPORTED(self) -> int: ...
    @property
    def NVML_ERROR_NOT_FOUND(self) -> int: ...


class NvmlApi(NvmlErrorApi, Protocol):
    """The part of pynvml this reader uses (names as in pynvml; handles are opaque)."""

    @property
    def NVML_DEVICE_MIG_ENABLE(self) -> int: ...

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int, /) -> object: ...
    def nvmlDeviceGetUUID(self, handle: object, /) -> str: ...
    def nvmlDeviceGetName(self, handle: object, /) -> str: ...
    def nvmlDeviceGetMigMode(self, handle: object, /) -> list[int]: ...
    def nvmlDeviceGetMaxMigDeviceCount(self, handle: object, /) -> int: ...
    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: object, index: int, /) -> object: ...
    def nvmlDeviceGetTotalEnergyConsumption(self, handle: object, /) -> int: ...
    def nvmlDeviceGetPowerUsage(self, handle: object, /) -> int: ...


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used on this machine: nvidia-ml-py is missing, or nvmlInit / device enumeration failed."""


class _Missing(Enum):
    UNSUPPORTED = "unsupported"
    ABSENT = "absent"
    FAILED = "failed"


# Reading kinds: the keys of `NvmlReader.errors` and of the unsupported set.
COUNTER = "total_energy_consumption"
POWER = "power_usage"


@dataclass(frozen=True)
class MigDeviceInfo:
    index: int
    uuid: str


@dataclass(frozen=True)
class GpuInfo:
    index: int
    uuid: str
    name: str
    mig_enabled: bool | None
    """None where the GPU has no MIG support (before Ampere)."""
    mig_devices: tuple[MigDeviceInfo, ...] = ()


@dataclass(frozen=True)
class GpuEnergy:
    gpu: GpuInfo
    energy: EnergyReport
    mig_j: Mapping[str, float] = field(default_factory=dict)
    """A MIG parent's energy by instance UUID, plus `energy.IDLE`; empty for a GPU not in MIG mode."""
    state: MeterState = MeterState.METERED


@dataclass
class _Device:
    info: GpuInfo
    handle: object
    meter: GpuEnergyMeter
    mig: MigAccount | None
    health: dict[str, ReadHealth]

    @property
    def state(self) -> MeterState:
        return meter_state(self.health[COUNTER], self.health[POWER])


def _error_code(error: Exception) -> int | None:
    value = getattr(error, "value", None)
    return value if isinstance(value, int) else None


class NvmlReader:
    """Use as a context manager (`with NvmlReader() as reader:`), then `poll()` every `remaining_s()` seconds,
    or `run()` until stopped; `report()` gives each GPU's energy so far."""

    def __init__(
        self,
        nvml: NvmlApi | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        limits: MeterLimits | None = None,
        interval: IntervalPolicy | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._nvml = nvml
        self._clock = clock
        self._limits = limits or MeterLimits()
        self._interval = AdaptiveInterval(clock, interval or IntervalPolicy())
        self._retry = retry or RetryPolicy()
        self._devices: list[_Device] = []
        self._open = False
        self.errors: Counter[str] = Counter()
        """Failed NVML calls by reading kind (or enumeration step); NOT_SUPPORTED only from a kind that answered."""
        self.give_ups: Counter[str] = Counter()
        """Reading kinds given up after repeated failures, by kind (each give-up once)."""

    def __enter__(self) -> NvmlReader:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def gpus(self) -> tuple[GpuInfo, ...]:
        return tuple(device.info for device in self._devices)

    def open(self) -> tuple[GpuInfo, ...]:
        """Initialise NVML and enumerate the GPUs; raises NvmlUnavailable when NVML cannot be used."""
        nvml = self._load()
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as error:
            raise NvmlUnavailable(f"nvmlInit failed: {error} (NVML error {_error_code(error)})") from error
        self._open = True
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as error:
            self.close()
            raise NvmlUnavailable(f"nvmlDeviceGetCount failed: {error} (NVML error {_error_code(error)})") from error
        self._devices = [device for index in range(count) if (device := self._enumerate(nvml, index)) is not None]
        return self.gpus

    def close(self) -> None:
        if self._open and self._nvml is not None:
            self._open = False
            self._call("shutdown", self._nvml.nvmlShutdown)

    def _load(self) -> NvmlApi:
        if self._nvml is None:
            try:
                # pynvml has no type information: the Protocol above is what this module relies on.
                self._nvml = cast(NvmlApi, importlib.import_module("pynvml"))
            except ImportError as error:
                raise NvmlUnavailable(f"pynvml is not installed (pip install nvidia-ml-py): {error}") from error
        return self._nvml

    def _call(self, kind: str, read: Callable[[], T], *, where: str = "", absent: int | None = None) -> T | _Missing:
        """One NVML call: its value, or why there is none. Only NVML errors are caught: anything else is a bug.
        `where` names the device for the log; the error code `absent` means "nothing there" (an empty slot):
        neither counted nor logged."""
        nvml = self._load()
        try:
            return read()
        except nvml.NVMLError as error:
            code = _error_code(error)
            if code == nvml.NVML_ERROR_NOT_SUPPORTED:
                return _Missing.UNSUPPORTED
            if code is not None and code == absent:
                return _Missing.ABSENT
            self._count_error(kind, where, str(error), code)
            return _Missing.FAILED

    def _count_error(self, kind: str, where: str, message: str, code: int | None) -> None:
        self.errors[kind] += 1
        if self.errors[kind] == 1:
            logger.warning("NVML %s failed%s: %s (NVML error %s); further %s errors are only counted", kind,
                           f" on {where}" if where else "", message, code, kind)  # fmt: skip

    def _enumerate(self, nvml: NvmlApi, index: int) -> _Device | None:
        """The device at `index`, or None when it cannot be identified (no handle or no UUID: counted)."""
        handle = self._call("device_handle", partial(nvml.nvmlDeviceGetHandleByIndex, index), where=f"GPU {index}")
        if isinstance(handle, _Missing):
            return None
        uuid = self._call("device_uuid", partial(nvml.nvmlDeviceGetUUID, handle), where=f"GPU {index}")
        if isinstance(uuid, _Missing):
            return None
        name = self._call("device_name", partial(nvml.nvmlDeviceGetName, handle), where=uuid)
        mode = self._call("mig_mode", partial(nvml.nvmlDeviceGetMigMode, handle), where=uuid)
        mig_enabled = None if isinstance(mode, _Missing) else mode[0] == nvml.NVML_DEVICE_MIG_ENABLE
        info = GpuInfo(
            index=index,
            uuid=uuid,
            name="unknown" if isinstance(name, _Missing) else name,
            mig_enabled=mig_enabled,
            mig_devices=self._mig_devices(nvml, handle) if mig_enabled else (),
        )
        meter = GpuEnergyMeter(self._limits)
        health = {kind: ReadHealth(self._retry) for kind in (COUNTER, POWER)}
        return _Device(info, handle, meter, MigAccount() if mig_enabled else None, health)

    def _mig_devices(self, nvml: NvmlApi, parent: object) -> tuple[MigDeviceInfo, ...]:
        slots = self._call("mig_device_count", partial(nvml.nvmlDeviceGetMaxMigDeviceCount, parent))
        if isinstance(slots, _Missing):
            return ()
        devices = []
        for slot in range(slots):
            # An empty slot answers NOT_FOUND: the normal case, not an error.
            get_handle = partial(nvml.nvmlDeviceGetMigDeviceHandleByIndex, parent, slot)
            handle = self._call("mig_device_handle", get_handle, absent=nvml.NVML_ERROR_NOT_FOUND)
            if isinstance(handle, _Missing):
                continue
            uuid = self._call("mig_device_uuid", partial(nvml.nvmlDeviceGetUUID, handle))
            if not isinstance(uuid, _Missing):
                devices.append(MigDeviceInfo(slot, uuid))
        return tuple(devices)

    def _read(self, device: _Device, kind: str, read: Callable[[object], int]) -> int | None:
        """One reading, or None: not due (backing off after failures, or unsupported) or failed."""
        health, now_s = device.health[kind], self._clock()
        if not health.due(now_s):
            return None
        where = f"GPU {device.info.index} ({device.info.uuid})"
        value = self._call(kind, partial(read, device.handle), where=where)
        if not isinstance(value, _Missing):
            if health.ok():
                logger.warning("NVML %s on %s answers again", kind, where)
            return value
        not_supported = value is _Missing.UNSUPPORTED
        if not_supported and health.answered:  # it answered before: a transient NOT_SUPPORTED is an error
            self._count_error(kind, where, "Not Supported (after answering before)", None)
        outcome = health.failed(now_s, not_supported=not_supported)
        if outcome is Outcome.GAVE_UP:
            self.give_ups[kind] += 1
            logger.warning("NVML %s on %s gave up after %d failures in a row; the GPU is %s, asked again every %g s",
                           kind, where, health.failures, device.state.value, self._retry.max_s)  # fmt: skip
        return None

    def poll(self, mig_weights: Mapping[str, Mapping[str, float]] | None = None) -> float:
        """Read every GPU once and fold the readings in; the seconds to wait before the next poll.

        `mig_weights`: per MIG parent UUID, the activity weight of each of its instances (by MIG device UUID)
        over the interval that ends now."""
        nvml = self._load()
        for device in self._devices:
            counter_mj = self._read(device, COUNTER, nvml.nvmlDeviceGetTotalEnergyConsumption)
            power_mw = self._read(device, POWER, nvml.nvmlDeviceGetPowerUsage)
            sample = Sample(
                t_s=self._clock(),
                counter_mj=counter_mj,
                power_mw=power_mw,
                counter_unsupported=device.health[COUNTER].unsupported,
                power_unsupported=device.health[POWER].unsupported,
                counter_given_up=device.health[COUNTER].given_up,
            )
            gaps_before, gap_s_before, estimated_before = (
                device.meter.gaps,
                device.meter.gap_s,
                device.meter.estimated_j,
            )
            delta_j = device.meter.add(sample)
            if device.meter.gaps > gaps_before:
                self._log_gap(device, device.meter.gap_s - gap_s_before, device.meter.estimated_j - estimated_before)
            if device.mig is not None and delta_j is not None:
                device.mig.add(delta_j, (mig_weights or {}).get(device.info.uuid, {}))
        power_w = {d.info.uuid: w for d in self._devices if (w := d.meter.last_power_w) is not None}
        return self._interval.observe(power_w)

    def _log_gap(self, device: _Device, gap_s: float, estimated_j: float) -> None:
        """Every span the energy of a GPU was not measured over (a counter reset, an outage, a given-up counter)."""
        logger.warning("GPU %d (%s): %.3g s not measured (counter reset or NVML outage), %.4g J estimated from power "
                       "(%d gaps so far)", device.info.index, device.info.uuid, gap_s, estimated_j,
                       device.meter.gaps)  # fmt: skip

    def remaining_s(self) -> float:
        """Seconds until the next poll is due."""
        return self._interval.remaining_s()

    def run(
        self,
        should_stop: Callable[[], bool],
        *,
        mig_weights: Callable[[], Mapping[str, Mapping[str, float]]] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Poll at the adaptive interval until `should_stop()`; `sleep` is injectable (tests advance a clock)."""
        while not should_stop():
            self.poll(mig_weights() if mig_weights is not None else None)
            sleep(self.remaining_s())

    def report(self) -> tuple[GpuEnergy, ...]:
        return tuple(
            GpuEnergy(d.info, d.meter.report(), dict(d.mig.instances_j) if d.mig is not None else {}, d.state)
            for d in self._devices
        )
