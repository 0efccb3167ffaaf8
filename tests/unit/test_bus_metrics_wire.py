"""Worker metrics as the compact record workers publish (`metrics_wire`): the same message as its JSON, every
damaged record a BadMessage with the model's reason, and decode's hand-checked fast path agreeing with the model."""

from __future__ import annotations

import contextlib
import math
import random
import struct
from typing import Any

import pytest

from moeops.bus import metrics_wire
from moeops.bus.messages import (
    BadMessage,
    BadMessageReason,
    WorkerMetrics,
    _fast_metrics,
    decode,
    decode_reference,
    encode,
    encode_metrics,
)
from moeops.bus.subjects import metrics_subject, parse


def worker_metrics(**changes: object) -> WorkerMetrics:
    fields: dict[str, object] = {
        "namespace": "team-a",
        "job": "llm.v2",
        "world_size": 4,
        "rank": 1,
        "step": 7,
        "loss": 2.5,
        "aux_loss": 0.01,
        "tokens": 4096,
        "step_seconds": 0.5,
        "compute_seconds": 0.4,
        "comm_seconds": 0.1,
        "lr": 3e-4,
        "tokens_per_expert": [[10, 20, 30, 40], [25, 25, 25, 25]],
        "max_memory_bytes": 1 << 30,
        "measured_at_unix_s": 1_700_000_000.5,
    }
    return WorkerMetrics.model_validate(fields | changes)


def outcome(decoder: Any, subject: str, data: bytes) -> tuple[object, ...]:
    """What a decoder makes of the bytes, in comparable form (NaN compares through its JSON)."""
    try:
        message = decoder(subject, data)
    except BadMessage as exc:
        return ("bad", exc.reason, str(exc))
    return ("ok", type(message), message.model_dump_json(), message.model_fields_set, repr(message))


def test_a_record_decodes_to_the_message_its_json_does() -> None:
    for message in [worker_metrics(), worker_metrics(tokens_per_expert=[], rank=0), worker_metrics(loss=math.nan)]:
        record = encode_metrics(message)
        assert metrics_wire.is_record(record) and not metrics_wire.is_record(encode(message))
        from_record, from_json = decode(message.subject, record), decode(message.subject, encode(message))
        assert outcome(lambda *_, m=from_record: m, "", b"") == outcome(lambda *_, m=from_json: m, "", b"")
        assert from_record.model_fields_set == from_json.model_fields_set
    assert len(encode_metrics(worker_metrics(tokens_per_expert=[]))) < len(encode(worker_metrics(tokens_per_expert=[])))


def test_the_fast_path_builds_a_frozen_message_with_its_own_lists() -> None:
    message = worker_metrics()
    fields = metrics_wire.read_fields(encode_metrics(message))
    assert tuple(fields) == tuple(WorkerMetrics.model_fields)  # the fast path adopts the dict as the model's own
    fast = _fast_metrics(parse(message.subject), fields)  # type: ignore[arg-type]
    assert fast == message
    assert fast.model_copy(update={"step": 8}).step == 8
    with pytest.raises(ValueError, match="frozen"):
        fast.step = 9  # type: ignore[misc]


