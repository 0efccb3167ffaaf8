"""Pure energy accounting (moeops.carbon.meter.energy, moeops.carbon.meter.poll_interval) on synthetic traces whose
energy is known analytically. No NVML: the traces (and the counter model, integer millijoules with resets) come from the
fake's `Trace`/`FakeGpu`, used here as plain functions of time."""

from __future__ import annotations

import math

import pytest

from fakes.fake_nvml import FakeClock, FakeGpu, Trace
from moeops.carbon.meter.energy import (
    IDLE,
    EnergyState,
    GpuEnergyMeter,
    MeterLimits,
    MigAccount,
    Sample,
    split_by_weights,
)
from moeops.carbon.meter.poll_interval import AdaptiveInterval, IntervalPolicy

TOLERANCE = 0.005  # the brief: within 0.5% of the analytic integral


def times(end_s: float, dt_s: float, start_s: float = 0.0) -> list[float]:
    return [start_s + i * dt_s for i in range(round((end_s - start_s) / dt_s) + 1)]


def feed(
    gpu: FakeGpu, ts: list[float], *, counter: bool = True, power: bool = True
) -> tuple[GpuEnergyMeter, list[float]]:
    """A meter fed with the GPU's readings at `ts`; the per-sample deltas it returned."""
    meter = GpuEnergyMeter()
    deltas = []
    for t in ts:
        sample = Sample(
            t_s=t,
            counter_mj=gpu.counter_mj(t) if counter else None,
            power_mw=round(1000 * gpu.trace.power_w(t)) if power else None,
            counter_unsupported=not counter,
        )
        delta = meter.add(sample)
        assert delta is not None
        deltas.append(delta)
    return meter, deltas


def true_j(trace: Trace, start_s: float, end_s: float) -> float:
    return trace.energy_j(end_s) - trace.energy_j(start_s)


TRACES = {
    "steady": Trace.steady(312.5),
    "ramp": Trace.ramp(80.0, 690.0, 40.0),
    "sine": Trace.sine(400.0, 250.0, 7.3),
}


@pytest.mark.parametrize("name", TRACES)
@pytest.mark.parametrize("source", ["counter", "power"])
def test_energy_is_within_half_a_percent_of_the_analytic_integral(name: str, source: str) -> None:
    trace = TRACES[name]
    ts = times(60.0, 0.1)
    meter, _ = feed(FakeGpu("GPU-a", trace), ts, counter=source == "counter")
    report = meter.report()
    assert report.state is (EnergyState.COUNTER if source == "counter" else EnergyState.POWER)
    assert report.energy_j == pytest.approx(true_j(trace, 0.0, 60.0), rel=TOLERANCE)
    assert report.estimated_j == 0.0 and report.gap_s == 0.0


def test_trapezoids_are_exact_for_a_linear_ramp() -> None:
    trace = Trace.ramp(100.0, 700.0, 30.0)
    meter, _ = feed(FakeGpu("GPU-a", trace), times(30.0, 0.5), counter=False)
    assert meter.energy_j == pytest.approx(true_j(trace, 0.0, 30.0), rel=1e-6)


def test_a_counter_reset_counts_the_energy_since_the_reset_never_a_negative_or_huge_delta() -> None:
    trace = Trace.steady(300.0)
    gpu = FakeGpu("GPU-a", trace, counter_start_mj=9_000_000_000, resets_at_s=(30.05,))
    ts = times(60.0, 0.1)
    meter, deltas = feed(gpu, ts, power=False)
    assert meter.report().counter_resets == 1
    assert min(deltas) >= 0.0
    assert max(deltas) <= 300.0 * 0.1 * 1.01  # one interval's worth, not the 9 MJ the counter held before
    # The 0.05 s between the last reading and the reset is estimated from the power held (15 J of 18 kJ), and the
    # interval that held the reset is reported as a gap.
    report = meter.report()
    assert report.estimated_j == pytest.approx(300.0 * 0.05, rel=0.01)
    assert report.gap_s == pytest.approx(0.1) and report.gaps == 1
    assert meter.energy_j == pytest.approx(true_j(trace, 0.0, 60.0), rel=1e-4)


