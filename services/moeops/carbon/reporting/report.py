"""`moeops carbon report`: one workload's totals per stage as a table or JSON. Pure: totals in, text out.

Per stage and in total: IT energy (GPU, CPU), the share of it that is an estimate (GPU spans that power stood in
for, CPU without RAPL), the PUE and the energy-weighted mean grid intensity the grams were computed with (every
delta's intensity weighted by its energy: the last intensity alone says nothing about a day-long job), the grams,
and the newest intensity with its source.

The totals come from the aggregator's KV bucket (`WorkloadCarbon`, read by `report_cli`) or, for a local run without
NATS, from a ledger snapshot file (`CarbonLedger.snapshot()`, or the aggregator's checkpoint document that wraps
one under `ledger`): `from_snapshot` groups the snapshot's entries of the workload the way the aggregator does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from moeops.carbon.accounting.intensity import Intensity
from moeops.carbon.accounting.ledger import J_PER_KWH, LedgerSnapshot, Stage, Totals, WorkloadKind
from moeops.carbon.accounting.messages import WorkloadCarbon, workload_totals

COLUMNS = ("stage", "energy kWh", "GPU kWh", "CPU kWh", "gCO2e", "estimated", "PUE", "mean g/kWh", "last intensity")
ESTIMATED = " (est.)"


def from_snapshot(data: Mapping[str, Any], namespace: str, kind: WorkloadKind, name: str) -> WorkloadCarbon | None:
    """The workload's totals in a ledger snapshot (or a checkpoint holding one); None if it has none.
    Raises a pydantic `ValidationError` (a `ValueError`) for a document that is neither."""
    snapshot = LedgerSnapshot.model_validate(data.get("ledger", data))
    entries = {
        entry.key: entry.totals
        for entry in snapshot.workloads
        if (entry.key.namespace, entry.key.kind, entry.key.name) == (namespace, kind, name)
    }
    found = workload_totals(entries)
    return found[0] if found else None


@dataclass(frozen=True)
class Row:
    stage: str
    energy_kwh: float
    gpu_kwh: float
    cpu_kwh: float
    cpu_estimated: bool
    gco2e: float
    intensity: str
    """The newest intensity applied, with its source."""
    estimated_kwh: float = 0.0
    pue: float | None = None
    mean_intensity: float | None = None
    """Energy-weighted mean gCO2e per facility kWh."""

    @property
    def estimated_share(self) -> float:
        return self.estimated_kwh / self.energy_kwh if self.energy_kwh > 0 else 0.0

    def cells(self) -> tuple[str, ...]:
        cpu = f"{self.cpu_kwh:.4f}" + (ESTIMATED if self.cpu_estimated else "")
        return (
            self.stage,
            f"{self.energy_kwh:.4f}",
            f"{self.gpu_kwh:.4f}",
            cpu,
            f"{self.gco2e:.2f}",
            f"{100 * self.estimated_share:.1f}%",
            "-" if self.pue is None else f"{self.pue:.2f}",
            "-" if self.mean_intensity is None else f"{self.mean_intensity:.1f}",
            self.intensity,
        )

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "estimated_share": self.estimated_share}


def intensity_label(intensity: Intensity | None) -> str:
    if intensity is None:
        return "-"
    stale = ", stale" if intensity.stale else ""
    return f"{intensity.g_co2e_per_kwh:g} g/kWh ({intensity.source}, {intensity.region}{stale})"


def _row(stage: str, totals: Totals) -> Row:
    return Row(
        stage=stage,
        energy_kwh=totals.energy_j / J_PER_KWH,
        gpu_kwh=totals.gpu_energy_j / J_PER_KWH,
        cpu_kwh=totals.cpu_energy_j / J_PER_KWH,
        cpu_estimated=totals.cpu_estimated,
        gco2e=totals.gco2e,
        intensity=intensity_label(totals.intensity),
        estimated_kwh=totals.estimated_j / J_PER_KWH,
        pue=totals.pue,
        mean_intensity=totals.mean_intensity,
    )


def rows(workload: WorkloadCarbon) -> list[Row]:
    """One row per stage that has energy (in the order data, train, inference), then the total."""
    present = [stage for stage in Stage if stage in workload.stages]
    stages = [_row(stage.value, workload.stages[stage]) for stage in present]
    facility_j = math.fsum(workload.stages[stage].facility_energy_j for stage in present)
    total = Row(
        stage="total",
        energy_kwh=workload.energy_j / J_PER_KWH,
        gpu_kwh=math.fsum(row.gpu_kwh for row in stages),
        cpu_kwh=math.fsum(row.cpu_kwh for row in stages),
        cpu_estimated=any(row.cpu_estimated for row in stages),
        gco2e=workload.gco2e,
        intensity="",
        estimated_kwh=math.fsum(row.estimated_kwh for row in stages),
        pue=facility_j / workload.energy_j if workload.energy_j > 0 and facility_j > 0 else None,
        mean_intensity=workload.gco2e / (facility_j / J_PER_KWH) if facility_j > 0 else None,
    )
    return [*stages, total]


def table(workload: WorkloadCarbon) -> str:
    """A plain-text table: a title line, the header, one line per stage and the total."""
    lines = [COLUMNS, *(row.cells() for row in rows(workload))]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in lines]
    title = f"{workload.kind.value} {workload.namespace}/{workload.name}"
    return "\n".join([title, *text]) + "\n"


def as_json(workload: WorkloadCarbon) -> dict[str, Any]:
    """The table as a JSON-ready document: the workload, a row per stage, the total (energies in kWh)."""
    *stages, total = rows(workload)
    return {
        "kind": workload.kind.value,
        "namespace": workload.namespace,
        "name": workload.name,
        "stages": [row.as_json() for row in stages],
        "total": total.as_json(),
    }
