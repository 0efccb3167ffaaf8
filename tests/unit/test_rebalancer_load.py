"""Load factors: EWMA throughput and expert counts; duplicates and stale records never count."""

from __future__ import annotations

import random
from functools import partial

import numpy as np
import pytest

from bus_records import worker_metrics
from moeops.bus.messages import WorkerMetrics
from moeops.rebalancer.load import Ingested, LoadAggregator, ewma, forecast, track


def metrics(
    rank: int,
    step: int,
    *,
    tokens: int = 1000,
    compute_seconds: float = 1.0,
    step_seconds: float = 1.5,
    experts: list[list[int]] | None = None,
    world_size: int = 2,
) -> WorkerMetrics:
    return worker_metrics(
        rank,
        step,
        world_size=world_size,
        tokens=tokens,
        step_seconds=step_seconds,
        compute_seconds=compute_seconds,
        comm_seconds=max(step_seconds - compute_seconds, 0.0),
        tokens_per_expert=experts if experts is not None else [],
    )


def test_ewma_takes_the_first_sample_as_is_then_moves_by_the_smoothing_factor() -> None:
    assert ewma(None, 10.0, 0.5) == 10.0
    assert ewma(10.0, 20.0, 0.5) == 15.0
    assert ewma(10.0, 20.0, 1.0) == 20.0


def test_throughput_is_tokens_per_compute_second_smoothed() -> None:
    aggregator = LoadAggregator(smoothing=0.5)
    aggregator.ingest(metrics(0, 1, tokens=1000, compute_seconds=1.0))
    aggregator.ingest(metrics(0, 2, tokens=1000, compute_seconds=0.5))
    (rank0,) = aggregator.snapshot().ranks
    assert rank0.tokens_per_second == pytest.approx(1500.0)  # 1000, then halfway to 2000
    assert rank0.compute_seconds == pytest.approx(0.75)
    assert rank0.samples == 2


def test_step_time_is_the_fallback_when_no_compute_time_was_measured() -> None:
    aggregator = LoadAggregator()
    aggregator.ingest(metrics(0, 1, tokens=1000, compute_seconds=0.0, step_seconds=2.0))
    assert aggregator.snapshot().ranks[0].tokens_per_second == pytest.approx(500.0)


def test_duplicates_and_stale_records_are_counted_and_ignored() -> None:
    aggregator = LoadAggregator(smoothing=0.5)
    assert aggregator.ingest(metrics(0, 5, compute_seconds=1.0)) is Ingested.ACCEPTED
    assert aggregator.ingest(metrics(0, 5, compute_seconds=0.1)) is Ingested.DUPLICATE
    assert aggregator.ingest(metrics(0, 3, compute_seconds=0.1)) is Ingested.STALE
    assert aggregator.ingest(metrics(0, 6, tokens=0)) is Ingested.NOT_USABLE
    snapshot = aggregator.snapshot()
    assert snapshot.ranks[0].tokens_per_second == pytest.approx(1000.0)
    assert snapshot.ranks[0].last_step == 5
    assert snapshot.counts == {
        Ingested.ACCEPTED: 1,
        Ingested.DUPLICATE: 1,
        Ingested.STALE: 1,
        Ingested.NOT_USABLE: 1,
        Ingested.RESTARTED: 0,
    }


def test_interleaving_of_ranks_does_not_change_the_snapshot() -> None:
    rng = random.Random(4)
    records = [metrics(rank, step, compute_seconds=rng.uniform(0.5, 2.0)) for step in range(1, 20) for rank in (0, 1)]
    by_rank = {rank: [r for r in records if r.rank == rank] for rank in (0, 1)}
    shuffled: list[WorkerMetrics] = []
    queues = {rank: list(rs) for rank, rs in by_rank.items()}
    while any(queues.values()):  # a random merge that keeps each rank's own order
        rank = rng.choice([r for r, q in queues.items() if q])
        shuffled.append(queues[rank].pop(0))
    a, b = LoadAggregator(), LoadAggregator()
    for record in records:
        a.ingest(record)
    for record in shuffled:
        b.ingest(record)
    assert a.snapshot().ranks == b.snapshot().ranks


def test_a_redelivered_history_changes_nothing() -> None:
    records = [metrics(rank, step, compute_seconds=0.5 + step / 10) for step in range(1, 10) for rank in (0, 1)]
    aggregator = LoadAggregator()
    for record in records:
        aggregator.ingest(record)
    before = aggregator.snapshot()
    for record in reversed(records):  # e.g. a JetStream replay after a reconnect
        aggregator.ingest(record)
    after = aggregator.snapshot()
    assert after.ranks == before.ranks
    assert after.expert_tokens == before.expert_tokens
    assert after.counts[Ingested.DUPLICATE] + after.counts[Ingested.STALE] == len(records)


def test_expert_counts_are_global_so_each_step_is_folded_in_once() -> None:
    aggregator = LoadAggregator(smoothing=0.5)
    aggregator.ingest(metrics(0, 1, experts=[[10, 0], [4, 6]]))
    aggregator.ingest(metrics(1, 1, experts=[[10, 0], [4, 6]]))  # the same all-reduced counts from rank 1
    aggregator.ingest(metrics(1, 2, experts=[[0, 10], [4, 6]]))
    aggregator.ingest(metrics(0, 2, experts=[[0, 10], [4, 6]]))
    assert aggregator.snapshot().expert_tokens == ((5.0, 5.0), (4.0, 6.0))


