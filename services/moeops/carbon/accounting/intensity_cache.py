"""A live intensity provider made safe to call per energy delta: TTL cache, exponential backoff, degraded answers.

A live provider (Electricity Maps, WattTime, a grid operator's API) is slow, rate-limited and sometimes down, and the
ledger asks for an intensity on every delta. `CachedIntensity` wraps any callable `fetch(region, when)`:

- a value fetched less than `ttl_s` ago is served again without calling the provider;
- a failed fetch (any exception, or a value that is not an `Intensity`) backs off exponentially per region
  (initial, 2×, 4×, … up to `max_backoff_s`; a success resets it), and no call is made during the backoff;
- meanwhile the last good value is served marked `stale=True` while it is younger than `max_stale_s`, and after
  that (or before any success) the `fallback` source answers (typically the static table) with its own
  provenance, so a carbon figure always says which kind of number it used.

The cache is per region, not per time: a provider answers with its current value, which is what the ledger needs for
deltas arriving within seconds of being measured. A replay of old deltas through a live provider therefore gets
current values; replay through a time series instead. Time comes from an injected monotonic `clock` (seconds), so
the tests drive TTL and backoff without sleeping. No jitter: one aggregator per cluster calls the provider, so
there is no herd of clients to spread out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime

from moeops.carbon.accounting.intensity import Intensity, IntensitySource, IntensityUnavailableError, normalize_region

Fetch = Callable[[str, datetime], Intensity]
"""A live provider: the intensity of a region's grid now (or at `when`, if it keeps history)."""


@dataclass(frozen=True)
class CachePolicy:
    """How long values are trusted and how hard a failing provider is retried (seconds)."""

    ttl_s: float = 300.0
    """Most providers update every 5 to 60 minutes; 5 minutes follows them closely at 12 calls per region and hour."""
    initial_backoff_s: float = 10.0
    max_backoff_s: float = 900.0
    """A provider down for hours is retried every 15 minutes, no more often."""
    max_stale_s: float = 3 * 3600.0
    """A value older than this says little about the grid now; the yearly average is then the honest answer."""

    def __post_init__(self) -> None:
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError(f"need 0 < initial_backoff_s <= max_backoff_s, got {self}")
        if self.ttl_s <= 0 or self.max_stale_s < self.ttl_s:
            raise ValueError(f"need 0 < ttl_s <= max_stale_s, got {self}")

    def backoff_s(self, failures: int) -> float:
        """Wait after the `failures`-th consecutive failure: initial·2^(failures−1), capped."""
        return min(self.max_backoff_s, self.initial_backoff_s * 2.0 ** (failures - 1))


@dataclass(frozen=True)
class _RegionState:
    """What the wrapper knows about one region: the last good value and the current run of failures."""

    good: Intensity | None = None
    fetched_at: float = 0.0
    failures: int = 0
    retry_at: float = 0.0
    last_error: str = ""


@dataclass
class CachedIntensity:
    """An `IntensitySource` over a live `fetch`, cached and backed off per region (see the module docstring)."""

    fetch: Fetch
    fallback: IntensitySource | None = None
    policy: CachePolicy = field(default_factory=CachePolicy)
    clock: Callable[[], float] = time.monotonic
    _regions: dict[str, _RegionState] = field(default_factory=dict, init=False, repr=False)

    def intensity_at(self, region: str, when: datetime) -> Intensity:
        """A fresh cached value, a newly fetched one, or (while the provider fails) a stale or fallback one."""
        key = normalize_region(region)
        now = self.clock()
        state = self._regions.get(key, _RegionState())
        if state.good is not None and now - state.fetched_at < self.policy.ttl_s:
            return state.good
        if now >= state.retry_at:
            try:
                fetched = self.fetch(region, when)
                if not isinstance(fetched, Intensity):
                    raise TypeError(f"the provider returned {type(fetched).__name__}, not an Intensity")
            except Exception as error:  # any provider failure degrades; it must never stop the accounting
                failures = state.failures + 1
                state = replace(
                    state,
                    failures=failures,
                    retry_at=now + self.policy.backoff_s(failures),
                    last_error=f"{type(error).__name__}: {error}",
                )
            else:
                self._regions[key] = _RegionState(good=fetched, fetched_at=now)
                return fetched
            self._regions[key] = state
        return self._degraded(key, region, when, state, now)

    def _degraded(self, key: str, region: str, when: datetime, state: _RegionState, now: float) -> Intensity:
        """The answer while the provider cannot be used: the last good value if recent enough, else the fallback."""
        if state.good is not None and now - state.fetched_at <= self.policy.max_stale_s:
            return state.good.model_copy(update={"stale": True})
        if self.fallback is not None:
            return self.fallback.intensity_at(region, when)
        raise IntensityUnavailableError(
            f"{key!r}: the provider failed {state.failures} time(s) (last: {state.last_error or 'none'}), "
            "no recent value and no fallback"
        )

    def failures(self, region: str) -> int:
        """Consecutive failed fetches for the region (0 after a success), for metrics and logs."""
        return self._regions.get(normalize_region(region), _RegionState()).failures
