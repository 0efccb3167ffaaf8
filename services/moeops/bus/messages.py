"""The messages on the bus: versioned pydantic schemas, their encoding, and one decoder that never crashes.

Versioning: every message carries `schema_version`. Adding an optional field keeps the version (readers ignore
fields they don't know); removing, renaming or changing the meaning of a field bumps it, and a reader rejects a
version it does not know with `BadMessage(WRONG_SCHEMA_VERSION)` instead of misreading it.

Floats that may legitimately be NaN or infinite (a diverging loss is worth reporting) travel as the JSON strings
"NaN", "Infinity" and "-Infinity", which every JSON parser accepts; bare NaN is not JSON.
"""

from __future__ import annotations

import functools
import math
from enum import Enum
from typing import Annotated, Any, Final, Literal, Self, TypeVar

import pydantic_core
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import metrics_wire
from .records import StepRecord
from .subjects import (
    ParsedSubject,
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


COUNTS_RANK = 0
"""The rank whose metrics carry the step's (all-reduced, identical) expert counts."""


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
    ranks this step (the rebalancer's load input). The all-reduce makes them the same on every rank, so only
    rank 0 sends them (`COUNTS_RANK`): the others' messages carry [] and are cheaper for the rebalancer to
    read."""
    max_memory_bytes: NonNegativeInt = 0
    measured_at_unix_s: FiniteFloat
    """Wall-clock time the worker handed the record over (Unix seconds); the rebalancer measures lag from it."""
    layer_compute_seconds: list[Seconds] = Field(default_factory=list)
    """Per layer of the model, the compute seconds this rank spent in it this step (0 for the layers other
    pipeline stages run); [] when not measured. The rebalancer splits pipeline stages by these measured costs
    instead of spreading each stage's time evenly over its layers. Additive (schema 1): the compact record has no
    room for it, so a message that carries it is sent as JSON (`encode_metrics`)."""

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
            tokens_per_expert=record.tokens_per_expert if record.rank == COUNTS_RANK else [],
            max_memory_bytes=record.max_memory_bytes,
            measured_at_unix_s=measured_at_unix_s,
            # Not in the StepRecord protocol: a trainer that does not measure per-layer times need not have it.
            layer_compute_seconds=list(getattr(record, "layer_compute_seconds", ())),
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
    """The canonical JSON of any message (what plans, reports and humans use)."""
    return message.model_dump_json().encode()


def encode_metrics(message: WorkerMetrics) -> bytes:
    """How workers publish their metrics: the compact record of `metrics_wire` (`decode` takes JSON as well), or
    JSON for a message with per-layer times (the record does not hold them; one rank per stage sends them)."""
    if message.layer_compute_seconds:
        return encode(message)
    return metrics_wire.pack(message.__dict__)


parse_cached: Final = functools.lru_cache(maxsize=4096)(parse)  # pure; a consumer sees a few subjects over again


def decode(subject: str, data: bytes) -> Message:
    """The typed message on `subject`, or BadMessage: the only exception it raises, whatever the bytes.

    Metrics records (`metrics_wire`) take a fast path (`_fast_metrics`); everything else, and every record it does
    not accept, goes through `decode_reference`'s steps, which define what is valid and why not."""
    parsed = parse_cached(subject)
    if parsed is None:
        raise BadMessage(BadMessageReason.UNKNOWN_SUBJECT, "not a moeops metrics or plans subject", subject)
    if parsed.kind is SubjectKind.METRICS and metrics_wire.is_record(data):
        fields = _record_fields(data, subject)
        fast = _fast_metrics(parsed, fields)
        return fast if fast is not None else _checked(parsed, subject, _validated(WorkerMetrics, fields, subject))
    return _decode(parsed, subject, data)


def decode_reference(subject: str, data: bytes) -> Message:
    """`decode` without the fast path: the definition of a valid message (the fast path is tested against it)."""
    parsed = parse(subject)
    if parsed is None:
        raise BadMessage(BadMessageReason.UNKNOWN_SUBJECT, "not a moeops metrics or plans subject", subject)
    if parsed.kind is SubjectKind.METRICS and metrics_wire.is_record(data):
        return _checked(parsed, subject, _validated(WorkerMetrics, _record_fields(data, subject), subject))
    return _decode(parsed, subject, data)


Stored = TypeVar("Stored", bound=BaseModel)  # any versioned model: bus messages, moeops.carbon.accounting.messages


def decode_stored(model: type[Stored], data: bytes) -> Stored:
    """A value a KV bucket stores under a key (no subject to check it against: reports, job descriptions), or
    BadMessage, the only exception it raises."""
    document = _json_document(data)
    if not isinstance(document, dict):
        raise BadMessage(BadMessageReason.WRONG_SCHEMA_VERSION, f"not a versioned object: {type(document).__name__}")
    return _validated(model, document)


def _json_document(data: bytes, subject: str = "") -> Any:
    try:
        return pydantic_core.from_json(data)
    except ValueError as exc:
        # The parser names an early end of input "EOF while parsing ...": a cut-off message, not garbage.
        reason = BadMessageReason.TRUNCATED if str(exc).startswith("EOF") else BadMessageReason.NOT_JSON
        raise BadMessage(reason, str(exc), subject) from None


def _record_fields(data: bytes, subject: str) -> dict[str, Any]:
    try:
        return metrics_wire.read_fields(data)
    except metrics_wire.WireError as exc:
        if exc.version is not None:
            reason = BadMessageReason.WRONG_SCHEMA_VERSION
        else:
            reason = BadMessageReason.TRUNCATED if exc.truncated else BadMessageReason.INVALID
        raise BadMessage(reason, str(exc), subject) from None


def _validated(model: type[Stored], document: dict[str, Any], subject: str = "") -> Stored:
    version = document.get("schema_version")
    # `type(...) is int`: JSON true would otherwise pass as 1.
    if type(version) is not int or version != SCHEMA_VERSION:
        raise BadMessage(
            BadMessageReason.WRONG_SCHEMA_VERSION,
            f"schema_version {version!r}; this reader understands {SCHEMA_VERSION}",
            subject,
        )
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(map(str, error['loc'])) or '<message>'}: {error['msg']}"
            for error in exc.errors(include_url=False)[:3]
        )
        raise BadMessage(BadMessageReason.INVALID, errors, subject) from None


