"""The PNG of `moeops carbon report`: gCO2e, energy (estimated part hatched) and mean intensity per stage, with PUE.

matplotlib's object API on an Agg canvas of its own: no pyplot, no global backend switch, no display needed.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from moeops.carbon.accounting.messages import WorkloadCarbon
from moeops.carbon.reporting.report import rows


def write_png(workload: WorkloadCarbon, path: Path) -> Path:
    """Three bar charts with one bar per stage: gCO2e, kWh (GPU, CPU, the estimated part hatched) and the
    energy-weighted mean intensity; the title names the PUE and the estimated share. Written to `path` (its folder is
    created)."""
    *stages, total = rows(workload)
    names = [row.stage for row in stages]
    figure = Figure(figsize=(11, 3.8), layout="constrained")
    FigureCanvasAgg(figure)
    grams, energy, intensity = figure.subplots(1, 3)
    grams.bar(names, [row.gco2e for row in stages], color="tab:green")
    grams.set_title("emissions")
    grams.set_ylabel("gCO2e")
    energy.bar(names, [row.gpu_kwh for row in stages], label="GPU", color="tab:blue")
    energy.bar(names, [row.cpu_kwh for row in stages], bottom=[row.gpu_kwh for row in stages], label="CPU",
               color="tab:orange")  # fmt: skip
    energy.bar(names, [row.estimated_kwh for row in stages], fill=False, hatch="//", edgecolor="black",
               label="estimated")  # fmt: skip
    energy.set_title("energy (before PUE)")
    energy.set_ylabel("kWh")
    energy.legend()
    intensity.bar(names, [row.mean_intensity or 0.0 for row in stages], color="tab:gray")
    intensity.set_title("mean intensity (energy-weighted)")
    intensity.set_ylabel("gCO2e/kWh")
    pue = "-" if total.pue is None else f"{total.pue:.2f}"
    figure.suptitle(f"{workload.kind.value} {workload.namespace}/{workload.name}: PUE {pue}, "
                    f"{100 * total.estimated_share:.1f}% of the energy estimated")  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)
    return path
