"""NvmlReader against a FAKE NVML (tests/fakes/fake_nvml.py): enumeration, energy on traces with a known integral,
unsupported readings, MIG, errors mid-run and the adaptive interval. Time is the fake clock's, advanced by the test.
The last tests check the fake against the real pynvml module (names, arities, constants): the carbon extra installs
it, and under CI=true its absence fails them (tests/missing.py)."""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Callable, Mapping

import pytest

from fakes import fake_nvml
from fakes.fake_nvml import FakeClock, FakeGpu, FakeNvml, Fault, Trace
from missing import PYNVML, import_or_missing
from moeops.carbon.meter.energy import IDLE, EnergyState
from moeops.carbon.meter.nvml_reader import (
    COUNTER,
    POWER,
    GpuEnergy,
    MigDeviceInfo,
    NvmlApi,
    NvmlReader,
    NvmlUnavailable,
)
from moeops.carbon.meter.poll_interval import IntervalPolicy
from moeops.carbon.meter.read_health import MeterState

TOLERANCE = 0.005


def make(*gpus: FakeGpu, faults: list[Fault] | None = None) -> tuple[FakeNvml, NvmlReader]:
    nvml = FakeNvml(list(gpus), faults=faults or [])
    return nvml, NvmlReader(nvml, clock=nvml.clock)


def run_for(
    reader: NvmlReader,
    clock: FakeClock,
    end_s: float,
    mig_weights: Callable[[], Mapping[str, Mapping[str, float]]] | None = None,
) -> list[float]:
    """Poll at the reader's own adaptive interval until `end_s`; the times of the polls (a poll takes no fake time,
    so the clock when the reader goes to sleep is the time of the poll just made)."""
    polled: list[float] = []

    def sleep(dt_s: float) -> None:
        polled.append(clock())
        clock.advance(dt_s)

    reader.run(lambda: clock() > end_s, mig_weights=mig_weights, sleep=sleep)
    return polled


def by_uuid(reader: NvmlReader) -> dict[str, GpuEnergy]:
    return {e.gpu.uuid: e for e in reader.report()}


def test_open_enumerates_index_uuid_name_and_mig_devices() -> None:
    nvml, reader = make(
        FakeGpu("GPU-0", name="Tesla V100-SXM2-32GB"),
        FakeGpu("GPU-1", mig_mode=fake_nvml.NVML_DEVICE_MIG_DISABLE, mig_slots=(None,) * 7),
        FakeGpu("GPU-2", mig_mode=fake_nvml.NVML_DEVICE_MIG_ENABLE, mig_slots=("MIG-a", None, "MIG-c")),
    )
    with reader:
        gpus = reader.gpus
        assert [(g.index, g.uuid, g.mig_enabled) for g in gpus] == [(0, "GPU-0", None), (1, "GPU-1", False),
                                                                     (2, "GPU-2", True)]  # fmt: skip
        assert gpus[0].name == "Tesla V100-SXM2-32GB"
        assert gpus[2].mig_devices == (MigDeviceInfo(0, "MIG-a"), MigDeviceInfo(2, "MIG-c"))
        assert not reader.errors  # the empty MIG slot is not an error
    assert not nvml.initialized  # closed: nvmlShutdown was called


