"""The carbon aggregator's totals for a workload reach `.status.carbon` through the operator (real control plane,
real nats-server: the test writes the totals the way the aggregator does, into the `moeops-carbon` KV bucket)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import nats
from harness import Cluster, OperatorProcess, wait_for
from manifests import training_job

from missing import NATS_SERVER, missing
from moeops.carbon.accounting.intensity import Intensity
from moeops.carbon.accounting.ledger import Stage, Totals, WorkloadKind
from moeops.carbon.accounting.messages import WorkloadCarbon
from moeops.carbon.accounting.store import ensure_carbon_bucket, put_workload
from moeops.devcluster.nats_server import NatsServer
from moeops.operator.naming import FIELD_MANAGER

PLURAL = "moetrainingjobs"
AT = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
INTENSITY = Intensity(g_co2e_per_kwh=380.0, source="static:ember-2023", region="DE", valid_from=datetime(2023, 1, 1,
                      tzinfo=UTC))  # fmt: skip


def totals(namespace: str, name: str) -> WorkloadCarbon:
    data = Totals(energy_j=1000.0, gpu_energy_j=800.0, cpu_energy_j=200.0, gco2e=0.1,
                  gco2e_by_source={"static:ember-2023": 0.1}, last_update=AT, intensity=INTENSITY)  # fmt: skip
    train = Totals(energy_j=7.2e6, gpu_energy_j=6.0e6, cpu_energy_j=1.2e6, cpu_estimated=True, gco2e=1185.6,
                   gco2e_by_source={"static:ember-2023": 1185.6}, last_update=AT.replace(minute=45),
                   intensity=INTENSITY)  # fmt: skip
    return WorkloadCarbon(namespace=namespace, kind=WorkloadKind.TRAINING_JOB, name=name,
                          stages={Stage.DATA: data, Stage.TRAIN: train}, energy_j=7201000.0, gco2e=1185.7)  # fmt: skip


async def _put(url: str, workload: WorkloadCarbon) -> None:
    client = await nats.connect(url, connect_timeout=2)
    try:
        await put_workload(await ensure_carbon_bucket(client.jetstream()), workload)
    finally:
        await client.close()


def test_the_carbon_totals_show_in_the_job_status(
    cluster: Cluster, operator: OperatorProcess, bus: NatsServer | None, namespace: str
) -> None:
    if bus is None:
        missing(NATS_SERVER)
    asyncio.run(_put(bus.url, totals(namespace, "counted")))  # before the job: its first timer tick reads them
    cluster.kubectl.apply(training_job("counted", namespace))
    shown = wait_for(
        "status.carbon from the totals",
        lambda: cluster.status(PLURAL, namespace, "counted").get("carbon"),
        timeout=45,  # the status loop reads the carbon totals every 30 s
    )
    assert shown["energyJoules"] == 7201000 and shown["gpuEnergyJoules"] == 6000800
    assert shown["cpuEnergyJoules"] == 1200200 and shown["cpuEstimated"] is True
    assert shown["gCO2e"] == 1185.7
    assert shown["intensity"] == {"value": 380, "source": "static:ember-2023", "region": "DE",
                                  "validFrom": "2023-01-01T00:00:00Z", "stale": False}  # fmt: skip
    assert shown["lastUpdate"] == "2026-03-01T12:45:00Z"  # the newest delta's time, never the operator's clock

    job = cluster.get(PLURAL, namespace, "counted") or {}
    writers = [entry for entry in job["metadata"]["managedFields"] if "f:carbon" in entry.get("fieldsV1", {}).get(
        "f:status", {})]  # fmt: skip
    # The operator's own status write (the status loop, handlers/status_loop.py), not kopf's.
    assert [(w["manager"], w["operation"], w.get("subresource")) for w in writers] == [(FIELD_MANAGER, "Update",
                                                                                          "status")]  # fmt: skip


def test_a_job_with_carbon_off_gets_no_status_carbon(
    cluster: Cluster, operator: OperatorProcess, bus: NatsServer | None, namespace: str
) -> None:
    if bus is None:
        missing(NATS_SERVER)
    for name in ("quiet", "loud"):
        asyncio.run(_put(bus.url, totals(namespace, name)))
    cluster.kubectl.apply(training_job("quiet", namespace, {"carbon": {"enabled": False}}))
    cluster.kubectl.apply(training_job("loud", namespace))
    wait_for("status.carbon of the job with carbon on", lambda: cluster.status(PLURAL, namespace, "loud").get("carbon"),
             timeout=45)  # fmt: skip
    # One pass of the status loop reads both jobs: the loud one's has come, so the quiet one's too.
    assert "carbon" not in cluster.status(PLURAL, namespace, "quiet")
