"""MoETrainingJob `.status.rebalance`: the rebalancer's latest report on the job, copied in periodically.

A timer per job rather than a watch on the reports bucket: the figures are smoothed averages that change slowly,
and one KV read per job every REPORT_INTERVAL_S is cheap for the API server (a patch only when they changed).
"""

from __future__ import annotations

from typing import Any

import kopf

from ..reports import ReportReader
from ..status import is_finished, rebalance_status
from .observe import JOBS, traced
from .training import TRAINING

REPORT_INTERVAL_S = 15.0


@kopf.timer(*TRAINING, interval=REPORT_INTERVAL_S, initial_delay=REPORT_INTERVAL_S)
@traced()
async def copy_rebalancer_report(
    spec: kopf.Spec,
    status: kopf.Status,
    namespace: str | None,
    name: str,
    memo: kopf.Memo,
    patch: kopf.Patch,
    **_: Any,
) -> None:
    reader: ReportReader | None = memo.get("reports")
    if (
        reader is None
        or namespace is None
        or is_finished(dict(status))
        or not (spec.get("rebalance") or {}).get("enabled", True)
    ):
        return
    report = await reader.report(namespace, name)
    if report is None:
        return
    fresh = rebalance_status(report)
    JOBS.record(namespace, name, {"rebalance": fresh})
    if fresh != dict(status.get("rebalance") or {}):
        patch.status["rebalance"] = fresh
