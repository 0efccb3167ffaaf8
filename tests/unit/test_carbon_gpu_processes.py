"""GPU processes and their SM samples from NVML (moeops.carbon.meter.gpu_processes), over a small fake of the two pynvml
calls (same names, argument order, sample fields and error shape as nvidia-ml-py 13.615.71; checked below)."""

# ruff: noqa: N802, N803 -- the fake mirrors pynvml's camelCase names.

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import pynvml
import pytest

from fakes.fake_nvml import NVML_ERROR_NOT_FOUND, NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_UNKNOWN, NVMLError
from fakes.fake_nvml import FakeProcess as Process
from fakes.fake_nvml import FakeUtilizationSample as UtilSample
from moeops.carbon.meter.attribution import sm_weights
from moeops.carbon.meter.gpu_processes import ProcessSampler


@dataclass
class FakeProcessNvml:
    processes: dict[str, list[Process]] = field(default_factory=dict)
    samples: dict[str, list[UtilSample]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    NVMLError: type[Exception] = NVMLError
    NVML_ERROR_NOT_SUPPORTED: int = NVML_ERROR_NOT_SUPPORTED
    NVML_ERROR_NOT_FOUND: int = NVML_ERROR_NOT_FOUND
    seen_timestamps: list[int] = field(default_factory=list)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: object, /) -> list[Process]:
        if "processes" in self.errors:
            raise NVMLError(self.errors["processes"])
        return self.processes.get(str(handle), [])

    def nvmlDeviceGetProcessUtilization(self, handle: object, timeStamp: int, /) -> list[UtilSample]:
        self.seen_timestamps.append(timeStamp)
        if "utilization" in self.errors:
            raise NVMLError(self.errors["utilization"])
        fresh = [s for s in self.samples.get(str(handle), []) if s.timeStamp > timeStamp]
        if not fresh:
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return fresh


def test_the_fake_mirrors_pynvml() -> None:
    for name in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetProcessUtilization"):
        real = list(inspect.signature(getattr(pynvml, name)).parameters)
        fake = list(inspect.signature(getattr(FakeProcessNvml, name)).parameters)[1:]
        assert fake == real, name
    assert pynvml.NVML_ERROR_NOT_FOUND == NVML_ERROR_NOT_FOUND
    assert [f for f, _ in pynvml.c_nvmlProcessUtilizationSample_t._fields_] == list(UtilSample.__dataclass_fields__)


def test_only_new_samples_are_returned_and_summed_per_pid() -> None:
    nvml = FakeProcessNvml(samples={"gpu0": [UtilSample(10, 1_000, 40), UtilSample(11, 1_100, 20)]})
    sampler = ProcessSampler(nvml)
    assert sampler.sm_samples("gpu0", "gpu0") == [(10, 40.0), (11, 20.0)]
    nvml.samples["gpu0"].append(UtilSample(10, 1_300, 60))
    assert sampler.sm_samples("gpu0", "gpu0") == [(10, 60.0)]
    assert nvml.seen_timestamps == [0, 1_100]
    assert sampler.sm_samples("gpu0", "gpu0") == []  # NOT_FOUND: nothing new, not an error
    assert sm_weights([(10, 40.0), (11, 20.0), (10, 60.0)]) == {10: 100.0, 11: 20.0}
    assert not sampler.errors


def test_pynvml_zero_sample_quirk_is_no_error() -> None:
    nvml = FakeProcessNvml(errors={"utilization": 0})  # pynvml raises NVMLError(NVML_SUCCESS) for 0 samples
    sampler = ProcessSampler(nvml)
    assert sampler.sm_samples("gpu0", "gpu0") == []
    assert not sampler.errors


def test_running_pids_sorted_and_unique() -> None:
    nvml = FakeProcessNvml(processes={"gpu0": [Process(30), Process(7), Process(30)]})
    assert ProcessSampler(nvml).running_pids("gpu0", "gpu0") == (7, 30)


@pytest.mark.parametrize(
    ("code", "unsupported", "errors"), [(NVML_ERROR_NOT_SUPPORTED, 1, 0), (NVML_ERROR_UNKNOWN, 0, 1)]
)
def test_unsupported_is_remembered_and_other_errors_counted(code: int, unsupported: int, errors: int) -> None:
    nvml = FakeProcessNvml(errors={"utilization": code, "processes": code})
    sampler = ProcessSampler(nvml)
    for _ in range(2):
        assert sampler.sm_samples("gpu0", "gpu0") == []
        assert sampler.running_pids("gpu0", "gpu0") == ()
    assert len(nvml.seen_timestamps) == (1 if unsupported else 2)
    assert len(sampler.unsupported) == 2 * unsupported
    assert sum(sampler.errors.values()) == 4 * errors
