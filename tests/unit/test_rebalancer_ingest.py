"""The rebalancer's batch ingest: runs of plain records read as columns must leave every aggregator and counter
exactly as folding the same messages one at a time through `decode` does, whatever the deliveries hold."""

from __future__ import annotations

import math
import random
import struct
from dataclasses import dataclass

import pytest

from moeops.bus import metrics_wire
from moeops.bus.messages import WorkerMetrics, encode, encode_metrics
from moeops.bus.subjects import metrics_subject
from moeops.rebalancer.ingest import MIN_RUN, Counters, Ingest
from moeops.rebalancer.jobs import JobSettings, JobState

WORLD = 16
DAMAGE = [
    "none",
    "rank",
    "nan",
    "zero",
    "json",
    "garbage",
    "other_job",
    "unknown",
    "short",
    "time",
    "lr",
    "comm",
    "job_len",
]


@dataclass(frozen=True)
class Delivery:
    subject: str
    data: bytes


def metrics(rank: int, step: int, measured_at: float, *, job: str = "llm.v2", **changes: object) -> WorkerMetrics:
    fields: dict[str, object] = {
        "namespace": "team-a",
        "job": job,
        "world_size": WORLD,
        "rank": rank,
        "step": step,
        "loss": 2.5,
        "aux_loss": 0.01,
        "tokens": 4096,
        "step_seconds": 0.5,
        "compute_seconds": 0.3 + 0.01 * rank + 0.001 * (step % 7),
        "comm_seconds": 0.1,
        "lr": 3e-4,
        "tokens_per_expert": [[10 + step, 20, 30, 40]] if rank == 0 else [],
        "max_memory_bytes": 1 << 30,
        "measured_at_unix_s": measured_at,
    }
    return WorkerMetrics.model_construct(**(fields | changes))  # type: ignore[arg-type]  # invalid ones too


def record(message: WorkerMetrics) -> Delivery:
    return Delivery(metrics_subject(message.namespace, message.job, message.rank), encode_metrics(message))


def longer_job(data: bytes) -> bytes:
    """The record claiming a job name one byte longer than it holds (so one byte too few after it)."""
    at = metrics_wire.HEAD_SIZE - 4  # job_len (u16), before the layer count
    return data[:at] + struct.pack("<H", struct.unpack_from("<H", data, at)[0] + 1) + data[at + 2 :]


def deliveries(rng: random.Random, steps: int) -> list[Delivery]:
    """Ordinary steps of every rank in a shuffled order, with the damage a real stream can hold mixed in."""
    out: list[Delivery] = []
    clock = 1_700_000_000.0
    for step in range(steps):
        restart = step == steps // 2  # the job went back to a checkpoint: steps again from 5, measured later
        batch = [record(metrics(rank, 5 if restart else step, clock + rank * 1e-3)) for rank in range(WORLD)]
        rng.shuffle(batch)
        out += batch
        clock += 1.0
        if rng.random() < 0.3:
            out.insert(rng.randrange(len(out)), rng.choice(out))  # a redelivery (duplicate or stale)
        bad = rng.choice(DAMAGE)
        ordinary = metrics(rng.randrange(1, WORLD), step, clock - 0.5)
        damaged = {
            "none": None,
            "rank": record(ordinary.model_copy(update={"rank": WORLD + 1})),
            "nan": record(ordinary.model_copy(update={"step_seconds": math.nan})),
            "zero": record(ordinary.model_copy(update={"tokens": 0})),
            "json": Delivery(record(ordinary).subject, encode(ordinary)),
            "garbage": Delivery(record(ordinary).subject, b"\xffM\x01\x00garbage"),
            "other_job": Delivery(metrics_subject("team-a", "other", ordinary.rank), record(ordinary).data),
            "unknown": record(metrics(3, step, clock, job="unknown")),
            "short": Delivery(record(ordinary).subject, record(ordinary).data[:-1]),
            "time": record(ordinary.model_copy(update={"measured_at_unix_s": math.inf})),
            "lr": record(ordinary.model_copy(update={"lr": -1e-3})),
            "comm": record(ordinary.model_copy(update={"comm_seconds": math.inf})),
            "job_len": Delivery(record(ordinary).subject, longer_job(record(ordinary).data)),
        }[bad]
        if damaged is not None:
            out.insert(rng.randrange(max(1, len(out) - WORLD), len(out) + 1), damaged)
    return out


def ingest() -> Ingest:
    settings = JobSettings("team-a", "llm.v2", global_batch=64)
    return Ingest({settings.key: JobState.of(settings)}, Counters(), discover=True)


def state_of(target: Ingest) -> tuple[object, ...]:
    job = next(iter(target.jobs.values()))
    return (target.counters, job.aggregator.snapshot(), dict(target.undescribed))


@pytest.mark.slow
def test_runs_give_what_one_message_at_a_time_gives() -> None:
    runs_taken = 0
    for seed in range(12):
        messages = deliveries(random.Random(seed), steps=40)
        batched, single = ingest(), ingest()
        fold_run = batched._fold_run

        def counting(*args: object, fold_run: object = fold_run) -> bool | None:
            nonlocal runs_taken
            result = fold_run(*args)  # type: ignore[operator]
            runs_taken += result is not None
            return result  # type: ignore[no-any-return]

        batched._fold_run = counting  # type: ignore[method-assign,assignment]
        touched: set[tuple[str, str]] = set()
        for at in range(0, len(messages), 37):  # batches cut anywhere, runs across their ends
            touched |= batched.batch(messages[at : at + 37])
        for message in messages:
            single.one(message.subject, message.data)
        assert state_of(batched) == state_of(single)
        assert touched == {("team-a", "llm.v2")}
        assert (
            single.counters.bad_messages and single.counters.ingested["duplicate"] + single.counters.ingested["stale"]
        )
    assert runs_taken > 100  # the columnar path does the work, not the fallback


def test_a_run_with_one_bad_record_falls_back_and_loses_nothing() -> None:
    good = [record(metrics(rank, 1, 1e9 + rank)) for rank in range(1, MIN_RUN + 4)]
    bad = record(metrics(WORLD - 1, 1, 1e9, step_seconds=-1.0))
    messages = [*good[:5], bad, *good[5:]]
    batched, single = ingest(), ingest()
    batched.batch(messages)
    for message in messages:
        single.one(message.subject, message.data)
    assert state_of(batched) == state_of(single)
    assert batched.counters.bad_messages == {"invalid": 1}
    assert batched.counters.ingested == {"accepted": len(good)}


def test_lags_are_observed_for_every_record_of_a_known_job() -> None:
    seen: list[float] = []
    target = ingest()
    target.observe = seen.extend
    messages = [record(metrics(rank, 1, 1e9 + rank)) for rank in range(1, WORLD)]
    target.batch([*messages, record(metrics(2, 1, 5.0, job="unknown"))])
    assert sorted(seen) == [1e9 + rank for rank in range(1, WORLD)]
