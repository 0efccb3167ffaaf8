"""What a journey reads of a running job beyond its status: the step times its ranks published on the bus, and the
plans rank 0 says it applied (its log, through `kubectl logs`)."""

from __future__ import annotations

import asyncio
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import nats
import nats.errors

from moeops.bus.messages import WorkerMetrics, decode
from moeops.bus.subjects import METRICS_STREAM, metrics_filter

APPLIED = re.compile(r"plan epoch (?P<epoch>\d+) applied before step (?P<step>\d+): shares \[(?P<shares>[\d, ]*)\]")
"""The line rank 0 logs when every rank switches to a plan (moeops.trainer.loop)."""


@dataclass(frozen=True)
class AppliedPlan:
    epoch: int
    step: int
    """The first step run with the plan."""
    shares: tuple[int, ...]
    """Sequences of the global batch per data-parallel rank."""


def applied_plans(log: str) -> list[AppliedPlan]:
    return [
        AppliedPlan(int(m["epoch"]), int(m["step"]), tuple(int(s) for s in m["shares"].split(",") if s.strip()))
        for m in APPLIED.finditer(log)
    ]


async def _stored(url: str, namespace: str, job: str) -> list[WorkerMetrics]:
    client = await nats.connect(url, connect_timeout=5)
    try:
        subscription = await client.jetstream().pull_subscribe(metrics_filter(namespace, job), stream=METRICS_STREAM)
        found: list[WorkerMetrics] = []
        while True:
            try:
                batch = await subscription.fetch(500, timeout=2)
            except nats.errors.TimeoutError:
                return found
            for msg in batch:
                message = decode(msg.subject, msg.data)
                assert isinstance(message, WorkerMetrics), message
                found.append(message)
    finally:
        await client.close()


def stored_metrics(nats_url: str, namespace: str, job: str) -> list[WorkerMetrics]:
    """Every step record the job's ranks published that the metrics stream still holds."""
    return asyncio.run(_stored(nats_url, namespace, job))


def step_seconds(records: Iterable[WorkerMetrics]) -> dict[int, float]:
    """Per step, its time: the slowest rank's (the ranks meet in the gradient all-reduce, so the others wait)."""
    per_rank = {(r.rank, r.step): r.step_seconds for r in records}  # a record published twice counts once
    steps: dict[int, float] = {}
    for (_, step), seconds in per_rank.items():
        steps[step] = max(seconds, steps.get(step, 0.0))
    return dict(sorted(steps.items()))


def median_over(steps: dict[int, float], wanted: Sequence[int]) -> float:
    return statistics.median(steps[s] for s in wanted)
