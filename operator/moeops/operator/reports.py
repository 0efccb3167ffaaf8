"""The rebalancer's reports on jobs, read from the reports KV bucket (through the operator's `BusReader`)."""

from __future__ import annotations

from moeops.bus.buckets import ensure_reports_bucket, latest_report
from moeops.bus.reports import RebalanceReport

from .bus_reader import BusReader


class ReportReader(BusReader):
    async def report(self, namespace: str, job: str) -> RebalanceReport | None:
        return await self.read(
            ensure_reports_bucket,
            lambda kv: latest_report(kv, namespace, job),
            f"rebalancer report on {namespace}/{job}",
        )
