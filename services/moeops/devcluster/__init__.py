"""A local Kubernetes control plane for development and tests (what envtest is to controller-runtime).

Real etcd, kube-apiserver and kube-controller-manager, built from pinned sources by
`hack/controlplane/build.sh`, on loopback ports; no kubelet: `FakeKubelet` plays the nodes' part.
"""

from .controlplane import ControlPlane, ControlPlaneError, find_binaries
from .kubelet import FakeKubelet

__all__ = ["ControlPlane", "ControlPlaneError", "FakeKubelet", "find_binaries"]
