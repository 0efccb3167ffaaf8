"""The bus's pure half: subject names, message schemas and the decoder that turns any bytes into a message or a
BadMessage with a reason. No server."""

from __future__ import annotations

import contextlib
import json
import math
import random
from typing import Any

import pytest
from pydantic import ValidationError

from moeops.bus.messages import (
    COUNTS_RANK,
    BadMessage,
    BadMessageReason,
    RebalancePlan,
    WorkerMetrics,
    decode,
    encode,
)
from moeops.bus.subjects import (
    InvalidToken,
    SubjectKind,
    metrics_filter,
    metrics_msg_id,
    metrics_subject,
    parse,
    plan_key,
    plans_filter,
    plans_subject,
    token,
)
from moeops.trainer.metrics import StepMetrics


def step_metrics(step: int = 7, rank: int = 1, loss: float = 2.5) -> StepMetrics:
    return StepMetrics(
        step=step,
        rank=rank,
        loss=loss,
        aux_loss=0.01,
        tokens=4096,
        step_seconds=0.5,
        compute_seconds=0.4,
        comm_seconds=0.1,
        lr=3e-4,
        tokens_per_expert=[[10, 20, 30, 40], [25, 25, 25, 25]],
        max_memory_bytes=1 << 30,
    )


def worker_metrics(**changes: object) -> WorkerMetrics:
    """Rank 1's message, with expert counts (the schema allows them on any rank; the trainer's sink sends them
    from COUNTS_RANK only): the decoder's paths with and without counts are both tested here."""
    record = step_metrics()
    message = WorkerMetrics.from_step(
        record, namespace="team-a", job="llm.v2", world_size=4, measured_at_unix_s=1_700_000_000.5
    )
    return message.model_copy(update={"tokens_per_expert": record.tokens_per_expert, **changes})


def plan(**changes: object) -> RebalancePlan:
    fields: dict[str, object] = {
        "namespace": "team-a",
        "job": "llm.v2",
        "epoch": 3,
        "apply_at_step": 200,
        "data_shares": [0.3, 0.3, 0.2, 0.2],
        "stage_layers": [(0, 3), (3, 8)],
        "expert_placement": [[[0], [1, 2], [3]], [[0], [1], [2, 3]]],
        "predicted_gain": 0.08,
        "created_at_unix_s": 1_700_000_100.0,
    }
    return RebalancePlan.model_validate(fields | changes)


# --- subjects -------------------------------------------------------------------------------------------------


def test_subjects_name_the_namespace_job_and_rank() -> None:
    assert metrics_subject("team-a", "llm.v2", 3) == "moeops.metrics.team-a.llm_v2.3"
    assert plans_subject("team-a", "llm.v2") == "moeops.plans.team-a.llm_v2"
    assert plan_key("team-a", "llm.v2") == "team-a.llm_v2"
    assert metrics_msg_id("team-a", "llm.v2", 3, 42) == "team-a/llm_v2/3/42"


def test_filters_cover_all_jobs_a_namespace_or_one_job() -> None:
    assert metrics_filter() == "moeops.metrics.>"
    assert metrics_filter("team-a") == "moeops.metrics.team-a.>"
    assert metrics_filter("team-a", "llm.v2") == "moeops.metrics.team-a.llm_v2.*"
    assert plans_filter() == "moeops.plans.>"
    assert plans_filter("team-a") == "moeops.plans.team-a.*"
    with pytest.raises(ValueError, match="namespace"):
        metrics_filter(job="llm")


@pytest.mark.parametrize("name", ["", "a b", "a*", "team>", "jobs\n", "é", "a/b", "$sys"])
def test_names_that_cannot_be_tokens_are_rejected(name: str) -> None:
    with pytest.raises(InvalidToken, match="cannot be a NATS subject token"):
        token(name)


@pytest.mark.parametrize("rank", [-1, True, 1.0])
def test_ranks_must_be_non_negative_ints(rank: int) -> None:
    with pytest.raises(InvalidToken, match="rank"):
        metrics_subject("ns", "job", rank)


def test_parse_reads_concrete_subjects_only() -> None:
    parsed = parse("moeops.metrics.team-a.llm_v2.3")
    assert parsed is not None
    assert (parsed.kind, parsed.namespace_token, parsed.job_token, parsed.rank) == (
        SubjectKind.METRICS,
        "team-a",
        "llm_v2",
        3,
    )
    assert parse("$KV.moeops-plans.team-a.llm_v2") == parse("moeops.plans.team-a.llm_v2")
    for subject in ["moeops.metrics.>", "moeops.metrics.a.b.*", "moeops.metrics.a.b.²", "moeops.carbon.a.b", "x"]:
        assert parse(subject) is None, subject


# --- schemas --------------------------------------------------------------------------------------------------


def test_worker_metrics_mirror_the_trainers_step_metrics() -> None:
    message = worker_metrics()
    assert message.schema_version == 1
    assert (message.step, message.rank, message.world_size, message.tokens) == (7, 1, 4, 4096)
    assert message.tokens_per_expert == [[10, 20, 30, 40], [25, 25, 25, 25]]
    assert message.subject == "moeops.metrics.team-a.llm_v2.1"
    assert message.msg_id == "team-a/llm_v2/1/7"
    assert decode(message.subject, encode(message)) == message


def test_only_one_rank_sends_the_all_reduced_expert_counts() -> None:
    for rank in range(3):
        message = WorkerMetrics.from_step(
            step_metrics(rank=rank), namespace="ns", job="j", world_size=3, measured_at_unix_s=1.0
        )
        expected = [[10, 20, 30, 40], [25, 25, 25, 25]] if rank == COUNTS_RANK else []
        assert message.tokens_per_expert == expected, rank


