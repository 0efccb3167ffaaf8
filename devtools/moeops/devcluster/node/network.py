"""Addresses and names on the process node, which shares this machine's network namespace among its pods.

- Each pod gets its own loopback address, `127.244.x.y` (a pod CIDR moved into 127/8): what it listens on there
  never meets another pod's, and a peer reaches it by name.
- Names resolve through one hosts file (bound at /etc/hosts in every container) the node rewrites as pods and
  Services come and go: each pod's hostname; `<hostname>.<subdomain>.<ns>.svc[.cluster.local]` for pods under a
  headless Service (what a torchrun rendezvous needs); `<service>.<ns>.svc[.cluster.local]` for a ClusterIP Service.
- A ClusterIP Service `10.96.a.b` is served at `127.96.a.b` (`local_service_address`): the node's proxy accepts on
  each of its ports there and forwards to a ready endpoint pod (kube-proxy's job; EndpointSlices are not used: the
  API server refuses loopback endpoint addresses, and the node knows its pods).
What is not emulated: a pod binding the wildcard address (0.0.0.0) on a port shares it with every other pod; the
node's scheduler therefore never places two pods declaring the same containerPort side by side (hostNetwork rules).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

POD_NETWORK = ipaddress.ip_network("127.244.0.0/16")
LOCALHOST = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def local_service_address(cluster_ip: str) -> str | None:
    """Where the node serves a ClusterIP: its last two octets under 127.96/16 (None for headless or IPv6)."""
    try:
        address = ipaddress.ip_address(cluster_ip)
    except ValueError:
        return None
    if address.version != 4:
        return None
    octets = str(address).split(".")
    return f"127.96.{octets[2]}.{octets[3]}"


class AddressPool:
    """Pod addresses: handed out in order, reused only after the whole pool went round (stale peers fail fast)."""

    def __init__(self) -> None:
        self._hosts = [str(h) for h in POD_NETWORK.hosts() if str(h).rsplit(".", 1)[1] not in ("0", "1", "255")]
        # Start where another process node on this machine (a second platform) is unlikely to be handing out.
        self._next = (os.getpid() * 7919) % len(self._hosts)
        self._taken: dict[str, str] = {}  # pod uid → address

    def take(self, uid: str) -> str:
        if uid in self._taken:
            return self._taken[uid]
        used = set(self._taken.values())
        for _ in range(len(self._hosts)):
            address = self._hosts[self._next % len(self._hosts)]
            self._next += 1
            if address not in used:
                self._taken[uid] = address
                return address
        raise RuntimeError("the process node's pod addresses are exhausted")

    def release(self, uid: str) -> None:
        self._taken.pop(uid, None)


@dataclass(frozen=True)
class PodName:
    address: str
    namespace: str
    hostname: str
    subdomain: str = ""


@dataclass(frozen=True)
class ServiceName:
    address: str
    namespace: str
    name: str


def hosts_file(pods: Iterable[PodName], services: Iterable[ServiceName]) -> str:
    lines = [LOCALHOST]
    for pod in sorted(pods, key=lambda p: p.address):
        names = [pod.hostname]
        if pod.subdomain:
            base = f"{pod.hostname}.{pod.subdomain}.{pod.namespace}"
            names = [f"{base}.svc.cluster.local", f"{base}.svc", base, f"{pod.hostname}.{pod.subdomain}", *names]
        lines.append(f"{pod.address}\t{' '.join(names)}\n")
    for service in sorted(services, key=lambda s: (s.namespace, s.name)):
        base = f"{service.name}.{service.namespace}"
        lines.append(f"{service.address}\t{base}.svc.cluster.local {base}.svc {base}\n")
    return "".join(lines)


def write_in_place(path: Path, text: str) -> None:
    """Rewrite the file keeping its inode: containers see it through a bind mount of that inode."""
    path.touch(exist_ok=True)
    with path.open("r+") as handle:
        if handle.read() == text:
            return
        handle.seek(0)
        handle.write(text)
        handle.truncate()
