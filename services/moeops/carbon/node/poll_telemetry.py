"""The node agent's polls into `telemetry.CarbonTelemetry`: per GPU, its energy since the previous poll, its latest
power and the parts of that energy attribution charged to pods.

`PollTelemetry` is `NodeSource`'s `on_split` hook. At every call of the source (every commit of the agent, see
`agent.py`) the source hands it the interval's split per device (`attribution.Split`: idle, unowned, consumers) and
the pods it knows by UID; the hook then calls `CarbonTelemetry.record_poll` with one `GpuReading` per GPU:

- energy: the GPU's cumulative energy (`NvmlReader.report()`) less its value at the previous call, as the source
  computes its intervals (from the same report: nothing polls NVML between the source's reading and the hook);
- power: the reader's latest power reading of the GPU (None where NVML gives none);
- pods: the GPU's consumers by pod (a MIG parent's: those of its busy instances, under the parent's UUID, so that
  `hw.id` is always a physical GPU); a container known only by its cgroup is its pod by UID from the pod list, or
  `_unresolved`/`pod-<uid>` as the ledger books it. The rest (idle power, unowned, a MIG parent's energy while no
  instance is busy) is the node's: the data point without pod attributes.

The hook runs inside the source's `_guard` (a failure is counted in `degraded["telemetry"]`, never loses the
poll's deltas). The meter comes from the OpenTelemetry API (`telemetry.carbon_meter()`): with no MeterProvider
configured in the process, the API's no-op provider reads nothing, and the hook costs a few dict updates a commit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from moeops.carbon.meter.attribution import UNRESOLVED_NAMESPACE, PodInfo, Split
from moeops.carbon.meter.energy import IDLE
from moeops.carbon.meter.nvml_reader import GpuEnergy, NvmlReader
from moeops.carbon.node.node_source import Consumer
from moeops.carbon.node.telemetry import CarbonTelemetry, GpuReading, MeterHealth, PodRef
from moeops.carbon.podresources.devices import ContainerRef


def pod_ref(consumer: Consumer, pods_by_uid: Mapping[str, PodInfo]) -> PodRef:
    """The pod of a consumer: by name from the kubelet, by UID from the pod list, else unresolved (as the ledger)."""
    if isinstance(consumer, ContainerRef):
        return PodRef(consumer.namespace, consumer.pod)
    pod = pods_by_uid.get(consumer.pod_uid)
    return PodRef(UNRESOLVED_NAMESPACE, f"pod-{consumer.pod_uid}") if pod is None else PodRef(pod.namespace, pod.name)


def _within(energy_j: float, pods: dict[PodRef, float]) -> dict[PodRef, float]:
    """The pods' parts, scaled down where rounding (a MIG parent's instances summed apart from its meter) made them
    a little more than the GPU's energy: `GpuReading` would refuse them, and the whole poll with them."""
    attributed = math.fsum(pods.values())
    if attributed <= energy_j:
        return pods
    scale = energy_j / attributed
    return {pod: part_j * scale for pod, part_j in pods.items()}


def gpu_readings(
    report: Iterable[GpuEnergy],
    previous_j: dict[str, float],
    splits: Mapping[str, Split[Consumer]],
    pods_by_uid: Mapping[str, PodInfo],
) -> list[GpuReading]:
    """One reading per GPU whose energy is known; `previous_j` (GPU UUID → cumulative J at the previous call) is
    updated. `splits`: device id (GPU or MIG device UUID) → its split over the same interval."""
    gpus = list(report)
    parent = {instance: gpu.gpu.uuid for gpu in gpus for instance in gpu.mig_j if instance != IDLE}
    parts: dict[str, dict[PodRef, list[float]]] = {}
    for device, split in splits.items():
        by_pod = parts.setdefault(parent.get(device, device), {})
        for consumer, energy_j in split.consumers_j.items():
            by_pod.setdefault(pod_ref(consumer, pods_by_uid), []).append(energy_j)
    readings = []
    for gpu in gpus:
        total_j, uuid = gpu.energy.energy_j, gpu.gpu.uuid
        if total_j is None:  # unknown energy is not 0 J: no reading (the source books none either)
            continue
        energy_j = max(total_j - previous_j.get(uuid, 0.0), 0.0)
        previous_j[uuid] = max(total_j, previous_j.get(uuid, 0.0))  # a withdrawn estimate: nothing until made up
        pods = {pod: math.fsum(values) for pod, values in parts.get(uuid, {}).items()}
        readings.append(GpuReading(uuid, energy_j, gpu.energy.last_power_w, _within(energy_j, pods), gpu.gpu.name))
    return readings


class PollTelemetry:
    """`NodeSource(on_split=PollTelemetry(telemetry, node, reader))`: each call of the source into `telemetry`
    (see the module docstring). `reader` is the source's own: the energy since the previous call is read from it."""

    def __init__(self, telemetry: CarbonTelemetry, node: str, reader: NvmlReader) -> None:
        self._telemetry, self._node, self._reader = telemetry, node, reader
        self._previous_j: dict[str, float] = {}

    def __call__(self, splits: Mapping[str, Split[Consumer]], pods_by_uid: Mapping[str, PodInfo]) -> None:
        report = self._reader.report()
        self._telemetry.record_states(self._node, [
            MeterHealth(gpu.gpu.uuid, gpu.state.value, gpu.energy.gap_s, gpu.energy.estimated_j, gpu.gpu.name)
            for gpu in report
        ])  # fmt: skip
        readings = gpu_readings(report, self._previous_j, splits, pods_by_uid)
        self._telemetry.record_poll(self._node, readings)
