"""The kubelet pod-resources client: `List` over the node's unix socket, answered as a `DeviceMap`.

This is the module that speaks gRPC (the generated `api_pb2*` beside it, from our own `api.proto`); what it returns
is plain values (`devices.AssignedDevices`, `devices.DeviceMap`), so nothing downstream depends on protobuf.

Errors: a missing socket, a refused connection, a deadline or any other failed call raises `PodResourcesUnavailable`
with the socket path and gRPC's status, never a bare `grpc.RpcError`: the agent then uses the cgroup fallback
(`cgroup.py`) for that interval and tries the kubelet again at the next refresh.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import TypeAlias

import grpc

from . import api_pb2
from .devices import AssignedDevices, ContainerRef, DeviceMap, device_map, is_gpu_resource

DEFAULT_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
DEFAULT_TIMEOUT_S = 5.0
LIST_METHOD = "/v1.PodResourcesLister/List"
"""The kubelet's RPC path (package `v1`, service `PodResourcesLister`); a test checks it against `api.proto`. Called
on the channel rather than through the generated stub, which has no types."""
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""A node with hundreds of pods answers more than gRPC's default 4 MiB; the DCGM exporter allows 16 MiB too."""


# Quoted: grpc's classes are generic only in types-grpcio's stubs, not at run time.
_ListCall: TypeAlias = "grpc.UnaryUnaryMultiCallable[api_pb2.ListPodResourcesRequest, api_pb2.ListPodResourcesResponse]"


class PodResourcesUnavailable(RuntimeError):
    """The kubelet's pod-resources API could not be asked: no socket, or the call failed."""


def assigned_devices(response: api_pb2.ListPodResourcesResponse) -> list[AssignedDevices]:
    """The protobuf answer as plain values, every resource kept (filtering is `device_map`'s job)."""
    return [
        AssignedDevices(
            ContainerRef(pod.namespace, pod.name, container.name), devices.resource_name, tuple(devices.device_ids)
        )
        for pod in response.pod_resources
        for container in pod.containers
        for devices in container.devices
    ]


class PodResourcesClient:
    """One channel to the kubelet, opened on first use; use as a context manager or call `close()`."""

    def __init__(self, socket_path: Path = DEFAULT_SOCKET, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self._channel: grpc.Channel | None = None
        self._list: _ListCall | None = None

    def __enter__(self) -> PodResourcesClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = None
        self._list = None

    def list_assigned(self) -> list[AssignedDevices]:
        """Every container's devices, one `List` call within `timeout_s`."""
        if not self.socket_path.is_socket():
            # Checked first so the message says what to mount rather than gRPC's "failed to connect to all
            # addresses"; a socket that vanishes after this check still fails below, just less helpfully.
            raise PodResourcesUnavailable(
                f"kubelet pod-resources socket {self.socket_path} not found: mount the host's "
                "/var/lib/kubelet/pod-resources into the agent's pod (the cgroup fallback is used meanwhile)"
            )
        try:
            response = self._list_call()(api_pb2.ListPodResourcesRequest(), timeout=self.timeout_s)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            details = error.details() if isinstance(error, grpc.Call) else str(error)
            self.close()  # a fresh channel next time: the kubelet may have restarted and re-created its socket
            raise PodResourcesUnavailable(
                f"kubelet pod-resources List on {self.socket_path} failed: {code.name if code else 'error'}: {details}"
            ) from error
        return assigned_devices(response)

    def devices(self) -> DeviceMap:
        """GPU and MIG UUID → the containers holding it (see `devices.device_map`)."""
        return device_map(self.list_assigned(), resource_filter=is_gpu_resource)

    def _list_call(self) -> _ListCall:
        if self._list is None:
            options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
            self._channel = grpc.insecure_channel(f"unix://{self.socket_path.absolute()}", options=options)
            self._list = self._channel.unary_unary(
                LIST_METHOD,
                request_serializer=api_pb2.ListPodResourcesRequest.SerializeToString,
                response_deserializer=api_pb2.ListPodResourcesResponse.FromString,
            )
        return self._list
