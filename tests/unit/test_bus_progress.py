"""A job's progress: the message rank 0 puts (schema, decoding that never crashes), the meter that measures its pace,
and the `.status.progress` the operator makes of it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from moeops.bus.messages import BadMessage, BadMessageReason
from moeops.bus.progress import JobProgress, ProgressMeter, decode_progress, encode_progress, progress_key
from moeops.checkpoint.layout import step_dir
from moeops.operator.status.progress import CLOCK_SKEW_S, checkpoint_status, percent_done, progress_status

AT = 1_800_000_000.0
PROGRESS = JobProgress(namespace="ml", job="moe.big", step=57, total_steps=200, loss=2.345678,
                       tokens_per_second=12345.678, eta_seconds=42.2, measured_at_unix_s=AT)  # fmt: skip

STORED = b'{"schema_version": 1, "namespace": "a", "job": "b", "loss": 1, "measured_at_unix_s": 1, %s}'


def test_progress_round_trips_and_is_keyed_by_job() -> None:
    assert decode_progress(encode_progress(PROGRESS)) == PROGRESS
    assert PROGRESS.key == progress_key("ml", "moe.big") == "ml.moe_big"
    assert not PROGRESS.finished and PROGRESS.model_copy(update={"step": 200}).finished


def test_a_diverged_loss_travels_as_json() -> None:
    diverged = PROGRESS.model_copy(update={"loss": math.nan})
    assert b'"NaN"' in encode_progress(diverged)
    assert math.isnan(decode_progress(encode_progress(diverged)).loss)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not json", BadMessageReason.NOT_JSON),
        (b'{"schema_version": 1, "namespace": "a"', BadMessageReason.TRUNCATED),
        (b"[1]", BadMessageReason.WRONG_SCHEMA_VERSION),
        (b'{"schema_version": 2, "namespace": "a", "job": "b"}', BadMessageReason.WRONG_SCHEMA_VERSION),
        (STORED % b'"step": 3, "total_steps": 2', BadMessageReason.INVALID),  # beyond the job's steps
        (STORED % b'"step": 1, "total_steps": 2, "tokens_per_second": -1', BadMessageReason.INVALID),
    ],
)
def test_bad_stored_bytes_are_a_bad_message(data: bytes, reason: BadMessageReason) -> None:
    with pytest.raises(BadMessage) as caught:
        decode_progress(data)
    assert caught.value.reason is reason


def test_a_name_that_cannot_be_a_key_is_refused() -> None:
    with pytest.raises(ValidationError):
        JobProgress(namespace="ml", job="a b", step=0, total_steps=1, loss=0.0, measured_at_unix_s=AT)
    with pytest.raises(ValueError, match="token"):
        ProgressMeter("ml", "a*b", total_steps=10, tokens_per_step=1)


def test_the_meter_measures_the_pace_over_wall_time_not_one_step() -> None:
    meter = ProgressMeter("ml", "j", total_steps=100, tokens_per_step=1000, window_s=30.0)
    assert meter.progress(AT) is None  # no step yet
    meter.observe(1, 5.0, step_seconds=0.5, at_s=10.0)
    first = meter.progress(AT)
    assert first is not None and first.step == 1 and first.loss == 5.0
    assert first.tokens_per_second == 2000.0 and first.eta_seconds == 99 * 0.5  # one sample: its own duration
    for step in range(2, 11):  # a step a second, checkpoint saves included, though each step trains 0.5 s
        meter.observe(step, 5.0 - step / 10, step_seconds=0.5, at_s=10.0 + (step - 1))
    tenth = meter.progress(AT + 9)
    assert tenth is not None and tenth.step == 10 and tenth.loss == pytest.approx(4.0)
    assert tenth.tokens_per_second == pytest.approx(1000.0) and tenth.eta_seconds == pytest.approx(90.0)
    assert tenth.measured_at_unix_s == AT + 9


def test_the_pace_follows_the_last_window_only() -> None:
    meter = ProgressMeter("ml", "j", total_steps=1000, tokens_per_step=100, window_s=10.0)
    for step in range(1, 21):  # 1 s a step for 20 s
        meter.observe(step, 1.0, step_seconds=1.0, at_s=float(step))
    for step in range(21, 61):  # then 4 steps a second
        meter.observe(step, 1.0, step_seconds=0.25, at_s=20.0 + (step - 20) * 0.25)
    assert meter.seconds_per_step() == pytest.approx(0.25)  # the slow start has left the window


def test_a_restart_from_a_checkpoint_starts_the_pace_over() -> None:
    meter = ProgressMeter("ml", "j", total_steps=100, tokens_per_step=100)
    meter.observe(40, 1.0, step_seconds=1.0, at_s=0.0)
    meter.observe(41, 1.0, step_seconds=1.0, at_s=1.0)
    meter.observe(31, 1.5, step_seconds=2.0, at_s=500.0)  # the new attempt resumes at the checkpoint of step 30
    progress = meter.progress(AT)
    assert progress is not None and progress.step == 31 and progress.eta_seconds == 69 * 2.0


def test_the_last_step_has_no_time_to_go() -> None:
    meter = ProgressMeter("ml", "j", total_steps=3, tokens_per_step=10)
    for step in (1, 2, 3):
        meter.observe(step, 0.5, step_seconds=1.0, at_s=float(step))
    done = meter.progress(AT)
    assert done is not None and done.finished and done.eta_seconds == 0.0


def test_percent_is_rounded_down_and_100_only_at_the_end() -> None:
    assert percent_done(0, 200) == 0
    assert percent_done(1, 200) == 0
    assert percent_done(57, 200) == 28
    assert percent_done(199, 200) == 99
    assert percent_done(200, 200) == 100
    assert percent_done(5, 0) == 0


def test_the_status_is_the_progress_rounded_in_camel_case() -> None:
    assert progress_status(PROGRESS) == {
        "step": 57,
        "totalSteps": 200,
        "percent": 28,
        "loss": 2.3457,
        "tokensPerSecond": 12345.7,
        "etaSeconds": 43,
    }
    unmeasured = PROGRESS.model_copy(update={"tokens_per_second": None, "eta_seconds": None})
    assert progress_status(unmeasured) == {"step": 57, "totalSteps": 200, "percent": 28, "loss": 2.3457}


def test_a_diverged_loss_is_left_out_of_the_status() -> None:
    status = progress_status(PROGRESS.model_copy(update={"loss": math.inf}))
    assert status is not None and "loss" not in status and status["step"] == 57


def test_a_report_older_than_the_job_is_not_its_progress() -> None:
    """A deleted job of the same name may have left its last report in the bucket (until the TTL drops it)."""
    assert progress_status(PROGRESS, job_created_unix_s=AT + CLOCK_SKEW_S + 1) is None
    assert progress_status(PROGRESS, job_created_unix_s=AT + CLOCK_SKEW_S - 1) is not None  # a worker clock behind
    assert progress_status(PROGRESS, job_created_unix_s=AT - 600) is not None


def test_the_newest_checkpoint_is_where_the_trainer_writes_it() -> None:
    """One naming for the trainer's folders and the operator's `.status.checkpoint` (moeops.checkpoint.layout)."""
    assert checkpoint_status(PROGRESS, {"claimName": "ckpt", "path": "/runs/a/"}) is None  # none written yet
    saved = PROGRESS.model_copy(update={"checkpoint_step": 50})
    assert checkpoint_status(saved, {"claimName": "ckpt", "path": "/runs/a/"}) == {
        "lastStep": 50,
        "location": f"pvc://ckpt/runs/a/{step_dir(Path(), 50).name}",
    }
    assert checkpoint_status(saved, {})["location"] == "file:///step-00000050"  # type: ignore[index]
