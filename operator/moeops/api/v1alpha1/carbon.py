"""Carbon on the CRDs: `spec.carbon` of a MoETrainingJob (accounting and carbon-aware pausing), and `.status.carbon`
of a MoETrainingJob or an InferenceService: the energy and emissions charged to it so far.

Written by the operator only (`moeops.operator.handlers.carbon`), from the totals the carbon aggregator keeps in the
`moeops-carbon` KV bucket. Energies are IT energy as the meters saw it (GPU + CPU); the facility overhead (PUE) is in
the grams, which the ledger computes per energy delta with the grid intensity of its time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from .common import KubeModel


class CarbonSpec(KubeModel):
    """Carbon accounting and carbon-aware scheduling.

    No PUE here: the facility overhead is a property of the data centre, not of a job, so it is set once for the
    cluster (the carbon aggregator's `MOEOPS_CARBON_PUE`) and every job's grams use it. Likewise the intensity of a
    job's energy is the grid of the node it ran on; `region` is the grid the carbon gate watches."""

    enabled: bool = Field(
        default=True,
        description="Report this job's energy and gCO2e. `false`: the operator does not write `.status.carbon` (what "
        "is there stays), and a local `moeops train` run does not meter itself. The cluster's node agents still "
        "measure every pod (a node's energy is accounted whole), so the ledger keeps this job's figures.",
    )
    region: str | None = Field(
        default=None,
        max_length=128,
        description="Grid region for the carbon gate (`maxIntensity`), e.g. `DE` or `US-CAL`. The energy itself is "
        "charged at the grid of the node it was used on (the node agent's `MOEOPS_CARBON_REGION`) and with the data "
        "centre's PUE (the carbon aggregator's `MOEOPS_CARBON_PUE`): PUE is not a job setting.",
    )
    max_intensity: float | None = Field(
        default=None,
        gt=0.0,
        le=5000.0,
        description="gCO2e/kWh above which the job is checkpointed and suspended until the grid is cleaner. Only a "
        "live value counts (a time series the operator reads): the static table's yearly average says nothing about "
        "the grid now, so with it alone the gate is inactive (condition `IntensityStale`) and the job runs.",
    )
    hysteresis: float = Field(
        default=20.0,
        ge=0.0,
        le=1000.0,
        description="gCO2e/kWh: a carbon-paused job resumes once the intensity is below maxIntensity minus this "
        "band, so a grid hovering at the threshold does not pause and resume the job on every step of its series.",
    )
    min_dwell_seconds: int = Field(
        default=1800,
        ge=0,
        le=7 * 24 * 3600,
        description="After the gate pauses or resumes the job it does neither again for this long (each pause is "
        "a SIGTERM, a checkpoint and a restart). 0: no minimum.",
    )
    on_feed_loss: Literal["run", "pause"] = Field(
        default="run",
        description="What the gate does when its intensity feed is stale or missing (only the yearly average, a "
        "value past its time to live, or none): `run` (default) never pauses for it and resumes a job it paused; "
        "`pause` pauses the job until a live value is back. Either way the condition `IntensityStale` says so.",
    )


class CarbonIntensityStatus(KubeModel):
    """The grid carbon intensity applied to the newest energy, and where it came from."""

    value: float = Field(ge=0.0, description="Grams CO2-equivalent per kWh.")
    source: str = Field(description="Where the figure came from, e.g. a static table or a live provider.")
    region: str = Field(description="The grid region it is for.")
    valid_from: datetime | None = Field(default=None, description="From when the figure holds.")
    stale: bool = Field(default=False, description="A last-good value served past its time to live.")


class CarbonStatus(KubeModel):
    """Energy and emissions attributed to this workload so far (all stages: data, train, inference)."""

    energy_joules: float = Field(default=0.0, ge=0.0, description="IT energy (GPU + CPU), joules, before PUE.")
    gpu_energy_joules: float = Field(default=0.0, ge=0.0, description="GPU energy, joules.")
    cpu_energy_joules: float = Field(default=0.0, ge=0.0, description="CPU package energy, joules.")
    cpu_estimated: bool = Field(default=False, description="Some of the CPU energy is an estimate, not RAPL.")
    g_co2e: float = Field(
        default=0.0, ge=0.0, alias="gCO2e", description="Emissions, grams CO2-equivalent (energy × PUE × intensity)."
    )
    intensity: CarbonIntensityStatus | None = Field(default=None, description="The intensity last applied.")
    last_update: datetime | None = Field(default=None, description="Time of the newest energy folded in.")
