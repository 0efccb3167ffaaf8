"""The pure side of the health endpoints: when a heartbeat is stale, what the probes answer, the settings."""

from __future__ import annotations

import argparse

import pytest

from moeops.api import env
from moeops.bus.health import (
    MIN_STALE_S,
    STALE_INTERVALS,
    HealthSettings,
    Heartbeat,
    Verdict,
    add_health_arguments,
    health_settings,
    liveness,
)
from moeops.carbon import cli as carbon_cli


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_heartbeat_is_starting_until_its_first_beat_then_stale_beyond_its_limit() -> None:
    clock = Clock()
    beat = Heartbeat("main loop", 0.5, clock=clock)
    clock.now += 3600
    assert beat.stale_reason(None) is None  # never beaten: starting (connecting to NATS), not hung
    beat.beat()
    clock.now += MIN_STALE_S
    assert beat.stale_reason(None) is None
    clock.now += 0.5
    assert beat.stale_reason(None) == f"main loop: no progress for {MIN_STALE_S + 0.5:.1f} s (limit {MIN_STALE_S:g} s)"
    assert beat.stale_reason(120.0) is None  # a longer limit of one's own
    beat.beat()
    assert beat.stale_reason(None) is None and beat.beats == 2


def test_the_default_limit_is_some_intervals_and_at_least_the_floor() -> None:
    assert Heartbeat("fast", 0.1).limit_s(None) == MIN_STALE_S
    slow = Heartbeat("slow", 30.0)
    assert slow.limit_s(None) == STALE_INTERVALS * 30.0
    assert slow.limit_s(5.0) == 5.0
    with pytest.raises(ValueError, match="positive"):
        Heartbeat("never", 0)


def test_liveness_names_every_stale_heartbeat() -> None:
    clock = Clock()
    beats = [Heartbeat(what, 1.0, clock=clock) for what in ("event loop", "poller", "sender")]
    for beat in beats[:2]:
        beat.beat()
    assert liveness(beats, 2.0) == Verdict()
    clock.now += 3
    verdict = liveness(beats, 2.0)
    assert not verdict.ok
    assert (
        verdict.body() == "event loop: no progress for 3.0 s (limit 2 s)\npoller: no progress for 3.0 s (limit 2 s)\n"
    )
    assert Verdict().body() == "ok\n"


def test_settings_from_the_environment_and_their_errors() -> None:
    assert HealthSettings.from_env({}) == HealthSettings("127.0.0.1", 0, None)
    given = {env.HEALTH_ADDR: " 10.1.2.3 ", env.HEALTH_PORT: "8080", env.HEALTH_STALE_S: "90"}
    assert HealthSettings.from_env(given) == HealthSettings("10.1.2.3", 8080, 90.0)
    with pytest.raises(ValueError, match=f"{env.HEALTH_PORT} must be a number, not 'http'"):
        HealthSettings.from_env({env.HEALTH_PORT: "http"})
    with pytest.raises(ValueError, match=env.HEALTH_PORT):
        HealthSettings.from_env({env.HEALTH_PORT: "70000"})
    with pytest.raises(ValueError, match=env.HEALTH_STALE_S):
        HealthSettings.from_env({env.HEALTH_STALE_S: "0"})


def test_flags_default_to_the_environment_and_override_it() -> None:
    parser = argparse.ArgumentParser()
    add_health_arguments(parser, {env.HEALTH_ADDR: "0.0.0.0", env.HEALTH_PORT: "8080"})
    assert health_settings(parser.parse_args([])) == HealthSettings("0.0.0.0", 8080, None)
    args = parser.parse_args(["--health-addr=::1", "--health-port=9", "--health-stale-s=5"])
    assert health_settings(args) == HealthSettings("::1", 9, 5.0)


def test_a_bad_health_setting_stops_the_carbon_entry_point_with_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        carbon_cli.main(["aggregator"], {env.HEALTH_PORT: "eighty"})
    assert exited.value.code == 2
    assert f"{env.HEALTH_PORT} must be a number" in capsys.readouterr().err