def test_an_implausible_counter_jump_is_replaced_by_the_power_integral() -> None:
    trace = Trace.steady(250.0)
    gpu = FakeGpu("GPU-a", trace)
    meter = GpuEnergyMeter(MeterLimits(max_power_w=1500.0))
    glitch_mj = 10**12
    for t in times(20.0, 0.1):
        jump = glitch_mj if t >= 10.0 else 0
        meter.add(Sample(t, counter_mj=gpu.counter_mj(t) + jump, power_mw=250_000))
    report = meter.report()
    assert report.rejected_deltas == 1
    assert report.estimated_j == pytest.approx(250.0 * 0.1)
    assert report.energy_j == pytest.approx(250.0 * 20.0, rel=1e-4)


def test_an_implausible_counter_jump_without_power_is_estimated_from_the_power_held_and_its_time_reported() -> None:
    meter = GpuEnergyMeter()
    for t, counter_mj in [(0.0, 0), (1.0, 300_000), (2.0, 10**12), (3.0, 10**12 + 300_000)]:
        meter.add(Sample(t, counter_mj=counter_mj))
    report = meter.report()
    # The jump's second reading agrees with the first: the counter moved for good; 2 s -> 3 s is measured from it,
    # 1 s -> 2 s (the glitch's interval) is the counter's last average power held, an estimate.
    assert report.energy_j == pytest.approx(900.0) and report.estimated_j == pytest.approx(300.0)
    assert report.rejected_deltas == 1 and report.gap_s == pytest.approx(1.0)


def test_a_failed_counter_read_is_caught_up_by_the_next_and_power_is_not_counted_twice() -> None:
    trace = Trace.sine(350.0, 200.0, 5.0)
    gpu = FakeGpu("GPU-a", trace)
    meter = GpuEnergyMeter()
    for i, t in enumerate(times(30.0, 0.1)):
        counter = None if 100 <= i < 150 else gpu.counter_mj(t)  # 5 s of failed counter reads
        meter.add(Sample(t, counter_mj=counter, power_mw=round(1000 * trace.power_w(t))))
    assert meter.state is EnergyState.COUNTER
    assert meter.energy_j == pytest.approx(true_j(trace, 0.0, 30.0), rel=1e-5)


def test_power_counts_until_the_counter_first_answers_then_the_counter_takes_over() -> None:
    trace = Trace.ramp(100.0, 600.0, 20.0)
    gpu = FakeGpu("GPU-a", trace)
    meter = GpuEnergyMeter()
    for t in times(20.0, 0.1):
        counter = gpu.counter_mj(t) if t >= 8.0 else None
        meter.add(Sample(t, counter_mj=counter, power_mw=round(1000 * trace.power_w(t))))
    assert meter.state is EnergyState.COUNTER
    assert meter.energy_j == pytest.approx(true_j(trace, 0.0, 20.0), rel=1e-4)


def test_a_long_gap_between_power_samples_is_integrated_but_booked_as_an_estimate() -> None:
    meter = GpuEnergyMeter()
    ts = [*times(10.0, 0.1), *times(30.0, 0.1, start_s=20.0)]  # the poller stalled from 10 s to 20 s
    for t in ts:
        meter.add(Sample(t, power_mw=200_000 if t < 15 else 400_000, counter_unsupported=True))
    report = meter.report()
    gap_j = 0.5 * (200.0 + 400.0) * 10.0
    assert report.gap_s == pytest.approx(10.0)
    assert report.estimated_j == pytest.approx(gap_j)
    assert report.energy_j == pytest.approx(200.0 * 10.0 + gap_j + 400.0 * 10.0)


def test_a_power_sample_that_goes_back_in_time_is_ignored() -> None:
    meter = GpuEnergyMeter()
    for t in [0.0, 1.0, 0.5, 2.0]:
        meter.add(Sample(t, power_mw=100_000))
    assert meter.energy_j == pytest.approx(200.0)


