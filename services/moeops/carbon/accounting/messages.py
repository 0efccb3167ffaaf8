"""The carbon accountant's messages: energy deltas on the wire, and what the aggregator keeps in its KV bucket.

They live in carbon, not in the bus, because they are the ledger's own types with a schema version: the bus stays
below every service (subjects, connection, streams, the shared decoder) and imports none of them. Same rules as
`moeops.bus.messages` (whose decoder core they share through `decode_stored`): every document carries
`schema_version`; readers ignore fields they don't know and reject a version they don't know.

- `CarbonEnergy` is the ledger's `EnergyDelta` with a schema version: a subclass, so the aggregator applies the
  decoded message to the ledger as it is, and the fields are declared once (in `moeops.carbon.accounting.ledger`). Its
  `Nats-Msg-Id` is the delta's id (meter/epoch/sequence): a delta the agent resends is stored once.
- `LedgerCheckpoint`: the ledger snapshot and the stream sequence it covers (the aggregator restarts from it).
- `WorkloadCarbon`: one workload's totals per stage, what the operator reads into `.status.carbon`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from moeops.bus.messages import SCHEMA_VERSION, BadMessage, BadMessageReason, decode_stored
from moeops.bus.subjects import (
    carbon_energy_node_token,
    carbon_energy_subject,
    carbon_msg_id,
    carbon_workload_key,
    token,
)
from moeops.carbon.accounting.ledger import EnergyDelta, Stage, Totals, WorkloadKey, WorkloadKind


class CarbonEnergy(EnergyDelta):
    """One energy delta as a node agent publishes it (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="ignore")  # newer writers may add optional fields

    schema_version: Literal[1] = SCHEMA_VERSION

    @field_validator("node")
    @classmethod
    def _usable_as_subject_token(cls, node: str) -> str:
        token(node)  # raises InvalidToken (a ValueError, so a ValidationError to the caller)
        return node

    @classmethod
    def of(cls, delta: EnergyDelta) -> CarbonEnergy:
        return cls.model_validate(delta.model_dump())

    @property
    def subject(self) -> str:
        return carbon_energy_subject(self.node)

    @property
    def msg_id(self) -> str:
        return carbon_msg_id(self.id.source, self.id.epoch, self.id.sequence)


def encode_carbon(message: CarbonEnergy | LedgerCheckpoint | WorkloadCarbon) -> bytes:
    return message.model_dump_json().encode()


def decode_carbon(subject: str, data: bytes) -> CarbonEnergy:
    """The delta on a carbon energy subject, or BadMessage (the only exception it raises, whatever the bytes)."""
    node = carbon_energy_node_token(subject)
    if node is None:
        raise BadMessage(BadMessageReason.UNKNOWN_SUBJECT, "not a moeops carbon energy subject", subject)
    try:
        message = decode_stored(CarbonEnergy, data)
    except BadMessage as exc:
        raise BadMessage(exc.reason, exc.detail, subject) from None
    if token(message.node) != node:
        raise BadMessage(BadMessageReason.SUBJECT_MISMATCH, f"the body is for node {message.node}", subject)
    return message


class _Stored(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = SCHEMA_VERSION


class LedgerCheckpoint(_Stored):
    """The aggregator's durable state: the ledger after applying every stream message up to `stream_sequence`."""

    stream_sequence: int = Field(ge=0)
    ledger: dict[str, Any]
    """`CarbonLedger.snapshot()`."""


def decode_checkpoint(data: bytes) -> LedgerCheckpoint:
    return decode_stored(LedgerCheckpoint, data)


class WorkloadCarbon(_Stored):
    """One workload's energy and carbon, per stage and in all (the KV value at `carbon_workload_key`)."""

    namespace: str = Field(min_length=1)
    kind: WorkloadKind
    name: str = Field(min_length=1)
    stages: dict[Stage, Totals]
    energy_j: float = Field(ge=0.0, allow_inf_nan=False)
    gco2e: float = Field(ge=0.0, allow_inf_nan=False)

    @property
    def key(self) -> str:
        return carbon_workload_key(self.namespace, self.kind.value, self.name)


def decode_workload(data: bytes) -> WorkloadCarbon:
    return decode_stored(WorkloadCarbon, data)


def workload_totals(
    workloads: Mapping[WorkloadKey, Totals], only: Iterable[WorkloadKey] | None = None
) -> list[WorkloadCarbon]:
    """The ledger's totals grouped per workload (all its stages); with `only`, just the workloads those keys name
    (the ones a batch changed)."""
    wanted = None if only is None else {(key.namespace, key.kind, key.name) for key in only}
    grouped: dict[tuple[str, WorkloadKind, str], dict[Stage, Totals]] = {}
    for key, totals in workloads.items():
        workload = (key.namespace, key.kind, key.name)
        if wanted is None or workload in wanted:
            grouped.setdefault(workload, {})[key.stage] = totals
    return [
        WorkloadCarbon(
            namespace=namespace,
            kind=kind,
            name=name,
            stages=stages,
            energy_j=math.fsum(totals.energy_j for totals in stages.values()),
            gco2e=math.fsum(totals.gco2e for totals in stages.values()),
        )
        for (namespace, kind, name), stages in sorted(grouped.items())
    ]
