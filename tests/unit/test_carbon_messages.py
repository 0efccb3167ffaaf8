"""The carbon messages: the energy delta on the wire (subject, id, versioning, bad bytes) and the KV documents."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from moeops.bus.messages import BadMessage, BadMessageReason
from moeops.bus.subjects import carbon_energy_node_token, carbon_energy_subject, carbon_workload_key
from moeops.carbon.accounting.ledger import DeltaId, EnergyDelta, Stage, Totals, WorkloadKey, WorkloadKind
from moeops.carbon.accounting.messages import (
    CarbonEnergy,
    LedgerCheckpoint,
    decode_carbon,
    decode_checkpoint,
    decode_workload,
    encode_carbon,
    workload_totals,
)

AT = datetime(2026, 3, 1, 12, tzinfo=UTC)
KEY = WorkloadKey(namespace="team-a", kind=WorkloadKind.TRAINING_JOB, name="llm.v2", stage=Stage.TRAIN)


def energy(node: str = "gpu-node.zone-a", **changes: object) -> CarbonEnergy:
    fields: dict[str, object] = {
        "id": DeltaId(source=f"{node}/gpu-0", epoch=5, sequence=9),
        "node": node,
        "region": "DE",
        "at": AT,
        "key": KEY,
        "gpu_energy_j": 12.5,
        "cpu_energy_j": 1.5,
    }
    return CarbonEnergy.model_validate(fields | changes)


def test_round_trip_subject_and_msg_id() -> None:
    message = energy()
    assert message.subject == "moeops.carbon.energy.gpu-node_zone-a"
    assert carbon_energy_node_token(message.subject) == "gpu-node_zone-a"
    assert message.msg_id == "gpu-node.zone-a/gpu-0/5/9"
    decoded = decode_carbon(message.subject, encode_carbon(message))
    assert decoded == message
    assert isinstance(decoded, EnergyDelta)  # the ledger applies it as it is
    assert decoded.energy_j == 14.0


def test_of_copies_a_delta() -> None:
    delta = EnergyDelta.model_validate(energy().model_dump(exclude={"schema_version"}))
    assert CarbonEnergy.of(delta) == energy()


def test_unknown_fields_are_ignored() -> None:
    document = json.loads(encode_carbon(energy())) | {"added_later": 1}
    assert decode_carbon(energy().subject, json.dumps(document).encode()) == energy()


def test_a_node_that_cannot_be_a_subject_token_is_refused() -> None:
    with pytest.raises(ValidationError):
        energy(node="node a")


@pytest.mark.parametrize(
    ("subject", "data", "reason"),
    [
        ("moeops.metrics.a.b.0", None, BadMessageReason.UNKNOWN_SUBJECT),
        ("moeops.carbon.energy.x.y", None, BadMessageReason.UNKNOWN_SUBJECT),
        (None, b"\xff not json", BadMessageReason.NOT_JSON),
        (None, b'{"schema_version": 1, "node"', BadMessageReason.TRUNCATED),
        (None, b"[1, 2]", BadMessageReason.WRONG_SCHEMA_VERSION),
        ("moeops.carbon.energy.other-node", None, BadMessageReason.SUBJECT_MISMATCH),
    ],
)
def test_bad_messages_name_their_reason(subject: str | None, data: bytes | None, reason: BadMessageReason) -> None:
    with pytest.raises(BadMessage) as caught:
        decode_carbon(subject or energy().subject, data or encode_carbon(energy()))
    assert caught.value.reason is reason


@pytest.mark.parametrize(("field", "value"), [("schema_version", 2), ("schema_version", True), ("gpu_energy_j", -1)])
def test_wrong_versions_and_invalid_fields(field: str, value: object) -> None:
    document = json.loads(encode_carbon(energy())) | {field: value}
    with pytest.raises(BadMessage) as caught:
        decode_carbon(energy().subject, json.dumps(document).encode())
    expected = BadMessageReason.INVALID if field == "gpu_energy_j" else BadMessageReason.WRONG_SCHEMA_VERSION
    assert caught.value.reason is expected


def test_workload_totals_group_stages_and_filter_to_touched_workloads() -> None:
    other = KEY.model_copy(update={"name": "other"})
    data = KEY.model_copy(update={"stage": Stage.DATA})
    workloads = {KEY: Totals(energy_j=3.0, gco2e=1.0), data: Totals(energy_j=1.0, gco2e=0.5), other: Totals()}
    [only] = workload_totals(workloads, [data])
    assert (only.name, set(only.stages), only.energy_j, only.gco2e) == ("llm.v2", {Stage.TRAIN, Stage.DATA}, 4.0, 1.5)
    assert (
        only.key == carbon_workload_key("team-a", "MoETrainingJob", "llm.v2") == "workload.team-a.MoETrainingJob.llm_v2"
    )
    assert decode_workload(encode_carbon(only)) == only
    assert len(workload_totals(workloads)) == 2


def test_checkpoint_round_trip() -> None:
    checkpoint = LedgerCheckpoint(stream_sequence=17, ledger={"version": 1})
    assert decode_checkpoint(encode_carbon(checkpoint)) == checkpoint
    assert carbon_energy_subject("n") == "moeops.carbon.energy.n"
