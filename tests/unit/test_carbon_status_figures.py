"""`.status.carbon` from a workload's totals: summed over stages, rounded, the newest stage's intensity."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from moeops.api.v1alpha1 import InferenceServiceStatus, MoETrainingJobStatus
from moeops.carbon.accounting.intensity import Intensity
from moeops.carbon.accounting.ledger import Stage, Totals, WorkloadKind
from moeops.carbon.accounting.messages import WorkloadCarbon
from moeops.operator.status.carbon import carbon_reported, carbon_status

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


def intensity(source: str, stale: bool = False) -> Intensity:
    return Intensity(g_co2e_per_kwh=120.5, source=source, region="FR", valid_from=T0, stale=stale)


def test_stages_summed_and_the_newest_intensity() -> None:
    older = Totals(energy_j=10.0001, gpu_energy_j=8.0, cpu_energy_j=2.0001, gco2e=0.1234567891, last_update=T0,
                   intensity=intensity("static"))  # fmt: skip
    newer = Totals(energy_j=5.0, gpu_energy_j=5.0, cpu_estimated=True, gco2e=0.2, last_update=T0.replace(hour=13),
                   intensity=intensity("live", stale=True))  # fmt: skip
    workload = WorkloadCarbon(namespace="ml", kind=WorkloadKind.INFERENCE_SERVICE, name="chat",
                              stages={Stage.INFERENCE: newer, Stage.DATA: older}, energy_j=15.0001,
                              gco2e=0.3234567891)  # fmt: skip
    status = carbon_status(workload)
    assert status == {
        "energyJoules": 15.0,
        "gpuEnergyJoules": 13.0,
        "cpuEnergyJoules": 2.0,
        "cpuEstimated": True,
        "gCO2e": 0.323457,
        "intensity": {
            "value": 120.5,
            "source": "live",
            "region": "FR",
            "validFrom": "2026-03-01T12:00:00Z",
            "stale": True,
        },
        "lastUpdate": "2026-03-01T13:00:00Z",
    }
    assert carbon_status(workload) == status  # no clock in it: unchanged totals, no patch
    for model in (MoETrainingJobStatus, InferenceServiceStatus):  # the wire form is what both schemas accept
        assert model.model_validate({"conditions": [], "carbon": status}).to_wire()["carbon"] == status


def test_status_carbon_is_written_unless_the_job_turns_carbon_off() -> None:
    assert carbon_reported({"carbon": {"enabled": True, "region": "DE"}})
    assert carbon_reported({"carbon": {"region": "DE"}})  # enabled defaults to true
    assert carbon_reported({"model": {"name": "chat"}})  # an InferenceService has no spec.carbon
    assert not carbon_reported({"carbon": {"enabled": False}})


def test_the_status_loop_neither_reads_nor_writes_a_job_with_carbon_off_fake_bus() -> None:
    from moeops.operator.handlers.status_sources import Context, carbon_fields  # here: importing registers handlers

    workload = WorkloadCarbon(namespace="ml", kind=WorkloadKind.TRAINING_JOB, name="j", stages={}, energy_j=0.0,
                              gco2e=0.0)  # fmt: skip

    class Reader:
        reads = 0

        async def read(self, *_: object) -> WorkloadCarbon:
            self.reads += 1
            return workload

    for enabled, reads in ((False, 0), (True, 1)):
        reader = Reader()
        ctx = Context(reader=reader, kube=None, cfg=None)  # type: ignore[arg-type]
        body = {"kind": "MoETrainingJob", "metadata": {"namespace": "ml", "name": "j", "uid": "u"},
                "spec": {"carbon": {"enabled": enabled}}, "status": {}}  # fmt: skip
        update = asyncio.run(carbon_fields(ctx, body))
        assert reader.reads == reads
        assert ("carbon" in (update.patch if update else {})) is enabled