def test_nvml_init_failure_is_reported_as_unavailable_with_nvmls_message() -> None:
    nvml = FakeNvml([FakeGpu("GPU-0")], init_error=fake_nvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    with pytest.raises(NvmlUnavailable, match="NVML Shared Library Not Found"):
        NvmlReader(nvml).open()


def test_missing_pynvml_is_reported_as_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    with pytest.raises(NvmlUnavailable, match="nvidia-ml-py"):
        NvmlReader().open()


@pytest.mark.parametrize("trace", [Trace.steady(310.0), Trace.ramp(90.0, 650.0, 45.0), Trace.sine(400.0, 250.0, 9.0)])
@pytest.mark.parametrize("counter", [True, False], ids=["counter", "power-only"])
def test_energy_matches_the_analytic_integral(trace: Trace, counter: bool) -> None:
    nvml, reader = make(FakeGpu("GPU-0", trace, counter=counter))
    with reader:
        polled = run_for(reader, nvml.clock, 60.0)
    report = by_uuid(reader)["GPU-0"].energy
    assert report.state is (EnergyState.COUNTER if counter else EnergyState.POWER)
    expected_j = trace.energy_j(polled[-1]) - trace.energy_j(polled[0])
    assert report.energy_j == pytest.approx(expected_j, rel=TOLERANCE)


def test_a_counter_reset_mid_run_is_counted_once_and_never_as_a_jump() -> None:
    trace = Trace.steady(420.0)
    nvml, reader = make(FakeGpu("GPU-0", trace, counter_start_mj=5 * 10**12, resets_at_s=(20.02,)))
    steady = IntervalPolicy(max_s=0.1)  # a fixed 0.1 s cadence: at most 0.1 s × 420 W is lost at the reset
    reader = NvmlReader(nvml, clock=nvml.clock, interval=steady)
    with reader:
        run_for(reader, nvml.clock, 40.0)
    report = by_uuid(reader)["GPU-0"].energy
    assert report.counter_resets == 1 and report.rejected_deltas == 0
    assert report.energy_j == pytest.approx(420.0 * 40.0, rel=TOLERANCE)


def test_unsupported_readings_are_states_and_not_called_again() -> None:
    nvml, reader = make(
        FakeGpu("GPU-power-only", Trace.steady(200.0), counter=False),
        FakeGpu("GPU-nothing", counter=False, power=False),
    )
    with reader:
        for _ in range(50):
            reader.poll()
            nvml.clock.advance(0.1)
    reports = by_uuid(reader)
    assert reports["GPU-power-only"].energy.state is EnergyState.POWER
    assert reports["GPU-power-only"].energy.energy_j == pytest.approx(200.0 * 4.9)
    assert reports["GPU-nothing"].energy.state is EnergyState.UNSUPPORTED
    assert reports["GPU-nothing"].energy.energy_j is None
    # NOT_SUPPORTED from a kind that never answered is permanent after three tries (RetryPolicy.unsupported_after):
    # each GPU's counter asked 3 times, the dead GPU's power 3 times, the other's 50 times.
    assert nvml.calls["nvmlDeviceGetTotalEnergyConsumption"] == 2 * 3
    assert nvml.calls["nvmlDeviceGetPowerUsage"] == 50 + 3
    assert not reader.errors


def test_mig_parent_energy_is_split_by_the_weights_and_sums_to_the_parent() -> None:
    trace = Trace.sine(350.0, 150.0, 4.0)
    gpu = FakeGpu("GPU-0", trace, mig_mode=fake_nvml.NVML_DEVICE_MIG_ENABLE, mig_slots=("MIG-a", "MIG-b"))
    nvml, reader = make(gpu)
    weights = {"GPU-0": {"MIG-a": 0.6, "MIG-b": 0.2}}
    with reader:
        run_for(reader, nvml.clock, 20.0, mig_weights=lambda: weights)
        weights = {}  # nothing active: the rest is the parent's idle energy
        run_for(reader, nvml.clock, 30.0, mig_weights=lambda: weights)
    parent = by_uuid(reader)["GPU-0"]
    assert parent.energy.energy_j is not None
    assert sum(parent.mig_j.values()) == pytest.approx(parent.energy.energy_j, rel=1e-12)
    assert parent.mig_j["MIG-a"] == pytest.approx(3 * parent.mig_j["MIG-b"])
    assert parent.mig_j[IDLE] == pytest.approx(parent.energy.energy_j / 3, rel=0.05)  # ≈ 10 s of 30 s


def test_errors_mid_run_never_raise_are_retried_with_backoff_counted_and_logged_once_per_change(
    caplog: pytest.LogCaptureFixture,
) -> None:
    trace = Trace.ramp(150.0, 550.0, 30.0)
    faults = [
        Fault("nvmlDeviceGetTotalEnergyConsumption", 10.0, 15.0, fake_nvml.NVML_ERROR_GPU_IS_LOST, gpu=0),
        Fault("nvmlDeviceGetPowerUsage", 5.0, 25.0, fake_nvml.NVML_ERROR_UNKNOWN),
    ]
    nvml, reader = make(FakeGpu("GPU-0", trace), FakeGpu("GPU-1", trace, counter=False), faults=faults)
    reader = NvmlReader(nvml, clock=nvml.clock, interval=IntervalPolicy(max_s=0.5))
    with caplog.at_level(logging.WARNING, logger="moeops.carbon.meter.nvml_reader"), reader:
        polled = run_for(reader, nvml.clock, 30.0)
    failed_counter = [t for t in polled if 10.0 <= t < 15.0]  # GPU-1 has no counter: not an error
    failed_power = [t for t in polled if 5.0 <= t < 25.0]  # on both GPUs
    # Backoff: far fewer calls than polls in the outage, each failed one counted; five in a row give the kind up.
    assert 5 <= reader.errors[COUNTER] < len(failed_counter) and 10 <= reader.errors[POWER] < len(failed_power)
    assert reader.give_ups == {COUNTER: 1, POWER: 2}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("failed" in w for w in warnings) == 2  # the first error of each kind, then only counted
    assert any("GPU is lost" in w and "on GPU 0 (GPU-0)" in w for w in warnings)
    assert sum("gave up after 5 failures" in w for w in warnings) == 3
    assert any("total_energy_consumption on GPU 0 (GPU-0) answers again" in w for w in warnings)
    reports = by_uuid(reader)
    assert {e.state for e in reports.values()} == {MeterState.METERED}  # both back by the end
    # The counter came back continuing its baseline: its delta replaces the power stand-in, still exact.
    gpu0 = reports["GPU-0"].energy
    assert gpu0.energy_j == pytest.approx(trace.energy_j(polled[-1]), rel=1e-4) and gpu0.estimated_j == 0
    # Power-only through a 20 s outage: the one long trapezoid is booked as an estimate, and a linear ramp's
    # trapezoid is exact anyway.
    gpu1 = reports["GPU-1"].energy
    assert gpu1.gap_s == pytest.approx(20.0, abs=5.0) and gpu1.estimated_j > 0 and gpu1.gaps == 1
    assert gpu1.energy_j == pytest.approx(trace.energy_j(polled[-1]), rel=TOLERANCE)


def test_the_poll_interval_stays_short_while_power_changes_and_backs_off_once_steady() -> None:
    # 200 W/s: 20 W per 0.1 s poll, beyond the noise band (2 % of ≤ 700 W), until it levels off at 2 s.
    nvml, reader = make(FakeGpu("GPU-0", Trace.ramp(300.0, 700.0, 2.0), counter=False))
    with reader:
        chosen = []
        while nvml.clock() < 10.0:
            chosen.append((nvml.clock(), reader.poll()))
            nvml.clock.advance(reader.remaining_s())
    assert max(interval for t, interval in chosen if 0.05 < t < 1.95) == pytest.approx(0.1)
    assert chosen[-1][1] == pytest.approx(1.0)
    assert len(chosen) < 40  # 100 polls at a fixed 0.1 s


def test_the_fake_mirrors_pynvml_names_arities_and_constants() -> None:
    pynvml = import_or_missing("pynvml", PYNVML)
    used = [name for name in dir(NvmlApi) if name.startswith(("nvml", "NVML"))]
    assert len(used) == 15
    for name in used:
        real, fake = getattr(pynvml, name), getattr(FakeNvml, name)
        if name == "NVMLError":
            assert pynvml.NVMLError(3).value == fake(3).value == 3
        elif callable(real):
            real_arity = len(inspect.signature(real).parameters)
            assert len(inspect.signature(fake).parameters) - 1 == real_arity, name  # minus self
        else:
            assert real == fake, name
    codes = ["NVML_ERROR_UNINITIALIZED", "NVML_ERROR_INVALID_ARGUMENT", "NVML_ERROR_LIBRARY_NOT_FOUND",
             "NVML_ERROR_GPU_IS_LOST", "NVML_ERROR_UNKNOWN", "NVML_DEVICE_MIG_DISABLE"]  # fmt: skip
    assert all(getattr(pynvml, code) == getattr(fake_nvml, code) for code in codes)
