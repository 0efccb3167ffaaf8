"""`.status.carbon` from a workload's totals in the carbon bucket (`WorkloadCarbon`, all its stages). Pure.

The figures are rounded (a millijoule, a microgram) so that the status the API server gives back compares equal to
a fresh computation from unchanged totals; `lastUpdate` is the newest delta's time, never the clock, so unchanged
totals give an unchanged status and the handler patches nothing. A job with `spec.carbon.enabled: false` gets no
`.status.carbon` written at all (`carbon_reported`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from moeops.api.v1alpha1.carbon import CarbonIntensityStatus, CarbonStatus
from moeops.carbon.accounting.messages import WorkloadCarbon

ENERGY_DIGITS = 3
GRAM_DIGITS = 6
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def carbon_reported(spec: Mapping[str, Any]) -> bool:
    """Whether `.status.carbon` is written for a workload with this spec: not when a MoETrainingJob says
    `spec.carbon.enabled: false` (an InferenceService has no `spec.carbon`: always)."""
    carbon = spec.get("carbon")
    return not isinstance(carbon, Mapping) or carbon.get("enabled", True) is not False


def carbon_status(workload: WorkloadCarbon) -> dict[str, Any]:
    """The wire form of `.status.carbon`; the intensity is the one of the stage updated last."""
    stages = list(workload.stages.values())
    newest = max(
        (totals for totals in stages if totals.last_update is not None),
        key=lambda totals: totals.last_update or EPOCH,
        default=None,
    )
    intensity = None if newest is None else newest.intensity
    return CarbonStatus(
        energy_joules=round(workload.energy_j, ENERGY_DIGITS),
        gpu_energy_joules=round(math.fsum(t.gpu_energy_j for t in stages), ENERGY_DIGITS),
        cpu_energy_joules=round(math.fsum(t.cpu_energy_j for t in stages), ENERGY_DIGITS),
        cpu_estimated=any(t.cpu_estimated for t in stages),
        g_co2e=round(workload.gco2e, GRAM_DIGITS),
        intensity=None
        if intensity is None
        else CarbonIntensityStatus(
            value=intensity.g_co2e_per_kwh,
            source=intensity.source,
            region=intensity.region,
            valid_from=intensity.valid_from,
            stale=intensity.stale,
        ),
        last_update=None if newest is None else newest.last_update,
    ).to_wire()
