"""The InferenceService autoscaler, pure: scripted load series through `decide`, the status it writes, the replicas
the reconcile derives from it, and the load message on the bus."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from moeops.api.v1alpha1.inferenceservice import InferenceServiceSpec
from moeops.bus.messages import BadMessage, BadMessageReason
from moeops.bus.serving_messages import ServerLoad, decode_load, encode_load, load_key
from moeops.operator.children.serving import desired_replicas
from moeops.operator.planning.autoscale import Decision, Policy, Reason, State, decide, initial_state
from moeops.operator.status.autoscale import autoscale_status

TICK = 5.0


@dataclass(frozen=True)
class Load:
    in_flight: int
    queued: int = 0


def run(
    policy: Policy, series: Sequence[Sequence[Load]], *, start: int = 1, wakes: Sequence[str | None] | None = None
) -> list[Decision]:
    """One decision per tick (TICK seconds apart) from a fresh state at `start` replicas."""
    state: State = initial_state(start, 0.0, None)
    decisions = []
    for i, loads in enumerate(series):
        decision = decide(policy, loads, TICK * (i + 1), wakes[i] if wakes else None, state)
        state = decision.state
        decisions.append(decision)
    return decisions


def replicas(decisions: Sequence[Decision]) -> list[int]:
    return [d.replicas for d in decisions]


POLICY = Policy(min_replicas=1, max_replicas=10, target_in_flight=4, stable_window_s=20.0, scale_to_zero_after_s=30.0)


def test_scale_up_is_immediate_and_counts_queued_requests() -> None:
    decisions = run(POLICY, [[Load(2)], [Load(6, 3), Load(4)], [Load(20), Load(20)]])
    assert replicas(decisions) == [1, 4, 10]  # ceil(13 / 4) = 4; ceil(40 / 4) = 10
    assert [d.reason for d in decisions] == [Reason.STEADY, Reason.SCALE_UP, Reason.SCALE_UP]
    assert decisions[1].demand == 13 and "13 request(s)" in decisions[1].message


def test_scale_down_waits_for_the_stable_window() -> None:
    busy, calm = [Load(16)], [Load(4)]
    decisions = run(POLICY, [busy, calm, calm, calm, calm, calm])
    # The 4 of the first tick (t=5) stays in the 20 s window until t=25: the fall applies at the 5th tick.
    assert replicas(decisions) == [4, 4, 4, 4, 1, 1]
    assert [d.reason for d in decisions[1:5]] == [Reason.STABILIZING] * 3 + [Reason.SCALE_DOWN]


def test_a_burst_inside_the_window_keeps_the_replicas() -> None:
    busy, calm = [Load(16)], [Load(4)]
    assert replicas(run(POLICY, [busy, calm, calm, busy, calm, calm, calm, calm])) == [4, 4, 4, 4, 4, 4, 4, 1]


def test_bounds_hold_for_any_load() -> None:
    policy = Policy(min_replicas=2, max_replicas=3, target_in_flight=1, stable_window_s=10.0, scale_to_zero_after_s=5.0)
    decisions = run(policy, [[], [Load(100)], [Load(1)], [], []], start=2)
    assert replicas(decisions) == [2, 3, 3, 2, 2]  # never below min (even idle), never above max
    assert "held at replicas.max 3" in decisions[1].message


def test_min_zero_still_serves_until_idle_then_scales_to_zero() -> None:
    policy = Policy(
        min_replicas=0, max_replicas=4, target_in_flight=4, stable_window_s=10.0, scale_to_zero_after_s=20.0
    )
    decisions = run(policy, [[Load(8)], [], [], [], [], [], []])
    # Active at t=5; idle from then on: 1 replica (not 0) while idle < 20 s, 0 at t=25.
    assert replicas(decisions) == [2, 2, 1, 1, 0, 0, 0]
    assert decisions[4].reason is Reason.SCALED_TO_ZERO and "no load for 20s" in decisions[4].message


def test_load_at_zero_scales_back_up() -> None:
    policy = Policy(min_replicas=0, max_replicas=4, target_in_flight=4, stable_window_s=10.0, scale_to_zero_after_s=5.0)
    decisions = run(policy, [[], [], [Load(5)]])
    assert replicas(decisions) == [0, 0, 2]


def test_wake_scales_to_one_and_restarts_the_idle_timer() -> None:
    policy = Policy(
        min_replicas=0, max_replicas=4, target_in_flight=4, stable_window_s=10.0, scale_to_zero_after_s=10.0
    )
    wakes = [None, None, "t1", "t1", "t1", "t1", "t2"]
    decisions = run(policy, [[]] * 7, wakes=wakes)
    # Zero at t=10; the new value at t=15 wakes it (1 = max(min, 1)) until 10 s later; "t1" again is no wake.
    assert replicas(decisions) == [1, 0, 1, 1, 0, 0, 1]
    assert decisions[2].reason is Reason.WAKE and decisions[2].state.wake == "t1"
    assert decisions[6].reason is Reason.WAKE


def test_a_wake_value_acted_on_before_a_restart_does_not_wake_again() -> None:
    policy = Policy(min_replicas=0, max_replicas=4, target_in_flight=4, stable_window_s=10.0, scale_to_zero_after_s=5.0)
    state = initial_state(0, 100.0, "t1")
    decision = decide(policy, [], 105.0, "t1", state)
    assert decision.replicas == 0 and decision.reason is Reason.SCALED_TO_ZERO


def test_a_restart_does_not_wake_a_service_at_zero() -> None:
    policy = Policy(
        min_replicas=0, max_replicas=4, target_in_flight=4, stable_window_s=10.0, scale_to_zero_after_s=60.0
    )
    decision = decide(policy, [], 105.0, None, initial_state(0, 100.0, None))
    assert decision.replicas == 0 and "since the autoscaler started" in decision.message
    assert decide(policy, [Load(1)], 110.0, None, decision.state).replicas == 1


def test_after_a_restart_nothing_scales_down_before_a_window() -> None:
    state = initial_state(6, 100.0, None)  # the operator restarted with 6 replicas in force
    decision = decide(POLICY, [Load(1)], 110.0, None, state)
    assert decision.replicas == 6 and decision.reason is Reason.STABILIZING
    assert decide(POLICY, [Load(1)], 121.0, None, decision.state).replicas == 1


def test_new_bounds_apply_at_once() -> None:
    state = initial_state(8, 0.0, None)
    smaller = Policy(min_replicas=1, max_replicas=3, target_in_flight=4, stable_window_s=60.0)
    decision = decide(smaller, [Load(40)], 5.0, None, state)
    assert decision.replicas == 3 and decision.reason is Reason.BOUNDS


def test_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        Policy(min_replicas=3, max_replicas=2, target_in_flight=1)
    with pytest.raises(ValueError):
        Policy(min_replicas=0, max_replicas=2, target_in_flight=0)


# --- what the operator writes and derives --------------------------------------------------------------------

AT = datetime(2026, 5, 1, 12, tzinfo=UTC)


def test_status_records_a_scale_once_and_posts_an_event() -> None:
    (up,) = run(POLICY, [[Load(9)]])
    update = autoscale_status({"desiredReplicas": 1}, up, AT)
    assert update is not None
    assert update.patch["desiredReplicas"] == 3
    assert update.patch["autoscaling"]["lastScaleTime"] == "2026-05-01T12:00:00Z"
    assert update.patch["autoscaling"]["reason"] == "ScaleUp"
    assert [(e.reason, e.message.split(":")[0]) for e in update.events] == [("ScaledUp", "replicas 1 -> 3")]
    # The same decision again (another load figure in its message) writes nothing.
    assert autoscale_status({**update.patch}, up, AT) is None


def test_the_first_steady_decision_is_recorded_without_a_scale_time() -> None:
    (steady,) = run(POLICY, [[Load(1)]])
    update = autoscale_status({}, steady, AT)
    assert update is not None and update.events == []
    assert update.patch == {
        "desiredReplicas": 1,
        "autoscaling": {"reason": "Steady", "message": steady.message, "wake": None, "lastScaleTime": None},
    }


def test_the_reconcile_keeps_the_autoscalers_replicas_within_the_bounds() -> None:
    spec = InferenceServiceSpec.model_validate(
        {"model": {"checkpoint": {"claimName": "m"}}, "replicas": {"min": 0, "max": 4}}
    )
    assert desired_replicas(spec, stopped=False) == 1  # before any decision (and always without a bus)
    assert desired_replicas(spec, stopped=False, autoscaled=3) == 3
    assert desired_replicas(spec, stopped=False, autoscaled=0) == 0
    assert desired_replicas(spec, stopped=False, autoscaled=9) == 4  # max lowered since the decision
    assert desired_replicas(spec, stopped=True, autoscaled=3) == 0
    spec_min2 = spec.model_copy(update={"replicas": spec.replicas.model_copy(update={"min": 2})})
    assert desired_replicas(spec_min2, stopped=False, autoscaled=0) == 2


def test_replica_spec_defaults_and_bounds() -> None:
    spec = InferenceServiceSpec.model_validate({"model": {"checkpoint": {"claimName": "m"}}})
    assert (spec.replicas.stable_window_seconds, spec.replicas.scale_to_zero_after_seconds) == (60, 300)
    with pytest.raises(ValidationError):
        InferenceServiceSpec.model_validate(
            {"model": {"checkpoint": {"claimName": "m"}}, "replicas": {"scaleToZeroAfterSeconds": 1}}
        )


# --- the load on the bus -------------------------------------------------------------------------------------


def server_load(**changes: object) -> ServerLoad:
    fields: dict[str, object] = {"namespace": "team.a", "service": "chat", "pod": "chat-7d9f-x2", "in_flight": 3,
                                 "queued": 2, "tokens_per_second": 812.5, "requests_per_second": 4.0,
                                 "measured_at_unix_s": 1.7e9}  # fmt: skip
    return ServerLoad.model_validate(fields | changes)


def test_load_round_trip_and_key() -> None:
    load = server_load()
    assert load.key == "team_a.chat.chat-7d9f-x2" == load_key("team.a", "chat", "chat-7d9f-x2")
    assert decode_load(encode_load(load)) == load and load.demand == 5
    document = json.loads(encode_load(load)) | {"added_later": True}
    assert decode_load(json.dumps(document).encode()) == load


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", BadMessageReason.TRUNCATED),
        (b"\xff\x00", BadMessageReason.NOT_JSON),
        (b"[1]", BadMessageReason.WRONG_SCHEMA_VERSION),
        (b'{"schema_version": 2}', BadMessageReason.WRONG_SCHEMA_VERSION),
        (json.dumps(server_load().model_dump() | {"in_flight": -1}).encode(), BadMessageReason.INVALID),
        (json.dumps(server_load().model_dump() | {"pod": "a b"}).encode(), BadMessageReason.INVALID),
        (json.dumps(server_load().model_dump() | {"tokens_per_second": "NaN"}).encode(), BadMessageReason.INVALID),
        (json.dumps(server_load().model_dump(exclude={"measured_at_unix_s"})).encode(), BadMessageReason.INVALID),
    ],
)
def test_bad_loads_raise_only_bad_message(data: bytes, reason: BadMessageReason) -> None:
    with pytest.raises(BadMessage) as caught:
        decode_load(data)
    assert caught.value.reason is reason
