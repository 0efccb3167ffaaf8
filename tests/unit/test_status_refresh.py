"""The operator's status loop: its schedule (pure), the fields it writes, and that no handler needs a finalizer."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest

from moeops.operator.status.refresh import Schedule, changed_fields, merged


def test_each_source_runs_first_after_its_interval_then_at_its_own_cadence() -> None:
    schedule = Schedule({"progress": 1.0, "carbon": 3.0}, started_at=100.0)
    assert schedule.sleep_s(100.0) == 1.0
    assert schedule.due(100.5) == []
    assert schedule.due(101.0) == ["progress"]
    assert schedule.due(102.0) == ["progress"]
    assert schedule.due(103.0) == ["progress", "carbon"]
    assert schedule.sleep_s(103.0) == 1.0
    # A slow pass delays the next run instead of queueing runs up.
    assert schedule.due(110.0) == ["progress", "carbon"]
    assert schedule.due(110.5) == []
    assert schedule.sleep_s(110.5) == 0.5


def test_a_schedule_refuses_an_interval_that_would_spin() -> None:
    with pytest.raises(ValueError, match="carbon"):
        Schedule({"carbon": 0.0}, started_at=0.0)


def test_only_the_fields_that_differ_are_written() -> None:
    status = {"progress": {"step": 5}, "rebalance": {"epoch": 2}, "state": "Running"}
    fresh = merged([{"progress": {"step": 5}}, {"rebalance": {"epoch": 3}}, {"carbon": {"energyJoules": 1.0}}])
    assert changed_fields(fresh, status) == {"rebalance": {"epoch": 3}, "carbon": {"energyJoules": 1.0}}
    assert changed_fields({"progress": {"step": 5}}, status) == {}


def test_no_handler_puts_a_finalizer_on_every_object() -> None:
    """kopf adds its finalizer for every timer or daemon that matches an object, even behind a `when=` filter: the
    periodic work, the carbon gate included, is one operator-level loop, and no handler is a timer or daemon."""
    import moeops.operator.handlers  # noqa: F401  (registers the handlers)

    registry = kopf.get_default_registry()
    assert [h.id for h in registry._spawning._handlers] == []
    assert [h.id for h in registry._changing._handlers if h.requires_finalizer] == []


class FakeBusReader:
    """Returns one value for every read; counts the reads (the bus itself is tested against a real nats-server)."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.reads = 0

    async def read(self, *_: object) -> Any:
        self.reads += 1
        return self.value


def patch_of(update: Any) -> dict[str, Any]:
    assert update is not None
    return dict(update.patch)


def job_body(status: dict[str, Any], spec: dict[str, Any] | None = None) -> dict[str, Any]:
    meta = {"namespace": "ml", "name": "j", "uid": "u1", "creationTimestamp": "2026-03-01T12:00:00Z"}
    return {"kind": "MoETrainingJob", "metadata": meta, "spec": spec or {}, "status": status}


def test_a_finished_jobs_progress_is_read_once_more_and_never_lowered_fake_bus() -> None:
    from moeops.bus.progress import JobProgress
    from moeops.operator.handlers.status_sources import Context, progress_fields

    progress = JobProgress(namespace="ml", job="j", step=120, total_steps=200, loss=1.0,
                           measured_at_unix_s=1_772_366_400.0 + 60)  # fmt: skip
    reader = FakeBusReader(progress)
    ctx = Context(reader=reader, kube=None, cfg=None)  # type: ignore[arg-type]
    running = job_body({"state": "Running", "progress": {"step": 100}})
    assert patch_of(asyncio.run(progress_fields(ctx, running)))["progress"]["step"] == 120
    done = job_body({"state": "Succeeded", "progress": {"step": 200, "totalSteps": 200, "percent": 100}})
    assert patch_of(asyncio.run(progress_fields(ctx, done)))["progress"]["step"] == 200  # not lowered to 120
    assert asyncio.run(progress_fields(ctx, done)) is None  # read once more, then no more
    assert reader.reads == 2
    ctx.forget(set())  # the job is gone: its state goes too
    assert ctx.final_progress_read == set()


def test_only_the_highest_priority_live_replica_leads() -> None:
    from datetime import UTC, datetime

    from moeops.operator.status.refresh import leads_peers

    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    me = {"priority": 50, "lifetime": 60, "lastseen": "2026-03-01T11:59:50+00:00"}
    higher = {"priority": 90, "lifetime": 60, "lastseen": "2026-03-01T11:59:30+00:00"}
    assert leads_peers({"me": me}, 50, at)
    assert not leads_peers({"me": me, "other": higher}, 50, at)
    lapsed = {**higher, "lastseen": "2026-03-01T11:58:00+00:00"}  # its record expired: it is gone
    assert leads_peers({"me": me, "other": lapsed}, 50, at)
    assert leads_peers({"me": me, "other": {**higher, "priority": 10}}, 50, at)
    assert leads_peers({}, 50, at)  # no peering object: standalone in effect
