"""Per-GPU energy from NVML samples: pure accounting, no NVML here (the edge is `nvml_reader`).

Two sources, in order of preference:

- the cumulative energy counter (`nvmlDeviceGetTotalEnergyConsumption`, millijoules since the driver loaded,
  Volta and newer): exact whatever the sampling rate, so energy is the sum of deltas between readings. A counter
  that goes backwards was reset (driver reload, GPU reset): the new value is the energy since the reset and is
  counted as such, never as a negative delta and never as a wrapped-around 2⁶⁴ jump. A delta no GPU could draw in
  the elapsed time (above `MeterLimits.max_power_w`) is rejected; the power integral stands in for that interval.
- trapezoidal integration of power readings (`nvmlDeviceGetPowerUsage`, milliwatts) over monotonic timestamps,
  where the counter is unsupported. Its accuracy depends on the sampling rate, hence `poll_interval`.

A GPU that supports neither is `EnergyState.UNSUPPORTED`, with `energy_j = None`: an unknown is never 0 J.

Units are in the names: `_j` joules, `_w` watts, `_s` seconds, `_mj`/`_mw` NVML's milli-units.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum


class EnergyState(Enum):
    COUNTER = "counter"
    """Energy from the cumulative counter (exact up to its own resolution)."""
    POWER = "power"
    """Energy integrated from power readings (the counter is unsupported)."""
    UNSUPPORTED = "unsupported"
    """NVML supports neither the counter nor power readings on this device: its energy is unknown."""
    NO_DATA = "no_data"
    """Supported (or not known to be unsupported), but no reading has succeeded yet."""


@dataclass(frozen=True)
class MeterLimits:
    max_gap_s: float = 5.0
    """Power samples further apart than this are a gap (see `PowerIntegrator`). Five seconds is 50 missed polls at
    the default interval: the poller stalled (host overloaded, process stopped), it is not ordinary jitter."""
    max_power_w: float = 2000.0
    """No single GPU draws more (B200 ≈ 1000 W, GB300 ≈ 1400 W): a counter delta implying more is a glitch."""

    def __post_init__(self) -> None:
        if self.max_gap_s <= 0 or self.max_power_w <= 0:
            raise ValueError(f"limits must be positive: {self}")


@dataclass(frozen=True)
class Sample:
    """One poll of one GPU. A reading is None when it was not obtained; the `*_unsupported` flags say why not
    (NVML_ERROR_NOT_SUPPORTED), as opposed to a transient error."""

    t_s: float
    """Monotonic time of the reading."""
    counter_mj: int | None = None
    power_mw: int | None = None
    counter_unsupported: bool = False
    power_unsupported: bool = False


@dataclass(frozen=True)
class EnergyReport:
    state: EnergyState
    energy_j: float | None
    """Total since the first reading; None unless the state is COUNTER or POWER."""
    estimated_j: float = 0.0
    """The part of `energy_j` that is an estimate rather than a measurement: trapezoids across gaps, and the
    power integral standing in for rejected counter deltas."""
    gap_s: float = 0.0
    """Time covered by estimates (power gaps), or not covered at all (a rejected counter delta without power)."""
    counter_resets: int = 0
    rejected_deltas: int = 0
    """Counter deltas above `max_power_w` × elapsed time, replaced by the power integral or dropped."""
    last_power_w: float | None = None


@dataclass(frozen=True)
class PowerStep:
    energy_j: float
    dt_s: float
    gap: bool


@dataclass
class PowerIntegrator:
    """Trapezoidal integral of power over monotonic time.

    Gaps: an interval longer than `max_gap_s` is still integrated with the trapezoid of its two end readings, but
    flagged (`PowerStep.gap`) so that the meter books it as an estimate. Why not drop it: the GPU kept drawing
    power while the poller stalled, and stalls come with load, so dropping them would under-report systematically
    exactly when the GPUs are busiest. Why not integrate it silently: a 30 s trapezoid can miss whole spikes, and
    the ledger should be able to say how much of a footprint is measured and how much is guessed.
    A reading at or before the previous timestamp is ignored (`out_of_order`): time never runs backwards here.
    """

    max_gap_s: float
    total_j: float = 0.0
    out_of_order: int = 0
    last_t_s: float | None = None
    last_power_w: float | None = None

    def add(self, t_s: float, power_w: float) -> PowerStep | None:
        """Fold in one reading; the step it closes, or None for the first (or an out-of-order) reading."""
        if self.last_t_s is not None and t_s <= self.last_t_s:
            self.out_of_order += 1
            return None
        previous_t_s, previous_w = self.last_t_s, self.last_power_w
        self.last_t_s, self.last_power_w = t_s, power_w
        if previous_t_s is None or previous_w is None:
            return None
        dt_s = t_s - previous_t_s
        energy_j = 0.5 * (previous_w + power_w) * dt_s
        self.total_j += energy_j
        return PowerStep(energy_j, dt_s, gap=dt_s > self.max_gap_s)


@dataclass
class CounterAccumulator:
    """Deltas of the cumulative millijoule counter, with reset detection and a plausibility bound."""

    max_power_w: float
    resets: int = 0
    last_mj: int | None = None
    last_t_s: float | None = None

    def add(self, t_s: float, counter_mj: int) -> float | None:
        """The energy in joules since the previous reading (0.0 for the first), or None when the delta is
        implausible: more than `max_power_w` over the elapsed time, or a reading whose time did not advance."""
        previous_mj, previous_t_s = self.last_mj, self.last_t_s
        if previous_t_s is not None and t_s <= previous_t_s:
            return None
        self.last_mj, self.last_t_s = counter_mj, t_s
        if previous_mj is None or previous_t_s is None:
            return 0.0
        if counter_mj >= previous_mj:
            delta_mj = counter_mj - previous_mj
        else:
            # Backwards: the counter restarted from 0 (driver reload, GPU reset), so its value is the energy since
            # the reset. What was drawn between our last reading and the reset is lost: at most one poll interval.
            self.resets += 1
            delta_mj = counter_mj
        delta_j = delta_mj / 1000.0
        if delta_j > self.max_power_w * (t_s - previous_t_s):
            return None
        return delta_j


@dataclass
class GpuEnergyMeter:
    """The energy of one GPU from its samples: the counter when it has one, the power integral otherwise.

    The power integral runs alongside the counter whenever power readings come in, for two reasons: up to the first
    counter reading (a GPU whose counter failed at first) it is the energy, and a rejected counter delta falls back
    to it over the same interval. Once the counter has a baseline it is the source: a failed counter read is caught
    up by the next one (the counter is cumulative), so power is not counted for that interval as well.
    """

    limits: MeterLimits = field(default_factory=MeterLimits)
    energy_j: float = 0.0
    estimated_j: float = 0.0
    gap_s: float = 0.0
    rejected_deltas: int = 0
    counter_unsupported: bool = False
    power_unsupported: bool = False
    _counter: CounterAccumulator = field(init=False)
    _power: PowerIntegrator = field(init=False)
    _power_j_at_counter: float | None = field(default=None, init=False)
    """The power integral's total at the last counter reading, when power was read at the same instant."""
    _counter_power_w: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._counter = CounterAccumulator(self.limits.max_power_w)
        self._power = PowerIntegrator(self.limits.max_gap_s)

    @property
    def state(self) -> EnergyState:
        if self._counter.last_mj is not None:
            return EnergyState.COUNTER
        if self._power.last_power_w is not None:
            return EnergyState.POWER
        if self.counter_unsupported and self.power_unsupported:
            return EnergyState.UNSUPPORTED
        return EnergyState.NO_DATA

    @property
    def last_power_w(self) -> float | None:
        """The latest power reading, or the counter's average power over the last interval without one."""
        return self._power.last_power_w if self._power.last_power_w is not None else self._counter_power_w

    def add(self, sample: Sample) -> float | None:
        """Fold in one sample; the energy in joules it adds (None while the state is UNSUPPORTED or NO_DATA)."""
        self.counter_unsupported |= sample.counter_unsupported
        self.power_unsupported |= sample.power_unsupported
        step = self._power.add(sample.t_s, sample.power_mw / 1000.0) if sample.power_mw is not None else None
        power_read_now = sample.power_mw is not None and self._power.last_t_s == sample.t_s
        if sample.counter_mj is not None:
            delta_j = self._add_counter(sample, step, power_read_now)
        elif self._counter.last_mj is not None:
            delta_j = 0.0  # counter mode, this read failed: the next counter reading catches up
        else:
            delta_j = self._book_power(step)
        self.energy_j += delta_j
        return None if self.state in (EnergyState.UNSUPPORTED, EnergyState.NO_DATA) else delta_j

    def _add_counter(self, sample: Sample, step: PowerStep | None, power_read_now: bool) -> float:
        assert sample.counter_mj is not None
        had_baseline = self._counter.last_mj is not None
        previous_t_s, power_j_before = self._counter.last_t_s, self._power_j_at_counter
        counter_j = self._counter.add(sample.t_s, sample.counter_mj)
        self._power_j_at_counter = self._power.total_j if power_read_now else None
        if not had_baseline:
            # The counter's first reading is only its baseline: up to here, the power integral (if any) counts.
            return self._book_power(step)
        if previous_t_s is not None and sample.t_s > previous_t_s:
            self._counter_power_w = None if counter_j is None else counter_j / (sample.t_s - previous_t_s)
        if counter_j is not None:
            return counter_j
        self.rejected_deltas += 1
        elapsed_s = sample.t_s - previous_t_s if previous_t_s is not None else 0.0
        self.gap_s += max(elapsed_s, 0.0)
        if power_read_now and power_j_before is not None:
            fallback_j = self._power.total_j - power_j_before
            self.estimated_j += fallback_j
            return fallback_j
        return 0.0

    def _book_power(self, step: PowerStep | None) -> float:
        if step is None:
            return 0.0
        if step.gap:
            self.estimated_j += step.energy_j
            self.gap_s += step.dt_s
        return step.energy_j

    def report(self) -> EnergyReport:
        state = self.state
        known = state in (EnergyState.COUNTER, EnergyState.POWER)
        return EnergyReport(
            state=state,
            energy_j=self.energy_j if known else None,
            estimated_j=self.estimated_j,
            gap_s=self.gap_s,
            counter_resets=self._counter.resets,
            rejected_deltas=self.rejected_deltas,
            last_power_w=self.last_power_w,
        )


IDLE = "idle"
"""The key under which a MIG parent's energy is booked when no instance was active."""


def split_by_weights(energy_j: float, weights: Mapping[str, float]) -> dict[str, float]:
    """A MIG parent's energy over its instances in proportion to their activity weights (utilization, SM share:
    any non-negative measure, normalised here), so the shares always sum to `energy_j`. Negative or non-finite
    weights count as 0; when no instance has a positive weight, everything goes to `IDLE`: the parent drew the
    power all the same, and losing it would make the instances' sum disagree with the GPU's."""
    clean = {name: w for name, w in weights.items() if math.isfinite(w) and w > 0}
    total = sum(clean.values())
    if total <= 0:
        return {IDLE: energy_j}
    return {name: energy_j * w / total for name, w in clean.items()}


@dataclass
class MigAccount:
    """Per-instance energy totals of one MIG parent, split interval by interval as the weights change."""

    instances_j: dict[str, float] = field(default_factory=dict)

    def add(self, energy_j: float, weights: Mapping[str, float]) -> None:
        for name, share_j in split_by_weights(energy_j, weights).items():
            self.instances_j[name] = self.instances_j.get(name, 0.0) + share_j

    @property
    def total_j(self) -> float:
        return sum(self.instances_j.values())
