"""Which pod uses which GPU on this node, for charging GPU energy to workloads (the node agent's side).

Source: the kubelet's pod-resources API (`v1.PodResourcesLister/List` on
`/var/lib/kubelet/pod-resources/kubelet.sock`), as the DCGM exporter uses it: the kubelet itself says which
container was given which GPU or MIG device (`client.py`, our minimal `api.proto` with the kubelet's names and
field numbers; `devices.py` for the plain result and its TTL cache).

Fallback, when the socket is absent or the call fails: NVML's running compute processes on each GPU, mapped to
pods through `/proc/<pid>/cgroup` (`cgroup.py`; needs `hostPID: true`). It sees only GPUs with a process on them at
that moment (an assigned but idle GPU is charged to nobody, so its energy goes to node idle), and it yields the pod
UID and container id, not names: resolving them needs the API server, and until then energy is booked under the
UID (`attribution.unresolved_workload`), saying so.

Import `client` only where gRPC is installed; `devices` and `cgroup` are pure and import no gRPC.
"""
