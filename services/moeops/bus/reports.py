"""The rebalancer's report on one job: the plan in force and the measured utilization (pure schema).

Plans change rarely; utilization changes every step. The rebalancer therefore writes a report per job every few
seconds to its own KV bucket (REPORTS_BUCKET, key `<namespace>.<job>`, history 1, entries expire), and the operator
copies it into the MoETrainingJob's `.status.rebalance`. A report whose job has stopped simply ages out.

Utilization here is measured, not predicted: over the ranks' smoothed times, Σ compute seconds / Σ step seconds —
the share of wall time the ranks spend computing rather than waiting for each other (1.0: perfectly balanced).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Final

from pydantic import Field

from .messages import BusMessage, FiniteFloat, NonNegativeInt, decode_stored
from .subjects import token

REPORTS_BUCKET: Final = "moeops-reports"
REPORT_MAX_AGE_S: Final = 3600.0
"""A report not refreshed for an hour is dropped: its job has stopped or its rebalancer is gone."""

Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


def report_key(namespace: str, job: str) -> str:
    return f"{token(namespace)}.{token(job)}"


class RebalanceReport(BusMessage):
    """The rebalancer's view of one job at `measured_at_unix_s`."""

    plan_epoch: NonNegativeInt | None = None
    """The newest plan's epoch; None before the first plan."""
    apply_at_step: NonNegativeInt | None = None
    predicted_gain: FiniteFloat | None = None
    utilization: Fraction
    world_size: int = Field(ge=1)
    ranks_reporting: NonNegativeInt
    last_step: NonNegativeInt
    measured_at_unix_s: FiniteFloat
    refused_epoch: NonNegativeInt | None = None
    """The newest plan rank 0 refused a part of (plan_acks.py); None when it refused none."""
    refusal: str | None = None
    """Why, in the trainer's words."""

    @property
    def key(self) -> str:
        return report_key(self.namespace, self.job)


def measured_utilization(compute_seconds: Sequence[float], step_seconds: Sequence[float]) -> float:
    """Σ compute / Σ step over the ranks, clipped to [0, 1] (a rank's smoothed compute may exceed its step)."""
    total = math.fsum(step_seconds)
    if total <= 0:
        return 0.0
    return min(1.0, max(0.0, math.fsum(compute_seconds) / total))


def decode_report(data: bytes) -> RebalanceReport:
    """A stored report, or BadMessage (the only exception) for bytes that are not one."""
    return decode_stored(RebalanceReport, data)
