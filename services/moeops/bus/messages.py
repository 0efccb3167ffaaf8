"""The messages on the bus: versioned pydantic schemas, their encoding, and one decoder that never crashes.

Versioning: every message carries `schema_version`. Adding an optional field keeps the version (readers ignore
fields they don't know); removing, renaming or changing the meaning of a field bumps it, and a reader rejects a
version it does not know with `BadMessage(WRONG_SCHEMA_VERSION)` instead of misreading it.

Floats that may legitimately be NaN or infinite (a diverging loss is worth reporting) travel as the JSON strings
"NaN", "Infinity" and "-Infinity", which every JSON parser accepts; bare NaN is not JSON.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Annotated, Final, Literal, Protocol, Self

import pydantic_core
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .subjects import (
    SubjectKind,
    metrics_msg_id,
    metrics_subject,
    parse,
    plan_key,
    plans_subject,
    token,
)

SCHEMA_VERSION: Final = 1

SHARES_SUM_TOLERANCE = 1e-6

NonNegativeInt = Annotated[int, Field(ge=0)]
Seconds = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class StepRecord(Protocol):
    """What the bus needs from a step's metrics; the trainer's `StepMetrics` has these attributes.

    A protocol rather than an import, so that the bus (and the rebalancer on top of it) never depends on the
    trainer and its torch stack."""

    @property
    def step(self) -> int: ...
    @property
    def rank(self) -> int: ...
    @property
    def loss(self) -> float: ...
    @property
    def aux_loss(self) -> float: ...
    @property
    def tokens(self) -> int: ...
    @property
    def step_seconds(self) -> float: ...
    @property
    def compute_seconds(self) -> float: ...
    @property
    def comm_seconds(self) -> float: ...
    @property
    def lr(self) -> float: ...
    @property
    def tokens_per_expert(self) -> list[list[int]]: ...
    @property
    def max_memory_bytes(self) -> int: ...


class BusMessage(BaseModel):
    """Fields every message shares: the schema version and the job it belongs to."""

    model_config = ConfigDict(frozen=True, extra="ignore", ser_json_inf_nan="strings")

    schema_version: Literal[1] = SCHEMA_VERSION
    namespace: str = Field(min_length=1, max_length=253)
    job: str = Field(min_length=1, max_length=253)

    @field_validator("namespace", "job")
    @classmethod
    def _usable_as_subject_token(cls, name: str) -> str:
        token(name)  # raises InvalidToken (a ValueError, so a ValidationError to the caller)
        return name


class WorkerMetrics(BusMessage):
    """One worker rank's measurements for one training step (the trainer's StepMetrics, addressed)."""

    world_size: int = Field(ge=1)
    rank: NonNegativeInt
    step: NonNegativeInt
    loss: float
    """Cross-entropy over all ranks' answer tokens; NaN or infinite when training diverges."""
    aux_loss: float
    tokens: NonNegativeInt
    """Tokens this rank processed this step."""
    step_seconds: Seconds
    compute_seconds: Seconds
    comm_seconds: Seconds
    """Time blocked in collectives."""
    lr: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    tokens_per_expert: list[list[NonNegativeInt]] = Field(default_factory=list)
    """Per MoE layer (all layers, every pipeline stage), assignments per expert summed over the data-parallel
    ranks this step: the same on every rank (the rebalancer's load input)."""
    max_memory_bytes: NonNegativeInt = 0
    measured_at_unix_s: FiniteFloat
    """Wall-clock time the worker handed the record over (Unix seconds); the rebalancer measures lag from it."""

    @model_validator(mode="after")
    def _rank_in_world(self) -> Self:
        if self.rank >= self.world_size:
            raise ValueError(f"rank {self.rank} is outside a world of {self.world_size}")
        return self

    @classmethod
    def from_step(
        cls, record: StepRecord, *, namespace: str, job: str, world_size: int, measured_at_unix_s: float
    ) -> WorkerMetrics:
        return cls(
            namespace=namespace,
            job=job,
            world_size=world_size,
            rank=record.rank,
            step=record.step,
            loss=record.loss,
            aux_loss=record.aux_loss,
            tokens=record.tokens,
            step_seconds=record.step_seconds,
            compute_seconds=record.compute_seconds,
            comm_seconds=record.comm_seconds,
            lr=record.lr,
            tokens_per_expert=record.tokens_per_expert,
            max_memory_bytes=record.max_memory_bytes,
            measured_at_unix_s=measured_at_unix_s,
        )

    @property
    def subject(self) -> str:
        return metrics_subject(self.namespace, self.job, self.rank)

    @property
    def msg_id(self) -> str:
        return metrics_msg_id(self.namespace, self.job, self.rank, self.step)


def _ranks_distinct(ranks: list[int]) -> list[int]:
    if len(set(ranks)) != len(ranks):
        raise ValueError(f"an expert is placed twice on one EP rank: {ranks}")
    return ranks


