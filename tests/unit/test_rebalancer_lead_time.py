"""A plan is announced at least a couple of seconds before its step, however fast the steps are."""

from __future__ import annotations

import time

from bus_records import worker_metrics
from moeops.rebalancer.load import LoadAggregator, LoadSnapshot
from moeops.rebalancer.policy import APPLY_LEAD_S, Hysteresis, with_lead_time


def snapshot(step_seconds: float) -> LoadSnapshot:
    aggregator = LoadAggregator()
    for rank in range(2):
        aggregator.ingest(
            worker_metrics(rank, 1, tokens=100, step_seconds=step_seconds, compute_seconds=step_seconds,
                           measured_at_unix_s=time.time())
        )  # fmt: skip
    return aggregator.snapshot()


def test_fast_steps_get_a_longer_margin_slow_ones_keep_the_configured_one() -> None:
    configured = Hysteresis(apply_margin_steps=5)
    assert with_lead_time(configured, snapshot(0.05)).apply_margin_steps == round(APPLY_LEAD_S / 0.05)
    assert with_lead_time(configured, snapshot(2.0)).apply_margin_steps == 5
    assert with_lead_time(configured, LoadAggregator().snapshot()) == configured
