"""The PNG of `moeops carbon report`: gCO2e and energy per stage, side by side.

matplotlib's object API on an Agg canvas of its own: no pyplot, no global backend switch, no display needed.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from moeops.carbon.accounting.messages import WorkloadCarbon
from moeops.carbon.reporting.report import rows


def write_png(workload: WorkloadCarbon, path: Path) -> Path:
    """Two bar charts (gCO2e, kWh) with one bar per stage; written to `path` (its folder is created)."""
    stages = [row for row in rows(workload) if row.stage != "total"]
    names = [row.stage for row in stages]
    figure = Figure(figsize=(8, 3.5), layout="constrained")
    FigureCanvasAgg(figure)
    grams, energy = figure.subplots(1, 2)
    grams.bar(names, [row.gco2e for row in stages], color="tab:green")
    grams.set_title("emissions")
    grams.set_ylabel("gCO2e")
    energy.bar(names, [row.gpu_kwh for row in stages], label="GPU", color="tab:blue")
    energy.bar(names, [row.cpu_kwh for row in stages], bottom=[row.gpu_kwh for row in stages], label="CPU",
               color="tab:orange")  # fmt: skip
    energy.set_title("energy (before PUE)")
    energy.set_ylabel("kWh")
    energy.legend()
    figure.suptitle(f"{workload.kind.value} {workload.namespace}/{workload.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)
    return path