ExpertReplicas = Annotated[list[NonNegativeInt], Field(min_length=1), AfterValidator(_ranks_distinct)]
"""The EP ranks holding one expert: one rank, or several when a hot expert is replicated."""


class RebalancePlan(BusMessage):
    """A new work distribution for a job; every rank switches to it at `apply_at_step`."""

    epoch: NonNegativeInt
    """Increases with every plan of a job: a rank ignores a plan whose epoch is not newer than its own."""
    apply_at_step: NonNegativeInt
    data_shares: list[Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]] = Field(min_length=1)
    """Per data-parallel rank, its fraction of the global batch (they sum to 1)."""
    stage_layers: list[tuple[NonNegativeInt, NonNegativeInt]] = Field(min_length=1)
    """Per pipeline stage, the layers [start, stop) it runs; stages are contiguous from layer 0."""
    expert_placement: list[list[ExpertReplicas]] = Field(default_factory=list)
    """Per MoE layer, per expert, the EP ranks that hold it."""
    predicted_gain: FiniteFloat
    """The planner's predicted relative step-time reduction (0.1 = 10% faster)."""
    created_at_unix_s: FiniteFloat

    @field_validator("data_shares")
    @classmethod
    def _shares_sum_to_one(cls, shares: list[float]) -> list[float]:
        total = math.fsum(shares)
        if abs(total - 1.0) > SHARES_SUM_TOLERANCE:
            raise ValueError(f"data shares sum to {total}, not 1")
        return shares

    @field_validator("stage_layers")
    @classmethod
    def _stages_tile_the_layers(cls, stages: list[tuple[int, int]]) -> list[tuple[int, int]]:
        expected_start = 0
        for index, (start, stop) in enumerate(stages):
            if start != expected_start or stop <= start:
                raise ValueError(
                    f"stage {index} runs layers [{start}, {stop}); expected a non-empty range starting at "
                    f"{expected_start} (stages are contiguous from layer 0)"
                )
            expected_start = stop
        return stages

    @property
    def subject(self) -> str:
        return plans_subject(self.namespace, self.job)

    @property
    def key(self) -> str:
        return plan_key(self.namespace, self.job)


Message = WorkerMetrics | RebalancePlan

_SCHEMAS: dict[SubjectKind, type[WorkerMetrics] | type[RebalancePlan]] = {
    SubjectKind.METRICS: WorkerMetrics,
    SubjectKind.PLAN: RebalancePlan,
}


class BadMessageReason(Enum):
    UNKNOWN_SUBJECT = "unknown_subject"
    NOT_JSON = "not_json"
    TRUNCATED = "truncated"
    WRONG_SCHEMA_VERSION = "wrong_schema_version"
    INVALID = "invalid"
    SUBJECT_MISMATCH = "subject_mismatch"


class BadMessage(ValueError):
    """A message a reader cannot use; `reason` is what a consumer counts it under."""

    def __init__(self, reason: BadMessageReason, detail: str, subject: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" + (f" (subject {subject})" if subject else ""))
        self.reason = reason
        self.detail = detail
        self.subject = subject


def encode(message: Message) -> bytes:
    return message.model_dump_json().encode()


def decode(subject: str, data: bytes) -> Message:
    """The typed message on `subject`, or BadMessage: the only exception it raises, whatever the bytes."""
    parsed = parse(subject)
    if parsed is None:
        raise BadMessage(BadMessageReason.UNKNOWN_SUBJECT, "not a moeops metrics or plans subject", subject)
    try:
        document = pydantic_core.from_json(data)
    except ValueError as exc:
        # The parser names an early end of input "EOF while parsing ...": a cut-off message, not garbage.
        reason = BadMessageReason.TRUNCATED if str(exc).startswith("EOF") else BadMessageReason.NOT_JSON
        raise BadMessage(reason, str(exc), subject) from None
    if not isinstance(document, dict):
        raise BadMessage(BadMessageReason.INVALID, f"a JSON object expected, got {type(document).__name__}", subject)
    version = document.get("schema_version")
    # `type(...) is int`: JSON true would otherwise pass as 1.
    if type(version) is not int or version != SCHEMA_VERSION:
        raise BadMessage(
            BadMessageReason.WRONG_SCHEMA_VERSION,
            f"schema_version {version!r}; this reader understands {SCHEMA_VERSION}",
            subject,
        )
    try:
        message = _SCHEMAS[parsed.kind].model_validate(document)
    except ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(map(str, error['loc'])) or '<message>'}: {error['msg']}"
            for error in exc.errors(include_url=False)[:3]
        )
        raise BadMessage(BadMessageReason.INVALID, errors, subject) from None
    rank = message.rank if isinstance(message, WorkerMetrics) else None
    if (token(message.namespace), token(message.job), rank) != (parsed.namespace_token, parsed.job_token, parsed.rank):
        raise BadMessage(
            BadMessageReason.SUBJECT_MISMATCH,
            f"the body is for {message.namespace}/{message.job}" + (f" rank {rank}" if rank is not None else ""),
            subject,
        )
    return message
