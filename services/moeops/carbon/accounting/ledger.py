"""The carbon ledger: energy deltas in, energy and gCO2e per workload and stage out. Pure: no I/O, no clock.

A delta is the energy one meter (a node's GPU, or its CPU package) measured over a short interval, charged to one
workload key (namespace, kind, name, stage) or to the node's idle energy. Idle energy is kept per node and never
charged to a workload: it is the cluster's cost of being on, not any job's.

Carbon is computed per delta, as kWh × PUE × grid intensity at the delta's time, so a day's total follows the grid
as it changes; each figure keeps the `Intensity` it used (source, region, value, valid-from) and the totals keep
how many grams came from each source, so a figure built on a stale or fallback value can be told apart.

Replays. Each delta carries `DeltaId(source, epoch, sequence)`: `source` names one meter, `epoch` one run of it
(e.g. its start time in ns: a restarted meter counts its sequence from 0 again), `sequence` increases by one per
delta within a run. The ledger keeps per source only the highest (epoch, sequence) applied, and ignores any delta at
or below it: replaying the stream after a restart is a no-op. Why a high-water mark and not a set of seen ids: the
set grows with every delta forever (millions a day), while the marks grow with the number of meters (nodes × GPUs),
and the stream delivers one meter's deltas in order (one subject per meter), so nothing below the mark is new. The
price: a delta that arrives after a later one from the same meter is dropped; `prune_sources` forgets meters not
heard from since a time (call it with a time beyond the stream's retention, or a replay would count them again).

Invalid input (negative or non-finite energy, an unknown stage or kind, a naive timestamp) raises a pydantic
`ValidationError` (a `ValueError`) when the delta is built, and an intensity lookup that fails raises before
anything changes: a rejected delta never leaves a partial total or moves a mark.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from moeops.carbon.accounting.intensity import Intensity, IntensitySource

J_PER_KWH = 3.6e6
DEFAULT_PUE = 1.56
"""Power usage effectiveness (facility energy / IT energy): the industry-average PUE of 1.56 reported by the Uptime
Institute's Global Data Center Survey 2024 (https://uptimeinstitute.com/resources/research-and-reports/
uptime-institute-global-data-center-survey-results-2024). A cloud region's own published PUE (often 1.1–1.2) is
better when known."""
SNAPSHOT_VERSION: Final = 1

NonNegative = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
"""Energies and grams: a negative or non-finite one is refused, never summed into a total."""


class Stage(StrEnum):
    """What the energy was spent on."""

    DATA = "data"
    TRAIN = "train"
    INFERENCE = "inference"


class WorkloadKind(StrEnum):
    """The kind of the object the energy is charged to (`OTHER`: a pod no moeops resource owns)."""

    TRAINING_JOB = "MoETrainingJob"
    INFERENCE_SERVICE = "InferenceService"
    OTHER = "other"


class _Frozen(BaseModel):
    """Immutable and strict about unknown fields: a typo in a restored snapshot is an error, not a zero."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class WorkloadKey(_Frozen):
    """Whom energy is charged to."""

    namespace: str = Field(min_length=1)
    kind: WorkloadKind
    name: str = Field(min_length=1)
    stage: Stage


class DeltaId(_Frozen):
    """A delta's identity: the meter, its run, and the delta's place in that run (see the module docstring)."""

    source: str = Field(min_length=1)
    epoch: int = Field(ge=0)
    sequence: int = Field(ge=0)

    @property
    def position(self) -> tuple[int, int]:
        """Order within a source: a new epoch comes after every sequence of the previous one."""
        return self.epoch, self.sequence


class EnergyDelta(_Frozen):
    """Energy one meter measured over an interval ending at `at`, charged to `key` (None: the node was idle)."""

    id: DeltaId
    node: str = Field(min_length=1)
    region: str = Field(min_length=1)
    """The grid region of the node (a key of the intensity source)."""
    at: AwareDatetime
    """End of the measured interval. Intervals last seconds and intensities steps of minutes, so the intensity at
    the end stands for the whole interval."""
    key: WorkloadKey | None
    gpu_energy_j: NonNegative
    cpu_energy_j: NonNegative
    cpu_estimated: bool = False
    """The CPU part is an estimate (e.g. TDP × utilisation) rather than a RAPL measurement."""
    gpu_estimated_j: NonNegative = 0.0
    """The part of `gpu_energy_j` that is an estimate (power across a counter reset or outage, a long power gap)."""

    @property
    def energy_j(self) -> float:
        """IT energy (GPU + CPU): what the meters saw, before the facility overhead that PUE accounts for."""
        return self.gpu_energy_j + self.cpu_energy_j