def record_variants() -> list[tuple[str, bytes]]:
    """Records with one field changed at a time (values the layout can hold, valid or not), cut short, extended,
    of another version, or for another subject."""
    good = worker_metrics()
    subject, fields = good.subject, dict(good.__dict__)
    changes: list[dict[str, object]] = [{}]
    for name in ("world_size", "rank", "step", "tokens", "max_memory_bytes"):
        changes += [{name: value} for value in (0, 1, 3, 4, 5, 2**32 - 1)]
    for name in ("loss", "aux_loss", "step_seconds", "compute_seconds", "comm_seconds", "lr", "measured_at_unix_s"):
        changes += [{name: value} for value in (0.0, -0.0, -1.0, 2.5, math.inf, -math.inf, math.nan, 1e300)]
    changes += [
        {"namespace": "team.a"},
        {"namespace": "a" * 253},
        {"namespace": "a" * 254},
        {"namespace": ""},
        {"job": "llm v2"},
        {"job": "llm_v2"},
        {"job": "llm.v2\u00e9"},
        {"tokens_per_expert": []},
        {"tokens_per_expert": [[0, 5], []]},
        {"tokens_per_expert": [[]]},
        {"tokens_per_expert": [[2**64 - 1]]},
    ]
    variants = [(subject, metrics_wire.pack(fields | change)) for change in changes]
    data = encode_metrics(good)
    variants += [(subject, data[:cut]) for cut in range(len(data))]
    variants += [
        (subject, data + b"\x00"),
        (subject, data[:2] + struct.pack("<H", 2) + data[4:]),
        (subject, data.replace(b"team-a", b"team-\xff")),
        (metrics_subject("team-a", "llm.v2", 2), data),
        (metrics_subject("team-b", "llm.v2", 1), data),
        (metrics_subject("team-a", "llm_v2", 1), data),
        (metrics_subject("team-a", "llm.v2", 1).replace("metrics", "plans"), data),
    ]
    return variants


def test_the_fast_path_agrees_with_the_model_on_every_variant_and_random_damage() -> None:
    variants = record_variants()
    rng = random.Random(11)
    data = encode_metrics(worker_metrics())
    for _ in range(3000):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        variants.append((worker_metrics().subject, bytes(damaged)))
    taken = 0
    for subject, record in variants:
        assert outcome(decode, subject, record) == outcome(decode_reference, subject, record), record
        parsed = parse(subject)
        with contextlib.suppress(metrics_wire.WireError):
            fields = metrics_wire.read_fields(record)
            taken += parsed is not None and _fast_metrics(parsed, fields) is not None
    assert taken > 100  # the fast path serves ordinary records, not just a fallback every time


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (b"\xffM", BadMessageReason.TRUNCATED),
        (b"\xffM\x01\x00" + b"\x00" * 20, BadMessageReason.TRUNCATED),
        (b"\xffM\x02\x00" + b"\x00" * 200, BadMessageReason.WRONG_SCHEMA_VERSION),
        (encode_metrics(worker_metrics()) + b"!", BadMessageReason.INVALID),
        (encode_metrics(worker_metrics(rank=3, world_size=4)), BadMessageReason.SUBJECT_MISMATCH),
        (metrics_wire.pack(worker_metrics().__dict__ | {"world_size": 1}), BadMessageReason.INVALID),
        (metrics_wire.pack(worker_metrics().__dict__ | {"lr": math.nan}), BadMessageReason.INVALID),
    ],
)
def test_damaged_records_are_bad_messages_with_a_reason(record: bytes, reason: BadMessageReason) -> None:
    with pytest.raises(BadMessage) as caught:
        decode(worker_metrics().subject, record)
    assert caught.value.reason is reason


def test_what_the_layout_cannot_hold_is_refused_when_packing() -> None:
    with pytest.raises(ValueError, match="16 bits"):
        encode_metrics(worker_metrics(tokens_per_expert=[[1] * 70_000]))


def test_per_layer_times_travel_as_json_and_the_record_without_them_stays_compact() -> None:
    timed = worker_metrics(layer_compute_seconds=[0.25, 0.0, 0.5])
    data = encode_metrics(timed)
    assert not metrics_wire.is_record(data) and data == encode(timed)  # the record has no room for them
    assert decode(timed.subject, data) == timed
    plain = worker_metrics()
    assert metrics_wire.is_record(encode_metrics(plain)) and decode(plain.subject, encode_metrics(plain)) == plain
    decoded = decode(plain.subject, encode_metrics(plain))
    assert isinstance(decoded, WorkerMetrics) and decoded.layer_compute_seconds == []
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        worker_metrics(layer_compute_seconds=[-1.0])
