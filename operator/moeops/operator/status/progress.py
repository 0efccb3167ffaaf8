"""MoETrainingJob `.status.progress` from the progress its rank 0 puts on the bus (`moeops.bus.progress`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from moeops.api.v1alpha1.trainingjob_status import CheckpointStatus, Progress
from moeops.bus.progress import JobProgress
from moeops.checkpoint.layout import step_dir_name

LOSS_DIGITS = 4
TOKENS_PER_SECOND_DIGITS = 1
"""Figures are rounded so that the status is patched when they change visibly, not on every jitter."""
CLOCK_SKEW_S = 30.0
"""How far a worker's clock may be behind the API server's before its reports look older than its job."""


def percent_done(step: int, total_steps: int) -> int:
    """step / total in whole percent, rounded down: 100 only once the last step is done."""
    if total_steps <= 0:
        return 0
    return max(0, min(100, step * 100 // total_steps))


def progress_status(progress: JobProgress, *, job_created_unix_s: float | None = None) -> dict[str, Any] | None:
    """`.status.progress` from rank 0's latest report; None for a report older than the job (one a deleted job of
    the same name left in the bucket), give or take CLOCK_SKEW_S. A loss that is not finite (training diverged)
    is left out: the status schema holds numbers only."""
    if job_created_unix_s is not None and progress.measured_at_unix_s < job_created_unix_s - CLOCK_SKEW_S:
        return None
    loss = round(progress.loss, LOSS_DIGITS) if math.isfinite(progress.loss) else None
    rate, eta = progress.tokens_per_second, progress.eta_seconds
    return Progress(
        step=progress.step,
        total_steps=progress.total_steps,
        percent=percent_done(progress.step, progress.total_steps),
        loss=loss,
        tokens_per_second=None if rate is None else round(rate, TOKENS_PER_SECOND_DIGITS),
        eta_seconds=None if eta is None else math.ceil(eta),
    ).to_wire()


def checkpoint_status(progress: JobProgress, storage: Mapping[str, Any]) -> dict[str, Any] | None:
    """`.status.checkpoint` from rank 0's newest complete checkpoint (None before the first): its step, and where
    it is (`pvc://<claim>/<path>/step-XXXXXXXX`, or `file://` on the pods' own disk) — what an InferenceService
    with a trainingJobRef waits for."""
    if progress.checkpoint_step is None:
        return None
    folder = step_dir_name(progress.checkpoint_step)
    claim, path = storage.get("claimName"), str(storage.get("path") or "/").rstrip("/")
    location = f"pvc://{claim}{path}/{folder}" if claim else f"file://{path}/{folder}"
    return CheckpointStatus(last_step=progress.checkpoint_step, location=location).to_wire()