def test_a_diverging_loss_travels_as_json() -> None:
    message = WorkerMetrics.from_step(
        step_metrics(loss=math.nan), namespace="ns", job="j", world_size=2, measured_at_unix_s=1.0
    )
    data = encode(message)
    json.loads(data)  # standard JSON: NaN is the string "NaN"
    decoded = decode(message.subject, data)
    assert isinstance(decoded, WorkerMetrics)
    assert math.isnan(decoded.loss)


def test_worker_metrics_reject_impossible_values() -> None:
    impossible: list[dict[str, Any]] = [
        {"rank": 4},
        {"tokens": -1},
        {"step_seconds": -0.1},
        {"tokens_per_expert": [[1, -2]]},
    ]
    for changes in impossible:
        with pytest.raises(ValidationError):
            WorkerMetrics.model_validate(worker_metrics().model_dump() | changes)
    with pytest.raises(ValidationError, match="cannot be a NATS subject token"):
        WorkerMetrics.model_validate(worker_metrics().model_dump() | {"job": "a b"})


def test_plans_round_trip_with_replicated_experts() -> None:
    message = plan()
    assert message.expert_placement[0][1] == [1, 2]
    assert message.key == "team-a.llm_v2"
    assert decode(message.subject, encode(message)) == message
    assert decode("$KV.moeops-plans.team-a.llm_v2", encode(message)) == message


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"data_shares": [0.5, 0.4]}, "sum to"),
        ({"data_shares": []}, "at least 1"),
        ({"data_shares": [1.5, -0.5]}, "less than or equal to 1"),
        ({"stage_layers": [(0, 3), (4, 8)]}, "contiguous"),
        ({"stage_layers": [(1, 3)]}, "contiguous"),
        ({"stage_layers": [(0, 0)]}, "non-empty"),
        ({"expert_placement": [[[0, 0]]]}, "placed twice"),
        ({"expert_placement": [[[]]]}, "at least 1"),
        ({"predicted_gain": math.inf}, "finite"),
    ],
)
def test_plans_reject_inconsistent_distributions(changes: dict[str, object], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        plan(**changes)


def test_readers_ignore_fields_added_by_newer_writers() -> None:
    message = worker_metrics()
    document = json.loads(encode(message)) | {"gpu_temperature_c": 71}
    assert decode(message.subject, json.dumps(document).encode()) == message


# --- decode: every failure is a BadMessage with a reason --------------------------------------------------------


def reason_for(subject: str, data: bytes) -> BadMessageReason:
    with pytest.raises(BadMessage) as caught:
        decode(subject, data)
    return caught.value.reason


def test_bad_messages_are_classified() -> None:
    good = worker_metrics()
    subject, data = good.subject, encode(good)
    document = json.loads(data)
    assert reason_for(subject, b"\xff\xfe garbage") is BadMessageReason.NOT_JSON
    assert reason_for(subject, data + b"}") is BadMessageReason.NOT_JSON
    assert reason_for(subject, data[: len(data) // 2]) is BadMessageReason.TRUNCATED
    assert reason_for(subject, b"") is BadMessageReason.TRUNCATED
    assert reason_for(subject, b"[1, 2]") is BadMessageReason.INVALID
    for version in [2, 0, "1", True, None]:
        changed = json.dumps(document | {"schema_version": version}).encode()
        assert reason_for(subject, changed) is BadMessageReason.WRONG_SCHEMA_VERSION, version
    without_version = json.dumps({k: v for k, v in document.items() if k != "schema_version"}).encode()
    assert reason_for(subject, without_version) is BadMessageReason.WRONG_SCHEMA_VERSION
    assert reason_for(subject, json.dumps(document | {"tokens": -5}).encode()) is BadMessageReason.INVALID
    assert reason_for("moeops.carbon.ns.job", data) is BadMessageReason.UNKNOWN_SUBJECT
    assert reason_for(metrics_subject("team-a", "llm.v2", 2), data) is BadMessageReason.SUBJECT_MISMATCH
    assert reason_for(plans_subject("team-a", "llm.v2"), data) is BadMessageReason.INVALID  # metrics ≠ a plan


def test_bad_message_says_what_was_wrong_and_where() -> None:
    good = worker_metrics()
    document = json.loads(encode(good)) | {"schema_version": 9}
    with pytest.raises(BadMessage, match=r"wrong_schema_version: schema_version 9; this reader understands 1") as e:
        decode(good.subject, json.dumps(document).encode())
    assert e.value.subject == good.subject
    with pytest.raises(BadMessage, match=r"invalid: tokens: Input should be greater than or equal to 0"):
        decode(good.subject, json.dumps(json.loads(encode(good)) | {"tokens": -1}).encode())


def test_decode_never_raises_anything_but_bad_message() -> None:
    rng = random.Random(4)
    samples = [encode(worker_metrics()), encode(plan())]
    subjects = [worker_metrics().subject, plan().subject]
    for _ in range(3000):
        index = rng.randrange(2)
        data = bytearray(samples[index])
        mutation = rng.randrange(4)
        if mutation == 0:
            data = data[: rng.randrange(len(data))]
        elif mutation == 1:
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif mutation == 2:
            data = bytearray(rng.randbytes(rng.randrange(64)))
        else:
            data = bytearray(b"[" * 5000)  # deeper than any parser's recursion limit
        with contextlib.suppress(BadMessage):  # anything else fails the test
            decode(subjects[index], bytes(data))