def _decode(parsed: ParsedSubject, subject: str, data: bytes) -> Message:
    document = _json_document(data, subject)
    if not isinstance(document, dict):
        raise BadMessage(BadMessageReason.INVALID, f"a JSON object expected, got {type(document).__name__}", subject)
    return _checked(parsed, subject, _validated(_SCHEMAS[parsed.kind], document, subject))


def _checked(parsed: ParsedSubject, subject: str, message: Message) -> Message:
    """`message` if it is for the job (and rank) its subject names, else BadMessage(SUBJECT_MISMATCH)."""
    rank = message.rank if isinstance(message, WorkerMetrics) else None
    if (token(message.namespace), token(message.job), rank) != (parsed.namespace_token, parsed.job_token, parsed.rank):
        raise BadMessage(
            BadMessageReason.SUBJECT_MISMATCH,
            f"the body is for {message.namespace}/{message.job}" + (f" rank {rank}" if rank is not None else ""),
            subject,
        )
    return message


# The fast path for metrics records: pydantic's validation of a WorkerMetrics costs more than the rest of the
# ingest together. The record's types are fixed by its layout (unsigned ints, doubles, UTF-8 names), so what is left
# to check is the model's ranges, done here by hand; whatever these checks refuse goes to the model, so results and
# BadMessage reasons are the reference's by construction (tests/unit/test_bus_metrics_wire.py checks it).

_FIELDS_SET: Final = frozenset(WorkerMetrics.model_fields)
_NAME_MAX: Final = 253
_INF: Final = math.inf


def names_fit(parsed: ParsedSubject, namespace: str, job: str) -> bool:
    """The model accepts these names, and they are the ones `parsed` (a subject) names."""
    # Subject tokens match the token pattern already: comparing with `name` dots-to-`_` is `token(name) == ...`.
    return (
        0 < len(namespace) <= _NAME_MAX
        and 0 < len(job) <= _NAME_MAX
        and namespace.replace(".", "_") == parsed.namespace_token
        and job.replace(".", "_") == parsed.job_token
    )


def _fast_metrics(parsed: ParsedSubject, fields: dict[str, Any]) -> WorkerMetrics | None:
    """The message if `fields` (a record's) pass the model's checks, else None (the caller then asks the model)."""
    namespace, job, rank = fields["namespace"], fields["job"], fields["rank"]
    if not (
        fields["schema_version"] == SCHEMA_VERSION
        and rank < fields["world_size"]  # so world_size >= 1 too: rank is unsigned
        and rank == parsed.rank
        and names_fit(parsed, namespace, job)
        # `0 <= x < inf` is false for NaN and the infinities: the model's ge=0 and allow_inf_nan=False.
        and 0.0 <= fields["step_seconds"] < _INF
        and 0.0 <= fields["compute_seconds"] < _INF
        and 0.0 <= fields["comm_seconds"] < _INF
        and 0.0 <= fields["lr"] < _INF
        and -_INF < fields["measured_at_unix_s"] < _INF
    ):
        return None
    # What `model_construct` does, without its per-field loop: every value is already validated.
    message = WorkerMetrics.__new__(WorkerMetrics)
    object.__setattr__(message, "__dict__", fields)  # read_fields' order is the model's (a test checks it)
    object.__setattr__(message, "__pydantic_fields_set__", set(_FIELDS_SET))
    object.__setattr__(message, "__pydantic_extra__", None)
    object.__setattr__(message, "__pydantic_private__", None)
    return message
