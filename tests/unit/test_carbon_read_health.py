"""The pure parts behind NVML fault handling: a reading kind's retry state (`read_health`) and the counter's reset,
jitter and glitch rules (`counter`). The traces through the agent are in test_carbon_nvml_faults_fake_nvml.py."""

from __future__ import annotations

import pytest

from moeops.carbon.meter.counter import CounterAccumulator
from moeops.carbon.meter.read_health import MeterState, Outcome, ReadHealth, RetryPolicy, meter_state


def test_failures_back_off_doubling_to_the_cap_and_give_up_once_after_five() -> None:
    health = ReadHealth(RetryPolicy(base_s=0.2, max_s=5.0, give_up_after=5))
    health.ok()
    outcomes, waits, now = [], [], 100.0
    for _ in range(7):
        outcomes.append(health.failed(now, not_supported=False))
        waits.append(round(health.retry_at_s - now, 6))
        assert not health.due(now) and health.due(health.retry_at_s)
        now = health.retry_at_s
    assert waits == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert outcomes == [Outcome.RETRYING] * 4 + [Outcome.GAVE_UP] + [Outcome.RETRYING] * 2
    assert health.given_up and health.give_ups == 1
    assert health.ok() is True  # it recovered: the caller logs it
    assert not health.given_up and health.failures == 0 and health.due(now)


def test_not_supported_is_permanent_only_for_a_kind_that_never_answered() -> None:
    never = ReadHealth(RetryPolicy(unsupported_after=3))
    assert [never.failed(float(t), not_supported=True) for t in range(3)][-1] is Outcome.UNSUPPORTED
    assert never.unsupported and not never.due(1e9)
    answered = ReadHealth(RetryPolicy(unsupported_after=3))
    answered.ok()
    for t in range(10):
        assert answered.failed(float(t) * 10, not_supported=True) is not Outcome.UNSUPPORTED
    assert not answered.unsupported and answered.given_up  # transient: given up, still probed


@pytest.mark.parametrize(
    ("counter", "power", "state"),
    [
        ((), (), MeterState.METERED),
        ((1,), (), MeterState.DEGRADED),  # the counter fails: power or a later catch-up stands in
        ((), (1,), MeterState.METERED),  # power failing beside a working counter changes nothing
        ((5,), (), MeterState.DEGRADED),
        ((5,), (5,), MeterState.LOST),
    ],
)
def test_a_gpus_state_follows_its_best_reading_kind(
    counter: tuple[int, ...], power: tuple[int, ...], state: MeterState
) -> None:
    kinds = []
    for failures in (counter, power):
        health = ReadHealth(RetryPolicy(give_up_after=5))
        health.ok()
        for _ in range(failures[0] if failures else 0):
            health.failed(0.0, not_supported=False)
        kinds.append(health)
    assert meter_state(*kinds) is state


def test_a_power_only_gpu_is_metered_by_power_and_lost_when_power_is_given_up() -> None:
    counter = ReadHealth(RetryPolicy(unsupported_after=1))
    counter.failed(0.0, not_supported=True)
    power = ReadHealth(RetryPolicy(give_up_after=2))
    power.ok()
    assert meter_state(counter, power) is MeterState.METERED
    power.failed(0.0, not_supported=False)
    power.failed(1.0, not_supported=False)
    assert meter_state(counter, power) is MeterState.LOST


def test_the_counter_tells_a_reset_from_jitter_by_magnitude_and_time() -> None:
    counter = CounterAccumulator(max_power_w=2000.0)
    assert counter.add(0.0, 5_000_000_000) == 0.0  # baseline: 5 MJ since the driver loaded
    assert counter.add(0.1, 5_000_030_000) == pytest.approx(30.0)
    assert counter.add(0.2, 4_999_980_000) == 0.0  # 50 J back: jitter, the baseline stays at the higher value
    assert counter.add(0.3, 5_000_090_000) == pytest.approx(60.0)  # counted once from the baseline
    assert counter.add(0.4, 12_000) == pytest.approx(12.0)  # 12 J after 0.1 s: fits a restart from 0 → reset
    assert (counter.resets, counter.jitter, counter.last_reset) == (1, 1, True)
    assert counter.add(10.4, 15_012_000) == pytest.approx(15_000.0)  # 1.5 kW over 10 s: within the bound
    assert counter.add(20.4, 45_012_000) is None  # 3 kW over 10 s: beyond max_power_w, rejected


def test_a_glitch_is_rejected_without_moving_the_baseline_and_two_agreeing_glitches_are_a_jump() -> None:
    counter = CounterAccumulator(max_power_w=1000.0)
    counter.add(0.0, 1_000_000)
    assert counter.add(1.0, 10**12) is None  # 1 TJ in a second: rejected, the baseline stays
    assert counter.add(2.0, 1_500_000) == pytest.approx(500.0)  # the next good reading catches up from it
    assert counter.add(3.0, 10**12) is None
    assert counter.add(4.0, 10**12 + 400_000) == pytest.approx(400.0)  # agrees with the glitch: the counter moved
    assert (counter.jumps, counter.last_reset, counter.last_unmeasured_s) == (1, True, 1.0)
