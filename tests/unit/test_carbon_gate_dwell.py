"""The carbon gate over time: the absolute hysteresis band and the minimum dwell on a jittery series, failing open
when the feed is stale or missing (`IntensityStale`, `onFeedLoss`), and the README's example (region DE,
maxIntensity 300, the yearly table's 381 g) as the README states it. The gate's memory is its own conditions:
every tick feeds the status the previous tick wrote (`gate_status`) back in, as the operator does."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from moeops.api.v1alpha1.carbon import CarbonSpec
from moeops.carbon.accounting.intensity import Intensity
from moeops.operator.grid_intensity import GridIntensity
from moeops.operator.planning.carbon_gate import Action, GateMemory, Reading, decide_gate, is_carbon_paused
from moeops.operator.status.carbon_gate import gate_status

T0 = datetime(2026, 3, 1, tzinfo=UTC)
TICK = timedelta(seconds=30)  # the operator's default gate interval
README = CarbonSpec.model_validate({"region": "DE", "maxIntensity": 300})


def live(value: float, at: datetime = T0) -> Intensity:
    return Intensity(g_co2e_per_kwh=value, source="series:grid.csv", region="de", valid_from=at)


@dataclass
class Gate:
    """The gate's loop for one job: its status carried from tick to tick, and the actions taken (time, action)."""

    carbon: CarbonSpec
    status: dict[str, Any] = field(default_factory=dict)
    actions: list[tuple[datetime, Action]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def tick(self, now: datetime, reading: Reading) -> Action:
        paused = is_carbon_paused(self.status)
        decision = decide_gate(self.carbon, user_suspended=False, reading=reading, paused=paused,
                               memory=GateMemory.of(self.status), now=now)  # fmt: skip
        update = gate_status(self.status, decision, now=now, generation=1)
        self.status = {**self.status, **update.patch}
        self.events += [event.reason for event in update.events]
        if decision.action is not Action.KEEP:
            self.actions.append((now, decision.action))
        return decision.action

    def condition(self, type_: str) -> tuple[str, str]:
        found = next(c for c in self.status["conditions"] if c["type"] == type_)
        return found["status"], found["reason"]

    def run(self, start: datetime, hours: float, value_at: Callable[[datetime], Reading]) -> None:
        now = start
        while now < start + timedelta(hours=hours):
            self.tick(now, value_at(now))
            now += TICK


def jittery(center: float, jitter: float, period: timedelta, seed: int = 18) -> Callable[[datetime], Reading]:
    """A step series: one value per settlement period, `center` ± `jitter` uniformly."""
    rng = random.Random(seed)
    values: dict[int, float] = {}

    def value_at(now: datetime) -> Reading:
        step = int((now - T0) / period)
        if step not in values:
            values[step] = center + rng.uniform(-jitter, jitter)
        return live(values[step], T0 + step * period)

    return value_at


@pytest.mark.parametrize("period_min", [5, 30])
def test_a_jittery_series_gets_at_most_one_action_per_dwell_period(period_min: int) -> None:
    """±20 g around 290 against maxIntensity 300 for 48 h: the former 5 % band without a dwell paused and resumed
    the job 9 times (a SIGTERM, a checkpoint and a restart each); now no two actions are closer than the dwell."""
    gate = Gate(README)
    gate.run(T0, 48, jittery(290.0, 20.0, timedelta(minutes=period_min)))
    times = [at for at, _ in gate.actions]
    assert gate.actions and [a for _, a in gate.actions][:2] == [Action.PAUSE, Action.RESUME]
    dwell = timedelta(seconds=README.min_dwell_seconds)
    assert all(later - earlier >= dwell for earlier, later in itertools.pairwise(times))
    assert len(times) <= 48 * 3600 // README.min_dwell_seconds + 1


def test_the_dwell_holds_a_resume_and_then_a_pause_and_says_until_when() -> None:
    gate = Gate(README)
    assert gate.tick(T0, live(400.0)) is Action.PAUSE
    assert gate.tick(T0 + timedelta(minutes=10), live(100.0)) is Action.KEEP
    assert gate.condition("CarbonPaused") == ("True", "MinDwell")
    assert "minDwellSeconds" in next(c for c in gate.status["conditions"] if c["type"] == "CarbonPaused")["message"]
    assert gate.tick(T0 + timedelta(minutes=30), live(100.0)) is Action.RESUME
    assert gate.tick(T0 + timedelta(minutes=31), live(400.0)) is Action.KEEP
    assert gate.condition("CarbonPaused") == ("False", "MinDwell")
    assert gate.tick(T0 + timedelta(minutes=45), live(400.0)) is Action.KEEP  # the dwell counts from the resume
    assert gate.tick(T0 + timedelta(minutes=60), live(400.0)) is Action.PAUSE
    assert gate.events == ["CarbonPaused", "CarbonResumed", "CarbonPaused"]


def test_a_job_the_gate_never_paused_is_paused_at_once_and_no_dwell_is_needed_with_zero() -> None:
    gate = Gate(README)
    gate.run(T0, 2, lambda now: live(200.0, now))
    assert gate.condition("CarbonPaused") == ("False", "GridWithinThreshold") and not gate.actions
    assert gate.tick(T0 + timedelta(hours=2), live(301.0)) is Action.PAUSE  # no dwell from the first tick
    eager = Gate(CarbonSpec.model_validate({"region": "DE", "maxIntensity": 300, "minDwellSeconds": 0}))
    assert [eager.tick(T0 + i * TICK, live(v)) for i, v in enumerate([400, 100, 400])] == [
        Action.PAUSE,
        Action.RESUME,
        Action.PAUSE,
    ]


def test_the_band_is_absolute_and_in_the_spec() -> None:
    wide = Gate(
        CarbonSpec.model_validate({"region": "DE", "maxIntensity": 300, "hysteresis": 50, "minDwellSeconds": 0})
    )
    assert wide.tick(T0, live(301.0)) is Action.PAUSE
    assert wide.tick(T0 + TICK, live(251.0)) is Action.KEEP  # within 50 g of the threshold
    assert wide.tick(T0 + 2 * TICK, live(249.0)) is Action.RESUME


@pytest.mark.parametrize(
    ("reading", "stale_reason"),
    [
        (Intensity(g_co2e_per_kwh=381, source="static:Ember 2023", region="de", valid_from=T0), "YearlyAverageOnly"),
        (live(900.0).model_copy(update={"stale": True}), "StaleValue"),
    ],
)
def test_a_stale_feed_never_pauses_and_releases_a_paused_job_by_default(reading: Intensity, stale_reason: str) -> None:
    gate = Gate(README)
    assert gate.tick(T0, live(400.0)) is Action.PAUSE
    assert gate.tick(T0 + TICK, reading) is Action.RESUME  # fails open at once: no dwell holds a job on a lost feed
    assert gate.condition("IntensityStale") == ("True", stale_reason)
    assert gate.condition("CarbonGateActive") == ("False", "IntensityStale")
    assert gate.condition("CarbonPaused") == ("False", "IntensityStale")
    gate.run(T0 + 2 * TICK, 24, lambda now: reading)
    assert [a for _, a in gate.actions] == [Action.PAUSE, Action.RESUME]
    assert gate.events.count("CarbonGateInactive") == 1
    assert gate.tick(T0 + timedelta(hours=25), live(400.0)) is Action.PAUSE  # a live value again: the gate acts
    assert gate.condition("IntensityStale") == ("False", "LiveIntensity")


def test_on_feed_loss_pause_holds_the_job_until_a_live_value_is_back() -> None:
    carbon = CarbonSpec.model_validate({"region": "DE", "maxIntensity": 300, "onFeedLoss": "pause"})
    gate = Gate(carbon)
    yearly = Intensity(g_co2e_per_kwh=120, source="static:Ember 2023", region="de", valid_from=T0)
    assert gate.tick(T0, yearly) is Action.PAUSE  # even a clean yearly average: the user asked for no blind runs
    assert gate.condition("CarbonPaused") == ("True", "IntensityStale")
    assert gate.tick(T0 + timedelta(hours=1), yearly) is Action.KEEP
    assert gate.tick(T0 + timedelta(hours=2), live(100.0)) is Action.RESUME


def test_the_readme_example_runs_on_the_yearly_table_and_pauses_on_a_live_series(tmp_path: Path) -> None:
    """README: `region: DE, maxIntensity: 300`. With no series configured the operator has only the yearly table
    (DE 381 g): the gate is inactive (IntensityStale), warns once and the job runs, for ever. With a series it
    pauses above 300 and resumes below 280 after the dwell. Before: paused for ever on the yearly 381."""
    table_only = GridIntensity("")
    yearly = table_only.reading("DE", T0)
    assert isinstance(yearly, Intensity) and yearly.g_co2e_per_kwh == 381
    gate = Gate(README)
    gate.run(T0, 72, lambda now: table_only.reading("DE", now))
    assert not gate.actions and not is_carbon_paused(gate.status)
    assert gate.condition("IntensityStale") == ("True", "YearlyAverageOnly")
    assert gate.events == ["CarbonGateInactive"]

    series = tmp_path / "grid.csv"
    rows = [(T0, 381.0), (T0 + timedelta(minutes=30), 290.0), (T0 + timedelta(minutes=60), 250.0)]
    series.write_text("timestamp,region,g_co2e_per_kwh\n" + "".join(f"{t.isoformat()},DE,{v}\n" for t, v in rows))
    fed = Gate(README)
    grid = GridIntensity(str(series))
    fed.run(T0, 1.5, lambda now: grid.reading("DE", now))
    assert [(at - T0, a) for at, a in fed.actions] == [
        (timedelta(0), Action.PAUSE),
        (timedelta(hours=1), Action.RESUME),
    ]
