"""A `WorkerMetrics` with plausible values for the tests, changed where a test cares."""

from __future__ import annotations

from typing import Any

from moeops.bus.messages import WorkerMetrics


def worker_metrics(rank: int, step: int, **fields: Any) -> WorkerMetrics:
    values: dict[str, Any] = {
        "namespace": "ns",
        "job": "job",
        "world_size": 2,
        "rank": rank,
        "step": step,
        "loss": 2.0,
        "aux_loss": 0.0,
        "tokens": 1000,
        "step_seconds": 1.0,
        "compute_seconds": 1.0,
        "comm_seconds": 0.0,
        "lr": 1e-3,
        "measured_at_unix_s": 0.0,
    }
    return WorkerMetrics(**(values | fields))
