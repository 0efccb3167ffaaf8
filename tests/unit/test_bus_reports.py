"""The rebalancer's report: schema, decoding that never crashes, measured utilization, and the status it becomes."""

from __future__ import annotations

import pytest

from moeops.bus.messages import BadMessage, BadMessageReason
from moeops.bus.reports import RebalanceReport, decode_report, measured_utilization, report_key
from moeops.operator.status import rebalance_status

REPORT = RebalanceReport(namespace="ml", job="moe.big", plan_epoch=2, apply_at_step=40, predicted_gain=0.123456,
                         utilization=0.87654, world_size=8, ranks_reporting=8, last_step=57,
                         measured_at_unix_s=1_800_000_000.0)  # fmt: skip


def test_a_report_round_trips_and_is_keyed_by_job() -> None:
    assert decode_report(REPORT.model_dump_json().encode()) == REPORT
    assert REPORT.key == report_key("ml", "moe.big") == "ml.moe_big"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not json", BadMessageReason.NOT_JSON),
        (b"[1, 2]", BadMessageReason.WRONG_SCHEMA_VERSION),
        (b'{"schema_version": true}', BadMessageReason.WRONG_SCHEMA_VERSION),
        (b'{"schema_version": 2, "namespace": "a", "job": "b"}', BadMessageReason.WRONG_SCHEMA_VERSION),
        (b'{"schema_version": 1, "namespace": "a", "job": "b", "utilization": 1.5}', BadMessageReason.INVALID),
    ],
)
def test_bad_stored_bytes_are_a_bad_message(data: bytes, reason: BadMessageReason) -> None:
    with pytest.raises(BadMessage) as caught:
        decode_report(data)
    assert caught.value.reason is reason


def test_utilization_is_compute_over_step_time() -> None:
    assert measured_utilization([0.5, 1.0], [1.0, 1.0]) == 0.75
    assert measured_utilization([2.0], [1.0]) == 1.0  # smoothed compute may exceed the step: clipped
    assert measured_utilization([], []) == 0.0


def test_the_status_is_the_report_in_camel_case() -> None:
    status = rebalance_status(REPORT)
    assert status == {
        "epoch": 2,
        "appliedAtStep": 40,
        "predictedGain": 0.1235,
        "utilization": 0.8765,
        "ranksReporting": 8,
        "lastStep": 57,
        "lastUpdate": "2027-01-15T08:00:00Z",
    }
    before_first_plan = REPORT.model_copy(update={"plan_epoch": None, "apply_at_step": None, "predicted_gain": None})
    assert "epoch" not in rebalance_status(before_first_plan)
