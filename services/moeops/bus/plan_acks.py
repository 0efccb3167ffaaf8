"""Rank 0's acknowledgement of a rebalance plan: what the trainer did with it, and what it runs now (pure schema).

The trainer judges each part of a plan on its own (trainer/plans.py) and may refuse a part (with a reason), so the
plan the rebalancer published is not necessarily what runs. Rank 0 writes an acknowledgement when it has received
a plan it applies nothing of (refused), and when a plan is applied (applied, or partly: a part was refused). The
rebalancer plans from what the acknowledgement says runs (rebalancer/jobs.py), never from a refused part.

Where: the KV bucket PLAN_ACKS_BUCKET, key `<namespace>.<job>`, history 1 (subject `$KV.moeops-plan-acks.<key>`).
Only the latest acknowledgement is kept, so each carries the whole running state (`running`: per part, the epoch
of the plan whose setting runs) and a missed acknowledgement loses nothing.
"""

from __future__ import annotations

from enum import Enum
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

from .messages import BusMessage, FiniteFloat, NonNegativeInt, decode_stored
from .subjects import plan_key

PLAN_ACKS_BUCKET: Final = "moeops-plan-acks"
PLAN_ACK_TTL_S: Final = 7 * 24 * 3600.0
"""An acknowledgement outlives any pause of its job's rebalancer; a job gone for a week drops out."""
STARTED: Final = -1
"""`RunningParts`' epoch for a part that runs as the job started (no plan's setting applied yet)."""


class AckOutcome(Enum):
    APPLIED = "applied"
    """Every part the plan changes is applied."""
    PARTLY = "partly"
    """Some parts are applied, others refused (`PlanAck.refused` says why)."""
    REFUSED = "refused"
    """Nothing of the plan is applied."""


class RunningParts(BaseModel):
    """Per part of a plan, the epoch of the plan whose setting the trainer runs (STARTED: as it started)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    data: int = Field(default=STARTED, ge=STARTED)
    experts: int = Field(default=STARTED, ge=STARTED)
    stages: int = Field(default=STARTED, ge=STARTED)


class PlanAck(BusMessage):
    """What rank 0 did with plan `epoch`, and what the trainer runs after it."""

    epoch: NonNegativeInt
    outcome: AckOutcome
    refused: list[str] = Field(default_factory=list)
    """Why parts were refused (the trainer's words, one reason a part)."""
    step: NonNegativeInt
    """The step the plan was applied before (refused: the next step when rank 0 read it)."""
    running: RunningParts = Field(default_factory=RunningParts)
    acked_at_unix_s: FiniteFloat

    @property
    def key(self) -> str:
        return plan_ack_key(self.namespace, self.job)


def plan_ack_key(namespace: str, job: str) -> str:
    """The key of a job's latest acknowledgement in PLAN_ACKS_BUCKET (the plan's own key)."""
    return plan_key(namespace, job)


def encode_ack(ack: PlanAck) -> bytes:
    return ack.model_dump_json().encode()


def decode_ack(data: bytes) -> PlanAck:
    """A stored acknowledgement, or BadMessage (the only exception) for bytes that are not one."""
    return decode_stored(PlanAck, data)
