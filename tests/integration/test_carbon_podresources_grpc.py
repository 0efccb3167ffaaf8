"""The pod-resources client against a FAKE kubelet: a real gRPC server (grpcio) on a unix socket, serving
`v1.PodResourcesLister/List` from the generated servicer code, as the kubelet serves it on
/var/lib/kubelet/pod-resources/kubelet.sock. Real wire, real deadlines; the kubelet's answers are the test's."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from moeops.carbon.podresources import api_pb2, api_pb2_grpc
from moeops.carbon.podresources.client import PodResourcesClient, PodResourcesUnavailable
from moeops.carbon.podresources.devices import CachedDeviceMap, ContainerRef

GPU0 = "GPU-5fa9c2d4-1b2c-4d3e-8f90-0123456789ab"
GPU1 = "GPU-0b1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e"
MIG = "MIG-7d3f1a2b-0c4d-5e6f-8a9b-abcdefabcdef"


def pod(namespace: str, name: str, *containers: api_pb2.ContainerResources) -> api_pb2.PodResources:
    return api_pb2.PodResources(namespace=namespace, name=name, containers=list(containers))


def container(name: str, **devices: list[str]) -> api_pb2.ContainerResources:
    """Devices as resource=ids, the resource by its short name in RESOURCES."""
    return api_pb2.ContainerResources(
        name=name,
        devices=[api_pb2.ContainerDevices(resource_name=RESOURCES[k], device_ids=v) for k, v in devices.items()],
    )


RESOURCES = {"gpu": "nvidia.com/gpu", "mig": "nvidia.com/mig-1g.10gb", "nic": "example.com/sriov-nic"}

NODE_PODS = [
    pod("ml", "moe-10b-0", container("worker", gpu=[GPU0]), container("log-shipper")),
    pod("ml", "chat-7d9c8-abcde", container("server", mig=[MIG], nic=["0000:3b:00.1"])),
    pod("team-a", "notebook-0", container("jupyter", gpu=[f"{GPU1}::0"])),
    pod("team-b", "notebook-1", container("jupyter", gpu=[f"{GPU1}::1"])),
    pod("kube-system", "coredns-1"),
]


@dataclass
class FakeKubelet(api_pb2_grpc.PodResourcesListerServicer):
    """What `List` answers, or how it fails; counts calls."""

    pods: list[api_pb2.PodResources] = field(default_factory=lambda: list(NODE_PODS))
    delay_s: float = 0.0
    fail: grpc.StatusCode | None = None
    calls: int = 0
    release: threading.Event = field(default_factory=threading.Event)

    def List(  # noqa: N802 -- the RPC's name
        self, request: api_pb2.ListPodResourcesRequest, context: grpc.ServicerContext
    ) -> api_pb2.ListPodResourcesResponse:
        self.calls += 1
        if self.delay_s:
            self.release.wait(self.delay_s)
        if self.fail is not None:
            context.abort(self.fail, "kubelet says no")
        return api_pb2.ListPodResourcesResponse(pod_resources=self.pods)


StartKubelet = Callable[[FakeKubelet], grpc.Server]


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # Not tmp_path: a unix socket path must fit in 108 bytes, and pytest's tmp_path for a long test name may not.
    directory = Path(tempfile.mkdtemp(prefix="kubelet-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def kubelet_socket(socket_dir: Path) -> Path:
    return socket_dir / "kubelet.sock"


@pytest.fixture
def start_kubelet(kubelet_socket: Path) -> Iterator[StartKubelet]:
    servers: list[tuple[grpc.Server, FakeKubelet]] = []

    def start(kubelet: FakeKubelet) -> grpc.Server:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        api_pb2_grpc.add_PodResourcesListerServicer_to_server(kubelet, server)
        assert server.add_insecure_port(f"unix://{kubelet_socket}") != 0
        server.start()
        servers.append((server, kubelet))
        return server

    yield start
    for server, kubelet in servers:
        kubelet.release.set()
        server.stop(grace=None).wait()


def test_fake_kubelet_list_gives_gpu_and_mig_holders(start_kubelet: StartKubelet, kubelet_socket: Path) -> None:
    start_kubelet(FakeKubelet())
    with PodResourcesClient(kubelet_socket, timeout_s=5.0) as client:
        devices = client.devices()
        everything = client.list_assigned()
    assert devices == {
        GPU0: (ContainerRef("ml", "moe-10b-0", "worker"),),
        GPU1: (ContainerRef("team-a", "notebook-0", "jupyter"), ContainerRef("team-b", "notebook-1", "jupyter")),
        MIG: (ContainerRef("ml", "chat-7d9c8-abcde", "server"),),
    }
    # The raw list keeps other resources (the filter is the device map's): the NIC is there.
    assert ("example.com/sriov-nic", ("0000:3b:00.1",)) in [(a.resource_name, a.device_ids) for a in everything]


def test_missing_socket_is_a_clear_error(kubelet_socket: Path) -> None:
    with pytest.raises(PodResourcesUnavailable, match=r"kubelet\.sock not found: mount the host's"):
        PodResourcesClient(kubelet_socket).devices()


def test_stale_socket_without_a_kubelet_fails_within_the_timeout(kubelet_socket: Path) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(kubelet_socket))  # bound, never listening: what a dead kubelet leaves behind
    stale.close()
    started = time.monotonic()
    with pytest.raises(PodResourcesUnavailable, match=r"UNAVAILABLE|DEADLINE_EXCEEDED"):
        PodResourcesClient(kubelet_socket, timeout_s=2.0).devices()
    assert time.monotonic() - started < 10.0


def test_a_hung_kubelet_hits_the_deadline(start_kubelet: StartKubelet, kubelet_socket: Path) -> None:
    start_kubelet(FakeKubelet(delay_s=30.0))
    started = time.monotonic()
    with pytest.raises(PodResourcesUnavailable, match="DEADLINE_EXCEEDED"):
        PodResourcesClient(kubelet_socket, timeout_s=0.3).devices()
    assert time.monotonic() - started < 5.0


def test_a_failed_call_names_the_status(start_kubelet: StartKubelet, kubelet_socket: Path) -> None:
    start_kubelet(FakeKubelet(fail=grpc.StatusCode.PERMISSION_DENIED))
    with pytest.raises(PodResourcesUnavailable, match="PERMISSION_DENIED: kubelet says no"):
        PodResourcesClient(kubelet_socket).devices()


def test_client_recovers_when_the_kubelet_restarts(start_kubelet: StartKubelet, kubelet_socket: Path) -> None:
    server = start_kubelet(FakeKubelet())
    with PodResourcesClient(kubelet_socket, timeout_s=2.0) as client:
        assert GPU0 in client.devices()
        server.stop(grace=None).wait()
        with pytest.raises(PodResourcesUnavailable):
            client.devices()
        kubelet_socket.unlink(missing_ok=True)  # the kubelet re-creates its socket on start
        start_kubelet(FakeKubelet(pods=[pod("ml", "moe-10b-1", container("worker", gpu=[GPU0]))]))
        assert client.devices() == {GPU0: (ContainerRef("ml", "moe-10b-1", "worker"),)}


def test_cached_map_asks_the_kubelet_once_per_ttl(start_kubelet: StartKubelet, kubelet_socket: Path) -> None:
    kubelet = FakeKubelet()
    start_kubelet(kubelet)
    now = [0.0]
    with PodResourcesClient(kubelet_socket) as client:
        cache = CachedDeviceMap(client.devices, ttl_s=10.0, clock=lambda: now[0])
        for step in range(10):
            now[0] = step * 0.5
            assert GPU0 in cache.get()
        assert kubelet.calls == 1
        now[0] = 10.0
        cache.get()
    assert kubelet.calls == 2
