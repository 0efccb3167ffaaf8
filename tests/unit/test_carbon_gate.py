"""The carbon gate without a server: the pure decision, its conditions and events, the suspension it causes, and
the operator's intensity source (a series file, then the static table)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from moeops.api import env
from moeops.api.v1alpha1 import MoETrainingJobSpec
from moeops.api.v1alpha1.carbon import CarbonSpec
from moeops.carbon.accounting.intensity import Intensity
from moeops.operator.children.training import desired_suspend
from moeops.operator.config import OperatorConfig
from moeops.operator.grid_intensity import GridIntensity
from moeops.operator.planning.carbon_gate import (
    Action,
    Unavailable,
    decide_gate,
    is_carbon_paused,
    resume_threshold,
)
from moeops.operator.status import training_status
from moeops.operator.status.carbon_gate import gate_status, merge_events
from moeops.operator.status.conditions import Event

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
GATED = CarbonSpec.model_validate({"region": "DE", "maxIntensity": 300})


def reading(value: float) -> Intensity:
    return Intensity(g_co2e_per_kwh=value, source="series:grid.csv", region="de", valid_from=T0)


def decide(value: float | None, *, paused: bool, carbon: CarbonSpec = GATED, user_suspended: bool = False):
    return decide_gate(
        carbon, user_suspended=user_suspended, reading=None if value is None else reading(value), paused=paused
    )


@pytest.mark.parametrize(
    ("value", "paused", "action", "now_paused"),
    [
        (301.0, False, Action.PAUSE, True),  # dirtier than the threshold
        (300.0, False, Action.KEEP, False),  # at the threshold is not dirtier
        (100.0, False, Action.KEEP, False),
        (450.0, True, Action.KEEP, True),
        (290.0, True, Action.KEEP, True),  # below the threshold, inside the 20 g band: stays paused
        (280.0, True, Action.KEEP, True),  # the band's edge: not yet below it
        (279.9, True, Action.RESUME, False),
        (0.0, True, Action.RESUME, False),
    ],
)
def test_thresholds_and_the_hysteresis_band(value: float, paused: bool, action: Action, now_paused: bool) -> None:
    decision = decide(value, paused=paused)
    assert (decision.action, decision.paused, decision.active) == (action, now_paused, True)
    assert resume_threshold(GATED) == pytest.approx(280.0)


def test_a_series_jittering_around_the_threshold_pauses_once_and_resumes_once() -> None:
    paused, actions = False, []
    for value in (280, 310, 295, 305, 299, 290, 286, 279, 299):
        decision = decide(float(value), paused=paused)
        paused = decision.paused
        actions.append(decision.action)
    assert [a for a in actions if a is not Action.KEEP] == [Action.PAUSE, Action.RESUME]
    assert not paused


def test_the_pause_message_names_the_value_source_and_threshold() -> None:
    decision = decide(420.0, paused=False)
    assert decision.reason == "GridAboveThreshold"
    assert "420 gCO2e/kWh" in decision.message and "series:grid.csv" in decision.message
    assert "maxIntensity 300" in decision.message and "2026-03-01T12:00:00+00:00" in decision.message


@pytest.mark.parametrize("paused", [False, True])
def test_no_region_never_pauses_and_drops_a_pause(paused: bool) -> None:
    carbon = CarbonSpec.model_validate({"maxIntensity": 300})
    decision = decide(None, paused=paused, carbon=carbon)
    assert not decision.paused and not decision.active and decision.active_reason == "NoRegion"
    assert decision.action is (Action.RESUME if paused else Action.KEEP)


@pytest.mark.parametrize(
    ("reason", "active_reason"), [("UnknownRegion", "UnknownRegion"), ("NoIntensity", "IntensityStale")]
)
def test_no_reading_never_pauses(reason: str, active_reason: str) -> None:
    decision = decide_gate(GATED, user_suspended=False, reading=Unavailable(reason, "why"), paused=False)
    assert (decision.action, decision.paused, decision.active, decision.active_reason) == (
        Action.KEEP,
        False,
        False,
        active_reason,
    )
    assert "why" in decision.active_message
    assert decision.stale is (reason == "NoIntensity")  # a lost feed; an unknown region is a configuration error


def test_the_users_suspend_wins() -> None:
    dirty = decide(900.0, paused=False, user_suspended=True)
    assert dirty.action is Action.KEEP and not dirty.paused  # no carbon pause recorded on a user-suspended job
    held = decide(900.0, paused=True, user_suspended=True)
    assert held.action is Action.RESUME and not held.paused and held.reason == "SuspendedByUser"


def test_removing_the_threshold_releases_a_paused_job() -> None:
    decision = decide(900.0, paused=True, carbon=CarbonSpec.model_validate({"region": "DE"}))
    assert decision.action is Action.RESUME and decision.reason == "GateDisabled"


def conditions(patch: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in patch["conditions"]}


def test_gate_status_conditions_and_events() -> None:
    paused = gate_status({}, decide(400.0, paused=False), now=T0, generation=2)
    assert conditions(paused.patch) == {
        "CarbonPaused": ("True", "GridAboveThreshold"),
        "CarbonGateActive": ("True", "IntensityAvailable"),
        "IntensityStale": ("False", "LiveIntensity"),
    }
    assert [(e.type, e.reason) for e in paused.events] == [("Normal", "CarbonPaused")]
    assert is_carbon_paused(paused.patch)
    kept = gate_status(paused.patch, decide(350.0, paused=True), now=T0 + timedelta(seconds=30), generation=2)
    assert kept.events == [] and is_carbon_paused(kept.patch)
    resumed = gate_status(kept.patch, decide(200.0, paused=True), now=T0 + timedelta(seconds=60), generation=2)
    assert [e.reason for e in resumed.events] == ["CarbonResumed"] and not is_carbon_paused(resumed.patch)


def test_an_inactive_gate_warns_once_per_reason() -> None:
    blind = decide_gate(GATED, user_suspended=False, reading=Unavailable("NoIntensity", "feed down"), paused=False)
    first = gate_status({}, blind, now=T0, generation=1)
    assert [(e.type, e.reason) for e in first.events] == [("Warning", "CarbonGateInactive")]
    assert gate_status(first.patch, blind, now=T0, generation=1).events == []
    unknown = decide_gate(GATED, user_suspended=False, reading=Unavailable("UnknownRegion", "xx"), paused=False)
    assert [e.reason for e in gate_status(first.patch, unknown, now=T0, generation=1).events] == ["CarbonGateInactive"]


def test_merge_events_keeps_one_per_reason() -> None:
    gate = [Event("Normal", "CarbonPaused", "grid 400")]
    job = [Event("Normal", "CarbonPaused", "workers stopped"), Event("Normal", "Resumed", "x")]
    assert merge_events(gate, job) == [gate[0], job[1]]


SPEC = MoETrainingJobSpec.model_validate(
    {
        "model": {"preset": "moe-debug"},
        "data": {"source": "synthetic://x"},
        "training": {"steps": 10},
        "workers": {"replicas": 2},
        "carbon": {"region": "DE", "maxIntensity": 300},
    }
)
RUNNING_JOB = {"spec": {"suspend": False}, "status": {"active": 2, "ready": 2}}


def test_a_carbon_pause_suspends_the_job_like_a_user_suspend() -> None:
    assert desired_suspend(SPEC, carbon_paused=True) is True
    assert desired_suspend(SPEC) is False
    queued = SPEC.model_copy(update={"scheduling": SPEC.scheduling.model_copy(update={"queue_name": "q"})})
    assert desired_suspend(queued, carbon_paused=True) is True

    running = training_status(SPEC, RUNNING_JOB, {}, generation=1, now=T0).patch
    gate = gate_status(running, decide(400.0, paused=False), now=T0, generation=1).patch
    update = training_status(SPEC, RUNNING_JOB, {**running, **gate}, generation=1, now=T0)
    suspended = next(c for c in update.patch["conditions"] if c["type"] == "Suspended")
    assert (update.patch["state"], suspended["reason"]) == ("Suspended", "CarbonPaused")
    assert "400 gCO2e/kWh" in suspended["message"]
    assert [e.reason for e in update.events] == ["CarbonPaused"]

    cleared = gate_status(update.patch, decide(100.0, paused=True), now=T0, generation=1).patch
    resumed = training_status(SPEC, RUNNING_JOB, {**update.patch, **cleared}, generation=1, now=T0)
    assert resumed.patch["state"] == "Running" and "Resumed" in [e.reason for e in resumed.events]


def write_series(path: Path, rows: list[tuple[datetime, str, float]]) -> None:
    lines = ["timestamp,region,g_co2e_per_kwh", *(f"{t.isoformat()},{r},{v}" for t, r, v in rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_the_series_comes_first_then_the_static_table(tmp_path: Path) -> None:
    series = tmp_path / "grid.csv"
    write_series(series, [(T0, "DE", 500.0), (T0 + timedelta(minutes=30), "DE", 120.0)])
    grid = GridIntensity(str(series))
    first = grid.reading("de", T0 + timedelta(minutes=10))
    assert isinstance(first, Intensity) and first.g_co2e_per_kwh == 500.0 and first.source == "series:grid.csv"
    later = grid.reading("DE", T0 + timedelta(minutes=40))
    assert isinstance(later, Intensity) and later.g_co2e_per_kwh == 120.0
    static = grid.reading("fr", T0)  # not in the series: the yearly average
    assert isinstance(static, Intensity) and static.source.startswith("static:")
    unknown = grid.reading("atlantis", T0)
    assert isinstance(unknown, Unavailable) and unknown.reason == "UnknownRegion"

    write_series(series, [(T0, "DE", 700.0)])
    os.utime(series, ns=(1, 1))  # a new mtime even on a coarse clock
    changed = grid.reading("DE", T0 + timedelta(minutes=10))
    assert isinstance(changed, Intensity) and changed.g_co2e_per_kwh == 700.0


def test_a_missing_or_broken_series_falls_back(tmp_path: Path) -> None:
    grid = GridIntensity(str(tmp_path / "absent.csv"))
    fallback = grid.reading("DE", T0)
    assert isinstance(fallback, Intensity) and fallback.source.startswith("static:")
    gone = grid.reading("only-in-series", T0)
    assert isinstance(gone, Unavailable) and gone.reason == "NoIntensity" and "absent.csv" in gone.message
    broken = tmp_path / "broken.csv"
    broken.write_text("timestamp,region\nnot a time,DE\n", encoding="utf-8")
    bad = GridIntensity(str(broken)).reading("only-in-series", T0)
    assert isinstance(bad, Unavailable) and "header lacks" in bad.message


def test_the_operator_reads_its_carbon_settings_from_the_environment() -> None:
    cfg = OperatorConfig.from_env(
        {env.OPERATOR_CARBON_INTENSITY_SERIES: "/feed/grid.csv", env.OPERATOR_CARBON_GATE_INTERVAL: "2"}
    )
    assert (cfg.carbon_intensity_series, cfg.carbon_gate_interval_s) == ("/feed/grid.csv", 2.0)
    assert (OperatorConfig().carbon_intensity_series, OperatorConfig().carbon_gate_interval_s) == ("", 30.0)