def test_a_gpu_supporting_neither_reading_is_unsupported_not_zero() -> None:
    meter = GpuEnergyMeter()
    for t in times(5.0, 0.1):
        assert meter.add(Sample(t, counter_unsupported=True, power_unsupported=True)) is None
    report = meter.report()
    assert report.state is EnergyState.UNSUPPORTED
    assert report.energy_j is None


def test_a_gpu_whose_readings_only_failed_has_no_data_yet() -> None:
    meter = GpuEnergyMeter()
    assert meter.add(Sample(0.0, counter_unsupported=True)) is None
    assert meter.report().state is EnergyState.NO_DATA and meter.report().energy_j is None


def test_mig_split_is_proportional_to_the_weights_and_sums_to_the_parent() -> None:
    shares = split_by_weights(1000.0, {"MIG-a": 3.0, "MIG-b": 1.0, "MIG-c": 0.0, "MIG-d": -2.0, "MIG-e": math.nan})
    assert shares == pytest.approx({"MIG-a": 750.0, "MIG-b": 250.0})
    assert split_by_weights(1000.0, {"MIG-a": 0.0, "MIG-b": 0.0}) == {IDLE: 1000.0}
    assert split_by_weights(1000.0, {}) == {IDLE: 1000.0}


def test_mig_account_follows_changing_weights_and_loses_nothing() -> None:
    trace = Trace.sine(300.0, 100.0, 3.0)
    meter, account = GpuEnergyMeter(), MigAccount()
    gpu = FakeGpu("GPU-a", trace)
    ts = times(12.0, 0.1)
    for i, t in enumerate(ts):
        delta = meter.add(Sample(t, counter_mj=gpu.counter_mj(t)))
        assert delta is not None
        # The weights describe the interval that ends at this sample; all idle from the 81st on.
        weights = {"MIG-a": float(i % 3), "MIG-b": 1.0} if i < 80 else {"MIG-a": 0.0, "MIG-b": 0.0}
        account.add(delta, weights)
    assert account.total_j == pytest.approx(meter.energy_j, rel=1e-12)
    assert account.instances_j[IDLE] == pytest.approx(true_j(trace, ts[79], 12.0), rel=1e-3)
    assert account.instances_j["MIG-a"] > 0 and account.instances_j["MIG-b"] > 0


def test_poll_interval_backs_off_while_steady_and_snaps_back_on_a_change() -> None:
    clock = FakeClock()
    interval = AdaptiveInterval(clock, IntervalPolicy(base_s=0.1, max_s=1.0, backoff=2.0))
    observed = []
    for watts in [300.0, 301.0, 299.5, 300.2, 300.0, 300.4, 300.1, 420.0, 421.0]:
        observed.append(interval.observe({"GPU-a": watts, "GPU-b": 80.0}))
        clock.advance(observed[-1])
    assert observed == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 0.1, 0.2])


def test_poll_interval_treats_a_gpu_appearing_or_vanishing_as_a_change() -> None:
    interval = AdaptiveInterval(FakeClock(), IntervalPolicy(backoff=2.0))
    interval.observe({"GPU-a": 300.0})
    assert interval.observe({"GPU-a": 300.0}) == pytest.approx(0.2)
    assert interval.observe({"GPU-a": 300.0, "GPU-b": 90.0}) == pytest.approx(0.1)
    assert interval.observe({}) == pytest.approx(0.1)


def test_poll_interval_counts_from_the_observation_so_a_slow_poll_does_not_stretch_it() -> None:
    clock = FakeClock(100.0)
    interval = AdaptiveInterval(clock)
    assert interval.remaining_s() == 0.0
    interval.observe({"GPU-a": 300.0})
    clock.advance(0.03)
    assert interval.remaining_s() == pytest.approx(0.07)
    clock.advance(1.0)
    assert interval.remaining_s() == 0.0


@pytest.mark.parametrize(
    "policy", [{"base_s": 0.0}, {"base_s": 2.0, "max_s": 1.0}, {"backoff": 0.5}, {"steady_rel": -0.1}]
)
def test_poll_interval_policy_rejects_nonsense(policy: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        IntervalPolicy(**policy)
