"""`.status.rebalance` shows the newest plan the workers refused a part of, and why (from the report)."""

from __future__ import annotations

from bus_records import worker_metrics
from moeops.bus.plan_acks import AckOutcome, PlanAck
from moeops.bus.reports import RebalanceReport, decode_report
from moeops.operator.status import rebalance_status
from moeops.rebalancer.jobs import JobSettings, JobState

REASON = "expert placement: ranks hold [2, 2] expert slots; each rank has 3 (2 experts + 1 spare slots per EP rank)"


def test_the_last_refusal_reaches_the_status() -> None:
    report = RebalanceReport(namespace="ml", job="moe", plan_epoch=3, utilization=0.9, world_size=2, ranks_reporting=2,
                             last_step=40, measured_at_unix_s=0.0, refused_epoch=2, refusal=REASON)  # fmt: skip
    assert decode_report(report.model_dump_json().encode()) == report
    status = rebalance_status(report)
    assert status["refusedEpoch"] == 2 and status["refusal"] == REASON
    assert "refusal" not in rebalance_status(report.model_copy(update={"refused_epoch": None, "refusal": None}))


def test_the_service_reports_the_newest_refusal() -> None:
    state = JobState.of(JobSettings("ml", "moe", 8))
    state.aggregator.ingest(worker_metrics(0, 1, namespace="ml", job="moe", world_size=1))
    before = state.report(0.0)
    assert before is not None and before.refusal is None
    state.acknowledged(PlanAck(namespace="ml", job="moe", epoch=1, outcome=AckOutcome.PARTLY, refused=[REASON, "b"],
                               step=5, acked_at_unix_s=0.0))  # fmt: skip
    state.acknowledged(PlanAck(namespace="ml", job="moe", epoch=2, outcome=AckOutcome.APPLIED, step=9,
                               acked_at_unix_s=0.0))  # fmt: skip
    report = state.report(0.0)
    assert report is not None and report.refused_epoch == 1 and report.refusal == f"{REASON}; b"
