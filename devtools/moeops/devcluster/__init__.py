"""The local platform, for development, `make demo` and the tests (what envtest and kind are to controller-runtime).

It lives in its own source root, `devtools/`, and is not in the wheel: it works only from a checkout, because it runs
what the checkout builds (hack/controlplane's pinned etcd, kube-apiserver and kube-controller-manager under
`.cache/bin`) and the images it defines (`images/*.Dockerfile`, run by the process node as sandboxed processes).

    controlplane.py   `ControlPlane`: real etcd + kube-apiserver + kube-controller-manager on loopback ports
    nats_server.py    `NatsServer`: a real nats-server with JetStream (the dev extra's binary)
    kubelet.py        `FakeKubelet`: moves pods through their phases by hand, for operator tests without a node
    node/             the process node: a Node whose pods run as real processes (cgroups, mount namespace, overlay
                      root, volumes, probes, Service proxy), for the journey tests and the demo
    platform.py       `LocalPlatform`: all of it plus the operator, rebalancer and carbon services, one way to start
    carbon_stack.py   the carbon aggregator and node agent of a local platform
    served_eval.py    exact match per domain through a served model's OpenAI API (demo and journeys)
    __main__.py       `python -m moeops.devcluster up|controlplane`: run the platform (or the control plane alone)

Nothing shipped imports this package (import-linter: it is the top layer).
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
