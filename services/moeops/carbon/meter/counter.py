"""The cumulative energy counter's deltas (`nvmlDeviceGetTotalEnergyConsumption`, millijoules since the driver
loaded): reset, jitter and glitch told apart. Pure; `energy.GpuEnergyMeter` uses it (and re-exports it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CounterAccumulator:
    """Deltas of the cumulative millijoule counter: reset, jitter and glitch told apart before the state moves.

    A reading below the baseline is a *reset* (driver reload, GPU reset) only when its magnitude fits one: at most
    what `max_power_w` could draw since the previous reading (the counter restarted from 0 within the interval)
    and less than half the baseline; the new value is then the energy since the reset. Any other backwards reading
    is *jitter* (some drivers read a few joules back and forth): no energy, and the baseline stays where it was, so
    the next reading is not booked twice. A reading above the baseline by more than `max_power_w` × elapsed is an
    implausible *glitch*: rejected without moving the baseline (the next good reading catches up); two glitches in a
    row that agree with each other are a *jump* (the counter moved for good): the baseline moves to them."""

    max_power_w: float
    resets: int = 0
    jitter: int = 0
    jumps: int = 0
    last_mj: int | None = None
    last_t_s: float | None = None
    last_reset: bool = False
    """The latest `add` was a reset (or a jump): the span since the previous baseline is partly unmeasured."""
    last_unmeasured_s: float = 0.0
    """How much of it: the whole span for a reset (when it happened is unknown), up to the first glitch for a jump."""
    suspect: tuple[float, int] | None = None
    """The last rejected (glitch) reading: (time, counter)."""

    def _fits(self, delta_mj: int, dt_s: float) -> bool:
        return 0 <= delta_mj <= self.max_power_w * dt_s * 1000.0

    def add(self, t_s: float, counter_mj: int) -> float | None:
        """The energy in joules since the previous reading (0.0 for the first or for jitter), or None when the
        reading is rejected (implausible, or its time did not advance). After a reset or a jump, the value is
        the part measured since it (`last_reset` is set)."""
        previous_mj, previous_t_s = self.last_mj, self.last_t_s
        self.last_reset = False
        if previous_mj is None or previous_t_s is None:
            self.last_mj, self.last_t_s = counter_mj, t_s
            return 0.0
        if t_s <= previous_t_s:
            return None
        elapsed_s = t_s - previous_t_s
        if counter_mj >= previous_mj:
            if self._fits(counter_mj - previous_mj, elapsed_s):
                self.last_mj, self.last_t_s, self.suspect = counter_mj, t_s, None
                return (counter_mj - previous_mj) / 1000.0
            return self._glitch(t_s, counter_mj)
        if self._fits(counter_mj, elapsed_s) and counter_mj < previous_mj / 2:
            self.resets += 1
            self.last_mj, self.last_t_s, self.suspect, self.last_reset = counter_mj, t_s, None, True
            self.last_unmeasured_s = elapsed_s
            return counter_mj / 1000.0
        self.jitter += 1
        return 0.0

    def _glitch(self, t_s: float, counter_mj: int) -> float | None:
        suspect, self.suspect = self.suspect, (t_s, counter_mj)
        if suspect is None or t_s <= suspect[0] or not self._fits(counter_mj - suspect[1], t_s - suspect[0]):
            return None
        self.jumps += 1
        self.last_unmeasured_s = suspect[0] - (self.last_t_s or suspect[0])
        self.last_mj, self.last_t_s, self.suspect, self.last_reset = counter_mj, t_s, None, True
        return (counter_mj - suspect[1]) / 1000.0
