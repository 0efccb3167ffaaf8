"""Per-GPU energy from NVML samples: pure accounting, no NVML here (the edge is `nvml_reader`).

Two sources, in order of preference:

- the cumulative energy counter (`nvmlDeviceGetTotalEnergyConsumption`, millijoules since the driver loaded,
  Volta and newer): exact whatever the sampling rate, so energy is the sum of deltas between readings. A reading
  below the previous one is a reset (driver reload, GPU reset: the new value is the energy since it, and the span
  before it is estimated from power) or, when its magnitude cannot be one, jitter (no energy, baseline kept); a
  delta no GPU could draw in the elapsed time (above `MeterLimits.max_power_w`) is rejected before it moves the
  baseline (`counter.CounterAccumulator`). Never a negative delta, never a wrapped-around 2⁶⁴ jump.
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

from moeops.carbon.meter.counter import CounterAccumulator as CounterAccumulator


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
    counter_given_up: bool = False
    """The counter failed so often that it is given up (`read_health`): power stands in until it answers."""


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
    gaps: int = 0
    """Spans estimated or unmeasured: power gaps, counter resets, a given-up counter's stand-in."""
    counter_resets: int = 0
    counter_jitter: int = 0
    """Counter readings a little below the previous one: no energy, not a reset."""
    rejected_deltas: int = 0
    """Counter deltas above `max_power_w` × elapsed time, replaced by the power integral or dropped."""
    last_power_w: float | None = None
    covered_s: float = 0.0
    """The time `energy_j` covers, from the first reading: it stops while a counter read fails and jumps when the
    counter catches up, so energy per covered time is a power whatever the outages (idle power × it is idle)."""


@dataclass(frozen=True)
class PowerStep:
    energy_j: float
    dt_s: float
    gap: bool
    end_s: float = 0.0
    start_w: float = 0.0
    end_w: float = 0.0

    def after(self, from_s: float) -> tuple[float, float]:
        """The energy and time of this trapezoid from `from_s` on (power linear in between)."""
        start_s = self.end_s - self.dt_s
        if from_s <= start_s:
            return self.energy_j, self.dt_s
        if from_s >= self.end_s:
            return 0.0, 0.0
        from_w = self.start_w + (self.end_w - self.start_w) * (from_s - start_s) / self.dt_s
        return 0.5 * (from_w + self.end_w) * (self.end_s - from_s), self.end_s - from_s


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
        return PowerStep(energy_j, dt_s, dt_s > self.max_gap_s, t_s, previous_w, power_w)


