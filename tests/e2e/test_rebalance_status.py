"""The rebalancer's report on a job reaches `.status.rebalance` through the operator (real control plane, real
nats-server: the test writes the report the way the rebalancer does, into the reports KV bucket)."""

from __future__ import annotations

import asyncio
import time

import nats
from harness import Cluster, OperatorProcess, wait_for
from manifests import training_job

from missing import NATS_SERVER, missing
from moeops.bus.buckets import ensure_reports_bucket, put_report
from moeops.bus.reports import RebalanceReport
from moeops.devcluster.nats_server import NatsServer

PLURAL = "moetrainingjobs"


async def _put(url: str, report: RebalanceReport) -> None:
    client = await nats.connect(url, connect_timeout=2)
    try:
        await put_report(await ensure_reports_bucket(client.jetstream()), report)
    finally:
        await client.close()


def test_the_rebalancers_report_shows_in_the_job_status(
    cluster: Cluster, operator: OperatorProcess, bus: NatsServer | None, namespace: str
) -> None:
    if bus is None:
        missing(NATS_SERVER)
    cluster.kubectl.apply(training_job("balanced", namespace))
    wait_for("the job's plan in status", lambda: cluster.status(PLURAL, namespace, "balanced").get("plan"))

    report = RebalanceReport(namespace=namespace, job="balanced", plan_epoch=3, apply_at_step=120,
                             predicted_gain=0.21, utilization=0.913, world_size=4, ranks_reporting=4,
                             last_step=131, measured_at_unix_s=time.time())  # fmt: skip
    asyncio.run(_put(bus.url, report))
    shown = wait_for(
        "status.rebalance from the report",
        lambda: cluster.status(PLURAL, namespace, "balanced").get("rebalance"),
        timeout=60,  # the operator copies reports every 15 s
    )
    assert shown["epoch"] == 3 and shown["appliedAtStep"] == 120 and shown["predictedGain"] == 0.21
    assert shown["utilization"] == 0.913 and shown["ranksReporting"] == 4 and shown["lastStep"] == 131
    assert shown["lastUpdate"].endswith("Z") or "+00:00" in shown["lastUpdate"]

    later = report.model_copy(update={"plan_epoch": 4, "utilization": 0.95, "measured_at_unix_s": time.time()})
    asyncio.run(_put(bus.url, later))
    wait_for(
        "the newer report",
        lambda: (cluster.status(PLURAL, namespace, "balanced").get("rebalance") or {}).get("epoch") == 4,
        timeout=60,
    )
