"""Load factors: EWMA-smoothed per-rank throughput and per-expert token counts, from `WorkerMetrics`.

The aggregator is pure and deterministic: the same records in the same order give the same snapshot. Records may
arrive interleaved across ranks (each rank publishes on its own subject); per rank, only a step newer than the last
one folded in is used, so a redelivered (duplicate) or late (stale) record never counts twice or moves an average
backwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from moeops.bus.messages import WorkerMetrics

DEFAULT_SMOOTHING = 0.2
"""Weight of the newest sample: about the last 1/0.2 = 5 steps dominate, enough to ride out one noisy step."""
DEFAULT_TREND_SMOOTHING = 0.2
"""Weight of the newest level change in a rank's speed trend (Holt's β)."""
DEFAULT_TREND_DAMPING = 0.9
"""Per-step damping of the trend (Gardner & McKenzie's φ): a slowdown levels off (a throttled GPU settles at its
new speed), so a forecast h steps ahead adds φ + φ² + … + φʰ steps of trend, never more than φ/(1 − φ) = 9."""
DEFAULT_ERROR_SMOOTHING = 0.2
TREND_NOISE_GATE = 2.0
"""A trend is followed only where its full damped effect exceeds twice the rank's measurement noise."""
"""Smoothing of the forecast errors that set the adaptive response rate (Trigg & Leach's tracking signal)."""


def ewma(previous: float | None, sample: float, smoothing: float) -> float:
    """previous + smoothing·(sample − previous); the first sample is taken as is (no bias towards 0)."""
    if previous is None:
        return sample
    return previous + smoothing * (sample - previous)


ArrayOrFloat = TypeVar("ArrayOrFloat", float, NDArray[np.float64])


def track(
    level: ArrayOrFloat,
    trend: ArrayOrFloat,
    error: ArrayOrFloat,
    abs_error: ArrayOrFloat,
    sample: ArrayOrFloat,
    *,
    smoothing: float,
    trend_smoothing: float,
    damping: float,
    error_smoothing: float = DEFAULT_ERROR_SMOOTHING,
) -> tuple[ArrayOrFloat, ArrayOrFloat, ArrayOrFloat, ArrayOrFloat]:
    """One step of damped-trend smoothing with an adaptive response rate: the new (level, trend, error,
    abs_error) after `sample` (floats, or numpy arrays of many ranks).

    prediction = level + damping·trend; level' = prediction + rate·(sample − prediction);
    trend' = damping·trend + trend_smoothing·(level' − prediction). The rate is `smoothing` while the forecast
    errors look like noise and rises towards 1 when they keep one sign (a GPU slowing down or recovering):
    rate = max(smoothing, |E| / M) with E and M the smoothed errors and absolute errors so far (Trigg & Leach's
    tracking signal, from before this sample, so one outlier does not move the level by itself). A steady rank
    keeps the heavy smoothing; a drifting one is followed within a few steps, its trend then carries the
    forecast. With trend_smoothing 0 and error_smoothing 0 this is `ewma`."""
    if isinstance(level, float):  # one rank's record: plain floats, ten times cheaper than numpy on scalars
        return _track_one(level, trend, error, abs_error, sample, smoothing, trend_smoothing, damping, error_smoothing)
    predicted = level + damping * trend
    miss = sample - predicted
    signal = np.divide(np.abs(error), abs_error, out=np.zeros_like(np.asarray(miss, dtype=np.float64)),
                       where=np.asarray(abs_error) > 0)  # fmt: skip
    rate = np.maximum(smoothing, signal)
    new_level = predicted + rate * miss
    new_trend = damping * trend + trend_smoothing * (new_level - predicted)
    new_error = error + error_smoothing * (miss - error)
    new_abs_error = abs_error + error_smoothing * (np.abs(miss) - abs_error)
    return new_level, new_trend, new_error, new_abs_error


def _track_one(
    level: float,
    trend: float,
    error: float,
    abs_error: float,
    sample: float,
    smoothing: float,
    trend_smoothing: float,
    damping: float,
    error_smoothing: float,
) -> tuple[float, float, float, float]:
    """`track` for one rank, the same operations in the same order (the same doubles as the array form: tested)."""
    predicted = level + damping * trend
    miss = sample - predicted
    signal = abs(error) / abs_error if abs_error > 0 else 0.0
    rate = max(smoothing, signal)
    new_level = predicted + rate * miss
    new_trend = damping * trend + trend_smoothing * (new_level - predicted)
    new_error = error + error_smoothing * (miss - error)
    new_abs_error = abs_error + error_smoothing * (abs(miss) - abs_error)
    return new_level, new_trend, new_error, new_abs_error


