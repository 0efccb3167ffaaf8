"""A local Kubernetes control plane for development and tests (what envtest is to controller-runtime).

Real etcd, kube-apiserver and kube-controller-manager, built from pinned sources by
`hack/controlplane/build.sh`, on loopback ports; no kubelet: `FakeKubelet` plays the nodes' part. And a real
nats-server with JetStream (`NatsServer`) for the bus.
"""

from .controlplane import ControlPlane, ControlPlaneError, find_binaries
from .kubelet import FakeKubelet
from .nats_server import NatsServer, NatsServerError, find_nats_server

__all__ = [
    "ControlPlane",
    "ControlPlaneError",
    "FakeKubelet",
    "NatsServer",
    "NatsServerError",
    "find_binaries",
    "find_nats_server",
]