@dataclass
class GpuEnergyMeter:
    """The energy of one GPU from its samples: the counter when it has one, the power integral otherwise.

    The power integral runs alongside the counter whenever power readings come in, for three reasons: up to the
    first counter reading (a GPU whose counter failed at first) it is the energy; across a counter reset (or jump)
    it estimates the span the counter did not see; and while the counter is given up (`Sample.counter_given_up`,
    see `read_health`) it stands in, booked as an estimate. A counter that answers again and still continues its
    old baseline replaces the stand-in by its exact delta (the estimate is withdrawn); one that was reset meanwhile
    becomes a fresh baseline and the stand-in stays an estimate. A counter read that merely failed (not given up)
    is caught up by the next one, so power is not counted for that interval as well.

    Gaps: a span without a measurement is estimated where anything is known about it (the power integral, else the
    last known power held across it) and booked in `estimated_j`; its length is `gap_s`, the number of such spans
    `gaps`. A span about which nothing is known adds to `gap_s` with no energy.
    """

    limits: MeterLimits = field(default_factory=MeterLimits)
    energy_j: float = 0.0
    estimated_j: float = 0.0
    gap_s: float = 0.0
    gaps: int = 0
    rejected_deltas: int = 0
    counter_unsupported: bool = False
    power_unsupported: bool = False
    _counter: CounterAccumulator = field(init=False)
    _power: PowerIntegrator = field(init=False)
    _power_j_at_counter: float | None = field(default=None, init=False)
    """The power integral's total at the counter's baseline, when power was read at the same instant."""
    _counter_power_w: float | None = field(default=None, init=False)
    _standing_in: bool = field(default=False, init=False)
    _stand_in_j: float = field(default=0.0, init=False)
    """Energy booked by power while the counter is given up (in `energy_j`, `estimated_j`)."""
    _stand_in_gap_s: float = field(default=0.0, init=False)
    _stand_in_from_s: float = field(default=0.0, init=False)
    _first_s: float | None = field(default=None, init=False)

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
        """Fold in one sample; the energy in joules it adds (None while the state is UNSUPPORTED or NO_DATA). It
        is negative only where a returning counter withdraws a stand-in estimate that was too high."""
        self.counter_unsupported |= sample.counter_unsupported
        self.power_unsupported |= sample.power_unsupported
        if self._first_s is None and (sample.counter_mj is not None or sample.power_mw is not None):
            self._first_s = sample.t_s
        known_w = self.last_power_w
        power_before = (self._power.total_j, self._power.last_t_s)
        step = self._power.add(sample.t_s, sample.power_mw / 1000.0) if sample.power_mw is not None else None
        power_read_now = sample.power_mw is not None and self._power.last_t_s == sample.t_s
        if sample.counter_mj is not None and self._standing_in:
            delta_j = self._stand_in(power_before, step) + self._counter_returns(sample, power_read_now)
        elif sample.counter_mj is not None:
            delta_j = self._add_counter(sample, step, known_w, power_read_now)
        elif self._counter.last_mj is not None and sample.counter_given_up:
            delta_j = self._stand_in(power_before, step)
        elif self._counter.last_mj is not None:
            delta_j = 0.0  # counter mode, this read failed: the next counter reading catches up
        else:
            delta_j = self._book_power(step)
        self.energy_j += delta_j
        return None if self.state in (EnergyState.UNSUPPORTED, EnergyState.NO_DATA) else delta_j

    def _rebase(self, sample: Sample, power_read_now: bool) -> None:
        assert sample.counter_mj is not None
        counter = self._counter
        counter.last_mj, counter.last_t_s, counter.suspect = sample.counter_mj, sample.t_s, None
        self._power_j_at_counter = self._power.total_j if power_read_now else None

    def _add_counter(
        self, sample: Sample, step: PowerStep | None, known_w: float | None, power_read_now: bool
    ) -> float:
        assert sample.counter_mj is not None
        counter = self._counter
        baseline_t_s = counter.last_t_s
        counter_j = counter.add(sample.t_s, sample.counter_mj)
        power_j_at_baseline = self._power_j_at_counter
        if baseline_t_s is None:
            # The counter's first reading is only its baseline: up to here, the power integral (if any) counts.
            self._power_j_at_counter = self._power.total_j if power_read_now else None
            return self._book_power(step)
        if counter_j is None:
            self.rejected_deltas += 1  # the baseline stays: the next plausible reading catches up
            return 0.0
        if counter.last_t_s != sample.t_s:
            return counter_j  # jitter: the baseline stays
        self._power_j_at_counter = self._power.total_j if power_read_now else None
        elapsed_s = sample.t_s - baseline_t_s
        if not counter.last_reset:
            self._counter_power_w = counter_j / elapsed_s
            return counter_j
        # A reset or jump: `counter_j` is measured since it; the rest of the span since the baseline is estimated.
        if power_read_now and power_j_at_baseline is not None:
            span_j: float | None = self._power.total_j - power_j_at_baseline
        elif known_w is not None:
            now_w = sample.power_mw / 1000.0 if sample.power_mw is not None else known_w
            span_j = 0.5 * (known_w + now_w) * elapsed_s
        else:
            span_j = None
        self.gap_s += counter.last_unmeasured_s
        self.gaps += 1
        extra_j = 0.0 if span_j is None else max(span_j - counter_j, 0.0)
        self.estimated_j += extra_j
        return counter_j + extra_j

    def _stand_in(self, power_before: tuple[float, float | None], step: PowerStep | None) -> float:
        """The counter is given up: power readings are the energy (an estimate) from the counter's last reading on:
        the span deferred since then (power integral), and each power step (the part after that reading)."""
        booked_j, gap_s = 0.0, 0.0
        if not self._standing_in:
            self._standing_in = True
            self.gaps += 1
            power_j_before, power_t_before = power_before
            self._stand_in_from_s = self._counter.last_t_s or 0.0
            if self._power_j_at_counter is not None and power_t_before is not None:
                booked_j, gap_s = power_j_before - self._power_j_at_counter, power_t_before - self._stand_in_from_s
                self._stand_in_from_s = power_t_before
        if step is not None:
            step_j, step_s = step.after(self._stand_in_from_s)
            booked_j, gap_s = booked_j + step_j, gap_s + step_s
            self._stand_in_from_s = max(self._stand_in_from_s, step.end_s)
        self._stand_in_j += booked_j
        self._stand_in_gap_s += gap_s
        self.estimated_j += booked_j
        self.gap_s += gap_s
        return booked_j

    def _counter_returns(self, sample: Sample, power_read_now: bool) -> float:
        """The first counter reading after a give-up (its power step already booked by `_stand_in`). Where it still
        continues the old baseline (no reset, a plausible delta) the span was measured after all: the stand-in is
        withdrawn for the counter's delta. After a reset, the energy it counted since is measured and the stand-in
        estimates only the rest. Else (a glitch) the stand-in stays an estimate. The reading is the new baseline."""
        assert sample.counter_mj is not None
        counter = self._counter
        stand_in_j, stand_in_gap_s = self._stand_in_j, self._stand_in_gap_s
        self._standing_in, self._stand_in_j, self._stand_in_gap_s = False, 0.0, 0.0
        delta_j = counter.add(sample.t_s, sample.counter_mj)
        moved = counter.last_t_s == sample.t_s
        self._rebase(sample, power_read_now)
        if delta_j is None or not moved:
            return 0.0
        if counter.last_reset:  # reset meanwhile: what it measured since is no estimate; the rest of the span is
            span_j = max(stand_in_j, delta_j)
            self.estimated_j += span_j - delta_j - stand_in_j
            return span_j - stand_in_j
        self.estimated_j -= stand_in_j
        self.gap_s -= stand_in_gap_s
        self.gaps -= 1
        return delta_j - stand_in_j

    def _book_power(self, step: PowerStep | None) -> float:
        if step is None:
            return 0.0
        if step.gap:
            self.estimated_j += step.energy_j
            self.gap_s += step.dt_s
            self.gaps += 1
        return step.energy_j

    def report(self) -> EnergyReport:
        state = self.state
        known = state in (EnergyState.COUNTER, EnergyState.POWER)
        return EnergyReport(
            state=state,
            energy_j=self.energy_j if known else None,
            estimated_j=self.estimated_j,
            gap_s=self.gap_s,
            gaps=self.gaps,
            counter_resets=self._counter.resets,
            counter_jitter=self._counter.jitter,
            rejected_deltas=self.rejected_deltas,
            last_power_w=self.last_power_w,
            covered_s=self.covered_s,
        )

    @property
    def covered_s(self) -> float:
        """See `EnergyReport.covered_s`: up to the counter's baseline, the stand-in's end, or the last power reading."""
        if self._first_s is None:
            return 0.0
        if self._standing_in:
            until_s: float | None = self._stand_in_from_s
        elif self._counter.last_t_s is not None:
            until_s = self._counter.last_t_s
        else:
            until_s = self._power.last_t_s
        return max((until_s or self._first_s) - self._first_s, 0.0)


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