def forecast(
    level: ArrayOrFloat,
    trend: ArrayOrFloat,
    damping: float,
    ahead_steps: float,
    noise: ArrayOrFloat | None = None,
) -> ArrayOrFloat:
    """The damped-trend forecast `ahead_steps` steps on: level + trend·(φ + … + φʰ), never below half the level
    (a trend fitted to a noisy start must not predict a rank that stops).

    With `noise` (the smoothed absolute forecast error, `track`'s abs_error) a trend counts only where the most it
    can add, trend·φ/(1 − φ), exceeds TREND_NOISE_GATE × noise: on ranks whose step times jitter by tens of percent
    (processes sharing cores, a busy host) the fitted trend is noise, and following its minimum makes the shares
    erratic (seen live: a 4-rank job on 2 cores got shares [6, 19, 6, 1] for one slowed rank)."""
    if ahead_steps <= 0:
        return level
    steps = damping * (1.0 - damping**ahead_steps) / (1.0 - damping) if damping < 1.0 else float(ahead_steps)
    if noise is not None and damping < 1.0:
        significant = np.abs(trend) * damping / (1.0 - damping) > TREND_NOISE_GATE * noise
        steps = np.where(significant, steps, 0.0)
    predicted = np.maximum(level + trend * steps, 0.5 * level)
    if isinstance(level, float):
        return float(predicted)
    return predicted