def carbon_g(energy_j: float, pue: float, intensity: Intensity) -> float:
    """gCO2e of `energy_j` of IT energy: kWh × PUE × intensity (3.6e6 J at PUE 1.5 and 400 g/kWh → 600 g)."""
    return energy_j / J_PER_KWH * pue * intensity.g_co2e_per_kwh


def _source_label(intensity: Intensity) -> str:
    return f"{intensity.source} (stale)" if intensity.stale else intensity.source


class Charge(_Frozen):
    """The figures of one applied delta, with the intensity and PUE they used (for publishing or auditing)."""

    id: DeltaId
    key: WorkloadKey | None
    node: str
    energy_j: float
    gco2e: float
    pue: float
    intensity: Intensity


class Totals(_Frozen):
    """Accumulated figures of one workload key (or one node's idle energy)."""

    energy_j: NonNegative = 0.0
    gpu_energy_j: NonNegative = 0.0
    cpu_energy_j: NonNegative = 0.0
    cpu_estimated: bool = False
    """Some of `cpu_energy_j` is an estimate (sticky: once estimated, the total is in part an estimate)."""
    gpu_estimated_j: NonNegative = 0.0
    """The part of `gpu_energy_j` estimated rather than measured (see `EnergyDelta.gpu_estimated_j`)."""
    cpu_estimated_j: NonNegative = 0.0
    """The CPU energy of deltas whose CPU part was an estimate."""
    facility_energy_j: NonNegative = 0.0
    """IT energy × PUE, summed per delta: what the grams were computed on (`pue`, `mean_intensity`)."""
    gco2e: NonNegative = 0.0
    gco2e_by_source: dict[str, float] = Field(default_factory=dict)
    """Grams per intensity source ("… (stale)" for stale values): how much of `gco2e` rests on which numbers."""
    last_update: AwareDatetime | None = None
    """The latest delta time folded in."""
    intensity: Intensity | None = None
    """The intensity of the last delta applied."""

    @property
    def estimated_j(self) -> float:
        """The part of `energy_j` that is an estimate (GPU spans power stood in for, CPU without RAPL)."""
        return self.gpu_estimated_j + self.cpu_estimated_j

    @property
    def pue(self) -> float | None:
        """The energy-weighted PUE the grams used; None without energy (or from totals older than the field)."""
        return self.facility_energy_j / self.energy_j if self.energy_j > 0 and self.facility_energy_j > 0 else None

    @property
    def mean_intensity(self) -> float | None:
        """The energy-weighted mean grid intensity (gCO2e per facility kWh) behind `gco2e`: each delta's intensity
        weighted by its energy, where the last delta's `intensity` is only the newest one."""
        if self.facility_energy_j <= 0:
            return None
        return self.gco2e / (self.facility_energy_j / J_PER_KWH)

    def add(self, delta: EnergyDelta, charge: Charge) -> Totals:
        """These totals with one more delta (a new object: a failure half-way changes nothing)."""
        label = _source_label(charge.intensity)
        by_source = dict(self.gco2e_by_source)
        by_source[label] = by_source.get(label, 0.0) + charge.gco2e
        latest = delta.at if self.last_update is None else max(self.last_update, delta.at)
        return Totals(
            energy_j=self.energy_j + delta.energy_j,
            gpu_energy_j=self.gpu_energy_j + delta.gpu_energy_j,
            cpu_energy_j=self.cpu_energy_j + delta.cpu_energy_j,
            cpu_estimated=self.cpu_estimated or delta.cpu_estimated,
            gpu_estimated_j=self.gpu_estimated_j + delta.gpu_estimated_j,
            cpu_estimated_j=self.cpu_estimated_j + (delta.cpu_energy_j if delta.cpu_estimated else 0.0),
            facility_energy_j=self.facility_energy_j + delta.energy_j * charge.pue,
            gco2e=self.gco2e + charge.gco2e,
            gco2e_by_source=by_source,
            last_update=latest,
            intensity=charge.intensity,
        )


class SourceMark(_Frozen):
    """The highest delta applied from one meter, and the time of the latest one (for pruning)."""

    epoch: int = Field(ge=0)
    sequence: int = Field(ge=0)
    last_seen: AwareDatetime


class WorkloadEntry(_Frozen):
    """One key's totals in a snapshot (JSON objects cannot have a `WorkloadKey` as a key)."""

    key: WorkloadKey
    totals: Totals


