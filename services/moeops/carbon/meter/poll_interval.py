"""When to poll NVML next: often while power changes, rarely while it is steady. Pure, with an injected clock.

The base interval is about the energy counter's own update period (NVML refreshes it every few tens of ms on
recent GPUs), at most 0.1 s by default: polling faster reads the same value twice. While every GPU's power stays
within a noise band of its previous reading the interval grows geometrically up to `max_s` (1 s): a steady draw
integrates exactly at any rate, and each poll costs CPU on the node. Any change beyond the band snaps it back to
the base at once, because the power integral (GPUs without a counter) is only as good as its sampling around
changes. With a counter the interval hardly matters for accuracy; it still bounds how stale the reported power is.

Who uses it: `NvmlReader.poll` returns its interval and `NvmlReader.run` sleeps by it (benchmarks, a standalone
reader). The node agent does not: it polls at its fixed `MOEOPS_CARBON_POLL_S` (default 1 s, `node.agent`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class IntervalPolicy:
    base_s: float = 0.1
    max_s: float = 1.0
    backoff: float = 1.5
    """Growth factor per steady poll: from 0.1 s to 1 s in six polls (≈ 2.5 s of steady power)."""
    steady_rel: float = 0.02
    steady_abs_w: float = 5.0
    """The noise band: a change within max(steady_abs_w, steady_rel × previous power) is steady. NVML power
    readings jitter by a few watts even at a constant load."""

    def __post_init__(self) -> None:
        if not 0 < self.base_s <= self.max_s:
            raise ValueError(f"need 0 < base_s <= max_s, got {self.base_s}, {self.max_s}")
        if self.backoff < 1 or self.steady_rel < 0 or self.steady_abs_w < 0:
            raise ValueError(f"need backoff >= 1 and non-negative noise bands: {self}")


@dataclass
class AdaptiveInterval:
    """Feed it each poll's power per GPU (`observe`); ask it how long to wait (`remaining_s`)."""

    clock: Callable[[], float]
    policy: IntervalPolicy = field(default_factory=IntervalPolicy)
    interval_s: float = field(init=False)
    _previous_w: dict[str, float] = field(default_factory=dict, init=False)
    _next_due_s: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.interval_s = self.policy.base_s

    def is_steady(self, power_w: Mapping[str, float]) -> bool:
        """Whether every GPU's power is within the noise band of its previous reading (and the set of GPUs with a
        reading is unchanged: one appearing or disappearing is a change)."""
        if not power_w or power_w.keys() != self._previous_w.keys():
            return False
        band = self.policy
        return all(
            abs(watts - self._previous_w[name]) <= max(band.steady_abs_w, band.steady_rel * abs(self._previous_w[name]))
            for name, watts in power_w.items()
        )

    def observe(self, power_w: Mapping[str, float]) -> float:
        """Record one poll's readings, taken now; the interval until the next poll."""
        if self.is_steady(power_w):
            self.interval_s = min(self.interval_s * self.policy.backoff, self.policy.max_s)
        else:
            self.interval_s = self.policy.base_s
        self._previous_w = dict(power_w)
        self._next_due_s = self.clock() + self.interval_s
        return self.interval_s

    def remaining_s(self) -> float:
        """Seconds until the next poll is due (0 before the first observation). Measured from when `observe` was
        called, so the time a poll itself takes does not stretch the cadence."""
        if self._next_due_s is None:
            return 0.0
        return max(0.0, self._next_due_s - self.clock())