class Ingested(Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    """The (rank, step) already folded in: a redelivery."""
    STALE = "stale"
    """Older than the rank's newest step folded in: arrived late, its information is superseded."""
    NOT_USABLE = "not_usable"
    """No time measured (zero seconds) or no tokens: nothing to learn a rate from."""
    RESTARTED = "restarted"
    """A step not newer than the rank's last, yet measured after it: the job went back to a checkpoint. Its
    measurements start over from this record (those of the old run describe a distribution that is gone)."""


@dataclass(frozen=True)
class RankLoad:
    rank: int
    tokens_per_second: float
    """Smoothed tokens / compute_seconds: the rank's own speed (see `LoadAggregator.ingest`)."""
    compute_seconds: float
    """Smoothed compute time per step (the stage's time when the rank runs a pipeline stage)."""
    step_seconds: float
    """Smoothed wall time per step, waits included."""
    last_step: int
    samples: int
    tokens_per_second_trend: float = 0.0
    """Smoothed change of `tokens_per_second` per step (`track`; 0 with trend smoothing off)."""
    tokens_per_second_noise: float = 0.0
    """Smoothed absolute forecast error of `tokens_per_second` (`track`'s abs_error)."""


@dataclass(frozen=True)
class LoadSnapshot:
    world_size: int
    max_step: int
    """The newest step any rank reported; plans are scheduled after it."""
    ranks: tuple[RankLoad, ...]
    """Ranks that reported at least once, by rank."""
    expert_tokens: tuple[tuple[float, ...], ...]
    """Per MoE layer, per expert, smoothed tokens routed per step (global over the data-parallel ranks)."""
    counts: dict[Ingested, int]
    trend_damping: float = DEFAULT_TREND_DAMPING

    def throughput(self, ahead_steps: float = 0.0, until_steps: float | None = None) -> list[float]:
        """Tokens/s per rank 0..world_size-1, forecast `ahead_steps` steps on along each rank's trend (0: the
        smoothed level), or with `until_steps` the lowest forecast from `ahead_steps` to `until_steps` on (the
        slowest a rank will be while a plan runs; the step time is the slowest rank's). A rank that never
        reported gets the mean of those that did.

        Only slowdowns are forecast: a rank is never taken to be faster than its level. A rank that recovers
        (a noisy neighbour gone) jumps in speed, and the trend fitted to the jump extrapolates it: one cut to
        2 of 32 sequences was forecast at twice its real speed and handed 14 (tests/unit/test_rebalancer_recovery.py).
        Believing a speed-up once measured costs a step or two of a gradual one; over-forecasting makes the
        recovered rank the new straggler."""
        last = ahead_steps if until_steps is None else until_steps
        known = {
            load.rank: min(
                load.tokens_per_second,
                *(
                    forecast(
                        load.tokens_per_second,
                        load.tokens_per_second_trend,
                        self.trend_damping,
                        ahead,
                        load.tokens_per_second_noise,
                    )
                    for ahead in (ahead_steps, last)
                ),
            )
            for load in self.ranks
        }
        fallback = math.fsum(known.values()) / len(known) if known else 1.0
        return [known.get(rank, fallback) for rank in range(self.world_size)]

    @property
    def complete(self) -> bool:
        """Every rank has reported: a plan made before that would guess for the silent ones."""
        return len(self.ranks) == self.world_size


def _classify(
    state: _RankState | None,
    step: int,
    tokens: int,
    compute_seconds: float,
    step_seconds: float,
    measured_at_unix_s: float,
) -> Ingested:
    if state is not None:
        if measured_at_unix_s < state.measured_at:
            return Ingested.STALE  # measured before what was folded in: late, whatever its step (an old run's)
        if step <= state.last_step and measured_at_unix_s > state.measured_at:
            return Ingested.RESTARTED
        if step == state.last_step:
            return Ingested.DUPLICATE
        if step < state.last_step:
            return Ingested.STALE
    seconds = compute_seconds if compute_seconds > 0 else step_seconds
    if seconds <= 0 or tokens == 0:
        return Ingested.NOT_USABLE
    return Ingested.ACCEPTED


@dataclass(slots=True)
class _RankState:
    last_step: int
    tokens_per_second: float
    compute_seconds: float
    step_seconds: float
    measured_at: float = float("-inf")
    samples: int = 1
    trend: float = 0.0
    error: float = 0.0
    abs_error: float = 0.0
    tokens: int = 0
    """Tokens of the rank's newest step: its data share, which a plan changes."""
    since: int = -1
    """The step the rank's level and trend start from (its first, or the first under the current plan)."""


@dataclass
class LoadAggregator:
    smoothing: float = DEFAULT_SMOOTHING
    trend_smoothing: float = DEFAULT_TREND_SMOOTHING
    """Holt's β for each rank's speed (0, with error_smoothing 0: plain EWMA, no trend); see `track`."""
    trend_damping: float = DEFAULT_TREND_DAMPING
    error_smoothing: float = DEFAULT_ERROR_SMOOTHING
    world_size: int = 0
    _ranks: dict[int, _RankState] = field(default_factory=dict)
    _expert_tokens: list[list[float]] = field(default_factory=list)
    _expert_step: int = -1
    _max_step: int = -1
    _restart_step: int = -1
    _counts: dict[Ingested, int] = field(default_factory=lambda: dict.fromkeys(Ingested, 0))

    def __post_init__(self) -> None:
        if not 0.0 < self.smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {self.smoothing}")
        if not all(0.0 <= x <= 1.0 for x in (self.trend_smoothing, self.trend_damping, self.error_smoothing)):
            raise ValueError(f"trend smoothing, damping and error smoothing must be in [0, 1], got "
                             f"{self.trend_smoothing}, {self.trend_damping}, {self.error_smoothing}")  # fmt: skip

    def ingest(self, metrics: WorkerMetrics) -> Ingested:
        """Fold one record in; returns what became of it (counted in the snapshot either way).

        Throughput is tokens / compute_seconds, not / step_seconds: in synchronous data parallelism every rank's
        step time is the slowest rank's (the fast ones wait in the all-reduce), so step time hides the straggler
        the shares must correct. Without a compute time (0), the step time is the best estimate left.
        """
        return self.fold(
            metrics.rank,
            metrics.step,
            metrics.world_size,
            metrics.tokens,
            metrics.compute_seconds,
            metrics.step_seconds,
            metrics.measured_at_unix_s,
            metrics.tokens_per_expert,
        )

    def fold(
        self,
        rank: int,
        step: int,
        world_size: int,
        tokens: int,
        compute_seconds: float,
        step_seconds: float,
        measured_at_unix_s: float,
        tokens_per_expert: list[list[int]],
    ) -> Ingested:
        """`ingest` of a record's fields, validated as WorkerMetrics validates them (the columnar ingest calls this
        without building the message)."""
        # The rebalancer's per-record path (bus_ingest's budget is 20 µs a message, nats-py's share included):
        # one dict lookup per record, the smoothing inlined (`ewma`'s operations, in its order: the same doubles).
        state = self._ranks.get(rank)
        outcome = _classify(state, step, tokens, compute_seconds, step_seconds, measured_at_unix_s)
        self._counts[outcome] += 1
        if outcome is Ingested.RESTARTED:
            self._ranks.clear()
            self._expert_tokens, self._expert_step, self._max_step = [], -1, -1
            state = None
        elif outcome is not Ingested.ACCEPTED:
            return outcome
        if world_size > self.world_size:
            self.world_size = world_size
        if step > self._max_step:
            self._max_step = step
        seconds = compute_seconds if compute_seconds > 0 else step_seconds
        rate = tokens / seconds
        if state is None:
            self._ranks[rank] = _RankState(step, rate, seconds, step_seconds, measured_at_unix_s, tokens=tokens,
                                           since=step)  # fmt: skip
        elif tokens != state.tokens or state.since < self._restart_step <= step:
            # A plan applied (`restart_levels`), or the rank's share changed: tokens/s is no speed where part of the
            # time does not scale with the rank's own tokens (an EP rank's experts serve its whole group, whose
            # total and placement a plan changes), so the rates measured before are not comparable; smoothing
            # across the switch made the next plan predict gains that did not come, and the trend fitted to the
            # jump took one rank's rate below zero (benchmarks/rebalance_product_sim.py). Restart the rank's level
            # and trend from this step; its noise carries over, scaled to the new rate.
            state.since = step
            state.abs_error = state.abs_error * rate / state.tokens_per_second if state.tokens_per_second > 0 else 0.0
            state.tokens_per_second, state.trend, state.error, state.tokens = rate, 0.0, 0.0, tokens
            state.last_step, state.measured_at = step, measured_at_unix_s
            state.compute_seconds = seconds
            state.step_seconds += self.smoothing * (step_seconds - state.step_seconds)
            state.samples += 1
        else:
            smoothing = self.smoothing
            state.last_step, state.measured_at = step, measured_at_unix_s
            state.tokens_per_second, state.trend, state.error, state.abs_error = _track_one(
                state.tokens_per_second,
                state.trend,
                state.error,
                state.abs_error,
                rate,
                smoothing,
                self.trend_smoothing,
                self.trend_damping,
                self.error_smoothing,
            )
            state.compute_seconds += smoothing * (seconds - state.compute_seconds)
            state.step_seconds += smoothing * (step_seconds - state.step_seconds)
            state.samples += 1
        if tokens_per_expert:
            self._fold_expert_counts(step, tokens_per_expert)
        return outcome

    def restart_levels(self, from_step: int) -> None:
        """From `from_step` on the ranks run another split or placement (a plan applies there): each rank's speed
        level and trend restart from its first step at or after it."""
        self._restart_step = max(self._restart_step, from_step)

    def _fold_expert_counts(self, step: int, tokens_per_expert: list[list[int]]) -> None:
        # The trainer all-reduces the counts, so every rank reports the same global counts for a step: fold each
        # step in once (from whichever rank reports it first), and never an older step after a newer one.
        if step <= self._expert_step:
            return
        shape_changed = [len(layer) for layer in tokens_per_expert] != [len(layer) for layer in self._expert_tokens]
        if shape_changed:  # first record, or the model changed: averages of other experts mean nothing
            self._expert_tokens = [[float(count) for count in layer] for layer in tokens_per_expert]
        else:
            s = self.smoothing  # `ewma` inlined (its operations in its order): 256+ calls a step otherwise
            self._expert_tokens = [
                [old + s * (float(new) - old) for old, new in zip(old_layer, new_layer, strict=True)]
                for old_layer, new_layer in zip(self._expert_tokens, tokens_per_expert, strict=True)
            ]
        self._expert_step = step

    def snapshot(self) -> LoadSnapshot:
        ranks = tuple(
            RankLoad(
                rank,
                s.tokens_per_second,
                s.compute_seconds,
                s.step_seconds,
                s.last_step,
                s.samples,
                tokens_per_second_trend=s.trend,
                tokens_per_second_noise=s.abs_error,
            )
            for rank, s in sorted(self._ranks.items())
        )
        return LoadSnapshot(
            world_size=self.world_size,
            max_step=self._max_step,
            ranks=ranks,
            expert_tokens=tuple(tuple(layer) for layer in self._expert_tokens),
            counts=dict(self._counts),
            trend_damping=self.trend_damping,
        )