class LedgerSnapshot(_Frozen):
    """The whole ledger as plain data (`model_dump(mode="json")` is JSON-ready)."""

    version: Literal[1] = SNAPSHOT_VERSION
    pue: float = Field(ge=1.0, allow_inf_nan=False)
    sources: dict[str, SourceMark]
    workloads: list[WorkloadEntry]
    idle: dict[str, Totals]

    @model_validator(mode="after")
    def _one_entry_per_key(self) -> Self:
        keys = [entry.key for entry in self.workloads]
        if len(set(keys)) != len(keys):
            raise ValueError("a workload key appears twice in the snapshot")
        return self


class CarbonLedger:
    """Totals per workload key and idle totals per node, fed by `apply` (see the module docstring)."""

    def __init__(self, intensity: IntensitySource, *, pue: float = DEFAULT_PUE) -> None:
        self._intensity = intensity
        if not (math.isfinite(pue) and pue >= 1.0):
            raise ValueError(f"PUE is facility energy over IT energy, finite and >= 1; got {pue}")
        self._pue = pue
        self._marks: dict[str, SourceMark] = {}
        self._workloads: dict[WorkloadKey, Totals] = {}
        self._idle: dict[str, Totals] = {}

    @property
    def pue(self) -> float:
        return self._pue

    def is_applied(self, delta_id: DeltaId) -> bool:
        """Whether a delta with this id is at or below its source's mark (applying it would be a no-op)."""
        mark = self._marks.get(delta_id.source)
        return mark is not None and delta_id.position <= (mark.epoch, mark.sequence)

    def apply(self, delta: EnergyDelta) -> Charge | None:
        """Fold one delta in; its `Charge`, or None if it was applied before (a replay).

        Raises `IntensityUnavailableError` (from the source) without changing anything when no intensity is known
        for the delta's region and time.
        """
        if self.is_applied(delta.id):
            return None
        intensity = self._intensity.intensity_at(delta.region, delta.at)
        charge = Charge(
            id=delta.id,
            key=delta.key,
            node=delta.node,
            energy_j=delta.energy_j,
            gco2e=carbon_g(delta.energy_j, self._pue, intensity),
            pue=self._pue,
            intensity=intensity,
        )
        previous = self._marks.get(delta.id.source)
        seen = delta.at if previous is None else max(previous.last_seen, delta.at)
        mark = SourceMark(epoch=delta.id.epoch, sequence=delta.id.sequence, last_seen=seen)
        # Everything that can fail (the lookup, validating the new totals) runs before the first assignment.
        if delta.key is None:
            self._idle[delta.node] = self._idle.get(delta.node, Totals()).add(delta, charge)
        else:
            self._workloads[delta.key] = self._workloads.get(delta.key, Totals()).add(delta, charge)
        self._marks[delta.id.source] = mark
        return charge

    def totals(self, key: WorkloadKey) -> Totals:
        """The key's totals (zero if nothing was charged to it)."""
        return self._workloads.get(key, Totals())

    def workloads(self) -> Mapping[WorkloadKey, Totals]:
        """Every charged key and its totals (a copy)."""
        return dict(self._workloads)

    def idle(self, node: str) -> Totals:
        """The node's idle totals (zero if none)."""
        return self._idle.get(node, Totals())

    def idle_nodes(self) -> Mapping[str, Totals]:
        """Idle totals of every node (a copy)."""
        return dict(self._idle)

    def prune_sources(self, before: datetime) -> int:
        """Forget the marks of meters last heard from before `before`; how many were forgotten.

        Only safe beyond the stream's retention: a forgotten meter's old deltas would otherwise count again.
        """
        stale = [source for source, mark in self._marks.items() if mark.last_seen < before]
        for source in stale:
            del self._marks[source]
        return len(stale)

    def snapshot(self) -> dict[str, Any]:
        """The ledger as a JSON-ready dict (for the aggregator to persist; `restore` reads it back)."""
        return LedgerSnapshot(
            pue=self._pue,
            sources=self._marks,
            workloads=[WorkloadEntry(key=key, totals=totals) for key, totals in self._workloads.items()],
            idle=self._idle,
        ).model_dump(mode="json")

    @classmethod
    def restore(cls, data: Mapping[str, Any], intensity: IntensitySource) -> CarbonLedger:
        """A ledger from `snapshot()`'s output; raises a `ValidationError` (a `ValueError`) on malformed data."""
        snapshot = LedgerSnapshot.model_validate(data)
        ledger = cls(intensity, pue=snapshot.pue)
        ledger._marks = dict(snapshot.sources)
        ledger._workloads = {entry.key: entry.totals for entry in snapshot.workloads}
        ledger._idle = dict(snapshot.idle)
        return ledger
