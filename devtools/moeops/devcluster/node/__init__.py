"""The process node: a Kubernetes node for the local control plane whose pods run as real processes.

A virtual-kubelet-style node agent (as systemk runs pods as systemd units): it registers a Node, schedules the
pods that fit onto it, and runs each container's command from this machine's files in a sandbox of its own
(private mount and UTS namespaces over an overlay of `/`, cgroups, the pod's uid), with the volumes, environment,
hostname, names, status, restarts, probes and graceful deletion a kubelet gives. What it does not emulate: images
(only moeops images, run from this checkout's venv), GPUs, and network namespaces (pods share the machine's; each
has its own loopback address). Map: `agent` (the node's loop) → `pod_worker` (one pod) → `container` + `sandbox`
(one container's processes); `podspec`, `podstatus`, `images`, `network`, `quantity` are pure; `cgroups`,
`volumes`, `proxy`, `probes` and `node_context` are the edges.
"""

from .agent import NodeShape, ProcessNode
from .network import local_service_address

__all__ = ["NodeShape", "ProcessNode", "local_service_address"]
