"""Who holds which GPU: the pure part of the pod-resources client (no gRPC here), and its TTL cache.

The kubelet answers `List` with pods → containers → devices {resource_name, device_ids}. For the NVIDIA device
plugin (its default `DEVICE_ID_STRATEGY=uuid`) the ids of `nvidia.com/gpu` are GPU UUIDs (`GPU-…`) and those of
`nvidia.com/mig-<profile>` MIG device UUIDs (`MIG-…`); with the plugin's time-slicing or MPS sharing each replica
is `<uuid>::<n>`, so several containers hold the same GPU. `device_map` strips the replica suffix (as the DCGM
exporter does) and maps each device id to every container holding it, in a stable order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

GPU_RESOURCE = "nvidia.com/gpu"
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"
REPLICA_SEPARATOR = "::"


@dataclass(frozen=True, order=True)
class ContainerRef:
    """A container by name, as the kubelet reports it."""

    namespace: str
    pod: str
    container: str


@dataclass(frozen=True, order=True)
class CgroupRef:
    """A container known only from a process's cgroup (the fallback without the kubelet socket): the pod's UID and
    the runtime's container id. The pod's name and namespace need the API server (pods by `metadata.uid`)."""

    pod_uid: str
    container_id: str | None
    runtime: str | None = None
    """`containerd`, `cri-o` or `docker` where the cgroup name says it (systemd driver); None for cgroupfs."""


@dataclass(frozen=True)
class AssignedDevices:
    """One container's devices of one resource, as `List` reports them (plain values, not protobuf)."""

    container: ContainerRef
    resource_name: str
    device_ids: tuple[str, ...]


DeviceMap: TypeAlias = Mapping[str, tuple[ContainerRef, ...]]
"""GPU or MIG UUID → the containers it is assigned to (more than one only when the GPU is shared)."""


def is_gpu_resource(resource_name: str) -> bool:
    return resource_name == GPU_RESOURCE or resource_name.startswith(MIG_RESOURCE_PREFIX)


def device_uuid(device_id: str) -> str:
    """`GPU-abc::3` (replica 3 of a shared GPU) → `GPU-abc`; any other id unchanged."""
    return device_id.split(REPLICA_SEPARATOR, 1)[0]


def device_map(
    assigned: Iterable[AssignedDevices], *, resource_filter: Callable[[str], bool] = is_gpu_resource
) -> dict[str, tuple[ContainerRef, ...]]:
    """Device id → the containers holding it, for the resources `resource_filter` accepts. Empty ids are skipped."""
    holders: dict[str, set[ContainerRef]] = {}
    for entry in assigned:
        if not resource_filter(entry.resource_name):
            continue
        for device_id in entry.device_ids:
            if uuid := device_uuid(device_id):
                holders.setdefault(uuid, set()).add(entry.container)
    return {uuid: tuple(sorted(refs)) for uuid, refs in sorted(holders.items())}


@dataclass
class CachedDeviceMap:
    """`fetch()` at most once per `ttl_s`: pods come and go in seconds, energy is polled ten times a second, and
    the kubelet should not answer a `List` per poll. A failed refresh raises (the caller decides to fall back), and
    the next `get()` tries again rather than waiting out a TTL; `invalidate()` forces a refresh (e.g. when NVML
    shows a process on a GPU the map gives to nobody)."""

    fetch: Callable[[], DeviceMap]
    ttl_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    refreshes: int = 0
    _value: DeviceMap | None = field(default=None, init=False)
    _fetched_at_s: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.ttl_s < 0:
            raise ValueError(f"ttl_s must not be negative, got {self.ttl_s}")

    def get(self) -> DeviceMap:
        now_s = self.clock()
        if self._value is None or self._fetched_at_s is None or now_s - self._fetched_at_s >= self.ttl_s:
            self._value = self.fetch()
            self._fetched_at_s = now_s
            self.refreshes += 1
        return self._value

    def invalidate(self) -> None:
        self._value = None
        self._fetched_at_s = None
