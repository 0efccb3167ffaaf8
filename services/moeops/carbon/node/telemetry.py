"""Carbon accounting as OpenTelemetry metrics, following the hardware semantic conventions.

Instruments (all asynchronous: the SDK's reader calls back for the current values when it collects, so the reader
decides *when*, and whatever exporter it has decides *where*). This module sets up neither: as OpenTelemetry asks of
libraries, it instruments through the API only (`carbon_meter()`: `metrics.get_meter("moeops.carbon", version)`)
and the process's configured MeterProvider decides where the metrics go: the agent's and the aggregator's CLI call
`moeops.telemetry.setup`, which installs the SDK with an OTLP exporter when OTEL_EXPORTER_OTLP_ENDPOINT is set;
otherwise the global provider stays the API's no-op, which never calls back, so the instruments cost a few dict
updates per poll and nothing else. (The API's meter is a proxy: a
provider set later, even after the instruments were created, gets them.) The tests use `InMemoryMetricReader`.

The instruments:

    hw.energy                 Counter, J   cumulative GPU energy; attributes hw.id (the GPU's UUID), hw.type="gpu",
                                            hw.name (the model NVML names, where known: the semconv's recommended
                                            attribute), k8s.node.name, and on the energy attributed to a pod
                                            k8s.namespace.name and k8s.pod.name
    hw.power                  Gauge, W     the GPU's latest power draw (hw.id, hw.type, k8s.node.name)
    moeops.carbon.meter.state Gauge, 1     per GPU (hw.id, hw.type, k8s.node.name) and moeops.carbon.meter.state
                                            (metered, degraded, lost): 1 for the GPU's state, 0 for the others
                                            (`read_health.MeterState`: a given-up NVML reading shows here)
    moeops.carbon.meter.gap   Counter, s   per GPU: time its energy was not measured (resets, outages, given-up
                                            counter), cumulative
    moeops.carbon.meter.estimated Counter, J per GPU: the part of hw.energy estimated over those gaps
    moeops.carbon.emissions   Counter, g   cumulative gCO2e per workload, stage and intensity source:
                                            k8s.namespace.name, moeops.workload.kind, moeops.workload.name,
                                            moeops.stage, moeops.carbon.accounting.intensity.source

A GPU's energy is one set of data points that add up to the device's energy: one per pod it was attributed to,
and one without pod attributes for the rest (idle, unowned). Summing `hw.energy` over `hw.id` therefore gives
the device meter, never twice its energy.

Feeding it, at runtime (`cli.py` makes one `CarbonTelemetry(carbon_meter())` per process):

- the node agent: each call of its source (every commit, `agent.AgentSettings.commit_interval_s`) calls
  `record_poll` with each GPU's energy since the previous call, its latest power, and how much of the energy went to
  which pod: `NodeSource`'s `on_split` hook, `poll_telemetry.PollTelemetry`. In the NVML-only mode
  (`cli.nvml_idle_source`) each GPU's energy and power, all of it the node's.
- the aggregator: `record_totals` is `CarbonAggregator`'s `on_totals` (`cli.make_aggregator`): the totals of the
  workloads each commit touched, and all of them after a restore from the checkpoint.

Both may be called from another thread than the reader's: a lock guards the values.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Meter, Observation

from moeops.carbon.accounting.messages import WorkloadCarbon

METER_NAME = "moeops.carbon"
HW_ENERGY = "hw.energy"
HW_POWER = "hw.power"
EMISSIONS = "moeops.carbon.emissions"
METER_STATE = "moeops.carbon.meter.state"
METER_STATES = ("metered", "degraded", "lost")
METER_GAP = "moeops.carbon.meter.gap"
METER_ESTIMATED = "moeops.carbon.meter.estimated"

HW_ID = "hw.id"
HW_TYPE = "hw.type"
HW_NAME = "hw.name"
GPU = "gpu"
NODE_NAME = "k8s.node.name"
NAMESPACE_NAME = "k8s.namespace.name"
POD_NAME = "k8s.pod.name"
WORKLOAD_KIND = "moeops.workload.kind"
WORKLOAD_NAME = "moeops.workload.name"
STAGE = "moeops.stage"
INTENSITY_SOURCE = "moeops.carbon.accounting.intensity.source"
"""As the ledger labels it: a stale last-good value's source ends in " (stale)"."""

POD_EXPIRY_S = 600.0
"""A pod's energy data points are dropped after this long without new energy (it ended, or moved away)."""
ENERGY_SLACK = 1e-9
"""Relative rounding allowed when the pods' parts add up to a little more than the GPU's energy."""

Attributes = tuple[tuple[str, str], ...]
"""Hashable, ordered data-point attributes."""
Callback = Callable[[CallbackOptions], Iterable[Observation]]


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str


@dataclass(frozen=True)
class GpuReading:
    """One GPU over one poll of the node agent."""

    gpu_id: str
    """The GPU's (or MIG device's) UUID."""
    energy_j: float
    """Energy since the previous poll."""
    power_w: float | None = None
    """The latest power reading, if the GPU has one."""
    pods: Mapping[PodRef, float] = field(default_factory=dict)
    """The parts of `energy_j` attributed to pods (the rest is the node's)."""
    name: str = ""
    """The GPU's model as NVML names it (`hw.name`); empty where unknown."""

    def parts(self) -> dict[PodRef | None, float]:
        """`energy_j` per pod, and the rest under None; ValueError if the figures cannot be a split of it."""
        figures = [self.energy_j, *self.pods.values()]
        if not all(math.isfinite(j) and j >= 0.0 for j in figures):
            raise ValueError(f"GPU {self.gpu_id}: energies must be finite and >= 0, got {figures}")
        attributed = math.fsum(self.pods.values())
        if attributed > self.energy_j * (1.0 + ENERGY_SLACK):
            raise ValueError(f"GPU {self.gpu_id}: {attributed} J attributed of {self.energy_j} J measured")
        parts: dict[PodRef | None, float] = dict(self.pods.items())
        parts[None] = max(0.0, self.energy_j - attributed)
        return parts