def test_snapshot_reports_the_newest_step_and_fills_in_silent_ranks() -> None:
    aggregator = LoadAggregator()
    aggregator.ingest(metrics(0, 7, world_size=3, compute_seconds=1.0))
    aggregator.ingest(metrics(2, 9, world_size=3, compute_seconds=0.5))
    snapshot = aggregator.snapshot()
    assert snapshot.max_step == 9
    assert not snapshot.complete
    assert snapshot.throughput() == pytest.approx([1000.0, 1500.0, 2000.0])


def test_smoothing_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match="smoothing"):
        LoadAggregator(smoothing=0.0)


def test_track_without_trend_or_adaptive_rate_is_the_ewma() -> None:
    state = (1000.0, 0.0, 0.0, 0.0)
    for sample in (2000.0, 500.0, 1200.0):
        expected = ewma(state[0], sample, 0.2)
        state = track(*state, sample, smoothing=0.2, trend_smoothing=0.0, damping=0.9, error_smoothing=0.0)
        assert state[0] == pytest.approx(expected)


def test_a_rank_that_keeps_slowing_down_is_forecast_below_its_level() -> None:
    aggregator = LoadAggregator(world_size=1)
    for step in range(12):  # 2% slower every step, like a GPU that throttles
        aggregator.ingest(metrics(0, step, compute_seconds=1.02**step, world_size=1))
    rank = aggregator.snapshot().ranks[0]
    assert rank.tokens_per_second_trend < 0
    assert rank.tokens_per_second < 1000 / 1.02**8  # the adaptive rate follows the drift closely
    snapshot = aggregator.snapshot()
    now, later = snapshot.throughput()[0], snapshot.throughput(5.0)[0]
    assert later < now
    assert snapshot.throughput(1.0, 9.0)[0] == pytest.approx(snapshot.throughput(9.0)[0])  # the lowest of them
    assert forecast(100.0, -50.0, 0.9, 9.0) == 50.0  # never below half the level


def test_a_steady_rank_keeps_the_heavy_smoothing() -> None:
    aggregator = LoadAggregator(world_size=1, smoothing=0.2)
    noise = [1.0, 1.02, 0.98, 1.01, 0.99, 1.0, 1.02, 0.98, 1.0, 1.01]
    for step, seconds in enumerate(noise):
        aggregator.ingest(metrics(0, step, compute_seconds=seconds, world_size=1))
    snapshot = aggregator.snapshot()
    assert snapshot.throughput()[0] == pytest.approx(1000.0, rel=0.01)
    assert snapshot.throughput(9.0)[0] == pytest.approx(1000.0, rel=0.02)
    with pytest.raises(ValueError, match="trend smoothing"):
        LoadAggregator(trend_damping=1.5)


def test_a_job_back_at_a_checkpoint_starts_its_measurements_over() -> None:
    aggregator = LoadAggregator()
    for step in range(1, 31):
        for rank in range(2):
            record = metrics(rank, step, compute_seconds=2.0, experts=[[step, 0]])
            aggregator.ingest(record.model_copy(update={"measured_at_unix_s": float(step)}))
    assert aggregator.snapshot().max_step == 30
    # The job was killed and resumed from its checkpoint of step 20, on faster hardware: step 21 again, later.
    again = metrics(0, 21, compute_seconds=1.0, experts=[[5, 5]]).model_copy(update={"measured_at_unix_s": 100.0})
    assert aggregator.ingest(again) is Ingested.RESTARTED
    snapshot = aggregator.snapshot()
    assert snapshot.max_step == 21 and [load.rank for load in snapshot.ranks] == [0]
    assert snapshot.ranks[0].tokens_per_second == 1000.0 and snapshot.ranks[0].samples == 1
    assert snapshot.expert_tokens == ((5.0, 5.0),)
    # A redelivery of the old run's records (measured before) is stale for rank 0 and no restart for anyone.
    old = metrics(0, 25).model_copy(update={"measured_at_unix_s": 25.0})
    assert aggregator.ingest(old) is Ingested.STALE
    assert aggregator.snapshot().counts[Ingested.RESTARTED] == 1


def test_one_rank_is_tracked_exactly_as_a_column_of_many() -> None:
    rng = np.random.default_rng(7)
    samples = rng.uniform(0.5, 1.5, size=(50, 3))
    arrays = tuple(np.zeros(3) for _ in range(4))
    level = samples[0].copy()
    state_many = (level, arrays[1], arrays[2], arrays[3])
    state_one = [(float(level[i]), 0.0, 0.0, 0.0) for i in range(3)]
    tracked = partial(track, smoothing=0.2, trend_smoothing=0.2, damping=0.9)
    for row in samples[1:]:
        state_many = tracked(*state_many, row)
        state_one = [tracked(*state_one[i], float(row[i])) for i in range(3)]
    for i in range(3):
        assert state_one[i] == tuple(float(part[i]) for part in state_many)  # the same doubles, not just close
        assert all(type(part) is float for part in state_one[i])
