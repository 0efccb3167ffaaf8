"""A training job's progress as its rank 0 sees it: step, loss, throughput and time to go (pure schema and meter).

Transport: the KV bucket PROGRESS_BUCKET, key `<namespace>.<job>` (subject tokens: dots become `_`), history 1.
Rank 0 of every job rewrites its key every couple of seconds and once more after the last step
(`moeops.bus.progress_putter`); the operator copies the latest value into the MoETrainingJob's `.status.progress`
(`moeops.operator.handlers.progress`). Entries expire after PROGRESS_TTL_S, so a job that stopped drops out by
itself. Same rules as `messages.py`: versioned, readers ignore fields they don't know, `decode_progress` raises
nothing but BadMessage.

`ProgressMeter` turns rank 0's steps into the message: throughput is measured over a sliding window of wall time
(checkpoint saves and plan changes included, so the ETA holds), not from one step's duration.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Annotated, Final, Self

from pydantic import Field, model_validator

from .messages import BusMessage, FiniteFloat, NonNegativeInt, Seconds, decode_stored
from .subjects import token

PROGRESS_BUCKET: Final = "moeops-training-progress"
PROGRESS_TTL_S: Final = 300.0
"""An entry not rewritten for five minutes is gone: its job stopped (or its rank 0 lost the bus that long). Long
enough for the operator to read a finished job's last step, short enough that a dead job does not linger."""
RATE_WINDOW_S: Final = 30.0
"""The wall time the throughput is averaged over: long enough to smooth a checkpoint save, short enough to follow
a rebalance or a slower node."""

Rate = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


def progress_key(namespace: str, job: str) -> str:
    """The key of a job's progress; raises InvalidToken for a name that cannot be a subject token."""
    return f"{token(namespace)}.{token(job)}"


class JobProgress(BusMessage):
    """Rank 0's view of its job after `step` (of `total_steps`), at `measured_at_unix_s` (its wall clock)."""

    step: NonNegativeInt
    """The last completed optimizer step."""
    total_steps: int = Field(ge=1)
    """The steps the job runs (`training.steps`)."""
    loss: float
    """The step's cross-entropy over all ranks (what rank 0's progress bar shows); NaN or infinite when training
    diverges (sent as the strings "NaN", "Infinity")."""
    tokens_per_second: Rate | None = None
    """Tokens the whole job trains on per second (global batch × sequence length per step); None until measured."""
    eta_seconds: Seconds | None = None
    """Seconds to the last step at the measured pace; None until measured."""
    checkpoint_step: NonNegativeInt | None = None
    """The step of the newest complete checkpoint (what a resume or an InferenceService starts from); None before
    the first."""
    measured_at_unix_s: FiniteFloat

    @model_validator(mode="after")
    def _step_within_the_run(self) -> Self:
        if self.step > self.total_steps:
            raise ValueError(f"step {self.step} is beyond the job's {self.total_steps} steps")
        return self

    @property
    def key(self) -> str:
        return progress_key(self.namespace, self.job)

    @property
    def finished(self) -> bool:
        return self.step == self.total_steps


def encode_progress(progress: JobProgress) -> bytes:
    return progress.model_dump_json().encode()


def decode_progress(data: bytes) -> JobProgress:
    """A stored progress, or BadMessage (the only exception it raises) for bytes that are not one."""
    return decode_stored(JobProgress, data)


class ProgressMeter:
    """Rank 0's steps in, `JobProgress` out. Pure: the caller passes the times (a monotonic clock for the pace, the
    wall clock for `measured_at_unix_s`)."""

    def __init__(
        self, namespace: str, job: str, *, total_steps: int, tokens_per_step: int, window_s: float = RATE_WINDOW_S
    ) -> None:
        token(namespace)  # a name that can't be a key fails here, at start, not at every put
        token(job)
        if total_steps < 1 or tokens_per_step < 0 or window_s <= 0:
            raise ValueError("total_steps must be positive, tokens_per_step non-negative, window_s positive")
        self._namespace, self._job = namespace, job
        self._total, self._tokens_per_step, self._window_s = total_steps, tokens_per_step, window_s
        self._samples: deque[tuple[int, float]] = deque()
        """(step, monotonic seconds) of the steps within the window, oldest first."""
        self._loss = math.nan
        self._step_seconds = 0.0

    @property
    def step(self) -> int | None:
        """The newest step observed, or None before the first."""
        return self._samples[-1][0] if self._samples else None

    def observe(self, step: int, loss: float, step_seconds: float, at_s: float) -> None:
        """Step `step` ended at `at_s` (monotonic) with `loss` after `step_seconds` of training."""
        if self._samples and step <= self._samples[-1][0]:
            self._samples.clear()  # restarted from a checkpoint: the pace starts over
        self._samples.append((step, at_s))
        while len(self._samples) > 2 and at_s - self._samples[1][1] >= self._window_s:
            self._samples.popleft()  # keep one sample at or beyond the window's start
        self._loss, self._step_seconds = loss, step_seconds

    def seconds_per_step(self) -> float | None:
        """Over the window; from the newest step's own duration while there is a single sample."""
        if len(self._samples) >= 2:
            (first, started), (last, ended) = self._samples[0], self._samples[-1]
            if ended > started:
                return (ended - started) / (last - first)
        return self._step_seconds if self._step_seconds > 0 else None

    def progress(self, measured_at_unix_s: float, checkpoint_step: int | None = None) -> JobProgress | None:
        """The message for the newest step (and the newest complete checkpoint's), or None before the first."""
        step = self.step
        if step is None:
            return None
        pace = self.seconds_per_step()
        return JobProgress(
            namespace=self._namespace,
            job=self._job,
            step=min(step, self._total),
            total_steps=self._total,
            loss=self._loss,
            tokens_per_second=None if pace is None else self._tokens_per_step / pace,
            eta_seconds=None if pace is None else max(0, self._total - step) * pace,
            checkpoint_step=checkpoint_step,
            measured_at_unix_s=measured_at_unix_s,
        )