@dataclass(frozen=True)
class MeterHealth:
    """One GPU's metering as of a poll: its state (one of `METER_STATES`) and its gaps so far (cumulative)."""

    gpu_id: str
    state: str
    gap_s: float = 0.0
    estimated_j: float = 0.0
    name: str = ""


def carbon_meter() -> Meter:
    """The carbon meter of the process's global MeterProvider (the API's no-op until the process configures one)."""
    try:
        release = version("moeops")
    except PackageNotFoundError:  # run from a source tree without the package installed
        release = ""
    return metrics.get_meter(METER_NAME, release)


def gpu_attributes(node: str, gpu_id: str, pod: PodRef | None = None, *, name: str = "") -> Attributes:
    base = ((HW_ID, gpu_id), (HW_TYPE, GPU), (NODE_NAME, node), *(((HW_NAME, name),) if name else ()))
    return base if pod is None else (*base, (NAMESPACE_NAME, pod.namespace), (POD_NAME, pod.name))


def emission_attributes(workload: WorkloadCarbon, stage: str, source: str) -> Attributes:
    return (
        (NAMESPACE_NAME, workload.namespace),
        (WORKLOAD_KIND, workload.kind.value),
        (WORKLOAD_NAME, workload.name),
        (STAGE, stage),
        (INTENSITY_SOURCE, source),
    )


class CarbonTelemetry:
    """The instruments on `meter` and the values they report (see the module docstring)."""

    def __init__(
        self, meter: Meter, *, pod_expiry_s: float = POD_EXPIRY_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._lock = threading.Lock()
        self._pod_expiry_s, self._clock = pod_expiry_s, clock
        self._pod_seen: dict[Attributes, float] = {}
        """When each pod's energy data point last grew: a pod gone that long stops being reported."""
        self._energy_j: dict[Attributes, float] = {}
        self._power_w: dict[Attributes, float] = {}
        self._grams: dict[Attributes, float] = {}
        self._states: dict[Attributes, float] = {}
        self._gap_s: dict[Attributes, float] = {}
        self._estimated_j: dict[Attributes, float] = {}
        meter.create_observable_counter(
            HW_ENERGY, [self._observe(self._energy_j)], unit="J", description="Energy consumed by the component."
        )
        meter.create_observable_gauge(
            HW_POWER, [self._observe(self._power_w)], unit="W", description="Instantaneous power consumed."
        )
        meter.create_observable_gauge(
            METER_STATE, [self._observe(self._states)], unit="1", description="The GPU's metering state (1: current)."
        )
        meter.create_observable_counter(
            METER_GAP, [self._observe(self._gap_s)], unit="s", description="Time the GPU's energy was not measured."
        )
        meter.create_observable_counter(
            METER_ESTIMATED, [self._observe(self._estimated_j)], unit="J", description="GPU energy estimated over gaps."
        )
        meter.create_observable_counter(
            EMISSIONS, [self._observe(self._grams)], unit="g", description="Emissions charged, grams CO2e."
        )

    def record_poll(self, node: str, readings: Iterable[GpuReading]) -> None:
        """One poll of a node agent: adds each GPU's energy, sets its power. A bad reading raises ValueError and
        changes nothing (the whole poll is checked first)."""
        checked = [(reading, reading.parts()) for reading in readings]
        now = self._clock()
        with self._lock:
            for reading, parts in checked:
                for pod, energy_j in parts.items():
                    key = gpu_attributes(node, reading.gpu_id, pod, name=reading.name)
                    self._energy_j[key] = self._energy_j.get(key, 0.0) + energy_j
                    if pod is not None and energy_j > 0:
                        self._pod_seen[key] = now
                if reading.power_w is not None and math.isfinite(reading.power_w):
                    self._power_w[gpu_attributes(node, reading.gpu_id, name=reading.name)] = reading.power_w
            self._expire_pods(now)

    def record_states(self, node: str, states: Iterable[MeterHealth]) -> None:
        """Each GPU's metering state, and its gaps so far, as of the poll just made."""
        with self._lock:
            for health in states:
                gpu = gpu_attributes(node, health.gpu_id, name=health.name)
                for candidate in METER_STATES:
                    self._states[(*gpu, (METER_STATE, candidate))] = 1.0 if candidate == health.state else 0.0
                self._gap_s[gpu] = max(health.gap_s, 0.0)
                self._estimated_j[gpu] = max(health.estimated_j, 0.0)

    def _expire_pods(self, now: float) -> None:
        # Pods come and go, a node's GPUs stay: without this the series of every pod a node ever ran would be
        # reported for ever (the cardinality leak exporters warn about). A backend keeps a series' last value.
        for key, seen in list(self._pod_seen.items()):
            if now - seen > self._pod_expiry_s:
                del self._pod_seen[key], self._energy_j[key]

    def record_totals(self, workloads: Iterable[WorkloadCarbon]) -> None:
        """The aggregator's totals (cumulative already: they replace what was there for each workload)."""
        with self._lock:
            for workload in workloads:
                for stage, totals in workload.stages.items():
                    for source, grams in totals.gco2e_by_source.items():
                        self._grams[emission_attributes(workload, stage.value, source)] = grams

    def _observe(self, values: dict[Attributes, float]) -> Callback:
        def callback(_: CallbackOptions) -> list[Observation]:
            with self._lock:
                return [Observation(value, dict(attributes)) for attributes, value in values.items()]

        return callback
