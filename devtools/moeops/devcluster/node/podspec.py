"""What a kubelet derives from a pod spec before it starts a container, as pure functions over the pod's JSON.

Environment (`env`, `envFrom`, the Downward API's `fieldRef`/`resourceFieldRef`, Secret and ConfigMap keys),
`$(VAR)` expansion in env values, command and args (Kubernetes' rules: a reference to an undefined variable stays
as written, `$$` escapes), the volume mounts, the user and groups from the security contexts, and the probes. What
needs the API server (a ConfigMap's or Secret's data) comes in through `Lookups`, so the process node's edge reads
and these functions decide.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .images import ImageConfig
from .quantity import parse_quantity

_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


class SpecError(ValueError):
    """The pod cannot start as specified (a missing key, an unknown field path): the kubelet's
    CreateContainerConfigError, with this message."""


@dataclass(frozen=True)
class Lookups:
    """Reads the process node's edge answers: a ConfigMap's or Secret's data (None when it does not exist)."""

    config_map: Callable[[str, str], Mapping[str, str] | None]
    secret: Callable[[str, str], Mapping[str, str] | None]


@dataclass(frozen=True)
class Mount:
    volume: str
    target: str
    read_only: bool = False
    sub_path: str = ""


@dataclass(frozen=True)
class ContainerPlan:
    """Everything the sandbox needs to start one container."""

    name: str
    argv: list[str]
    env: dict[str, str]
    working_dir: str
    uid: int
    gid: int
    groups: list[int]
    read_only_root: bool
    mounts: list[Mount]
    ports: dict[str, int] = field(default_factory=dict)  # name (or str(number)) → container port


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined names are replaced, undefined ones kept verbatim, `$$` → `$`."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _REFERENCE.sub(one, text)


def field_value(pod: Mapping[str, Any], path: str) -> str:
    """The Downward API's `fieldRef.fieldPath` of this pod."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": status.get("hostIP", ""),
        "status.podIP": status.get("podIP", ""),
    }
    if path in simple:
        return str(simple[path])
    subscript = _SUBSCRIPT.match(path)
    if subscript:
        return str((meta.get(subscript.group(1)) or {}).get(subscript.group(2), ""))
    raise SpecError(f"unsupported fieldRef.fieldPath {path!r}")


def resource_value(container: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
    """`resourceFieldRef`: a request or limit in units of `divisor` (default 1), rounded up as the kubelet does."""
    kind, _, name = str(ref["resource"]).partition(".")
    amount = ((container.get("resources") or {}).get(kind) or {}).get(name)
    if amount is None:
        return "0"
    divisor = parse_quantity(str(ref.get("divisor", "1")))
    value = parse_quantity(str(amount)) / divisor
    whole = int(value)
    return str(whole if whole == value else whole + 1)


def _key_of(source: Mapping[str, str] | None, what: str, key: str, optional: bool) -> str | None:
    if source is None:
        if optional:
            return None
        raise SpecError(f"{what} not found")
    if key not in source:
        if optional:
            return None
        raise SpecError(f"couldn't find key {key} in {what}")
    return source[key]


def _value_from(
    pod: Mapping[str, Any], container: Mapping[str, Any], source: Mapping[str, Any], lookups: Lookups
) -> str | None:
    namespace = pod["metadata"]["namespace"]
    if "fieldRef" in source:
        return field_value(pod, source["fieldRef"]["fieldPath"])
    if "resourceFieldRef" in source:
        return resource_value(container, source["resourceFieldRef"])
    for kind, read in (("secretKeyRef", lookups.secret), ("configMapKeyRef", lookups.config_map)):
        if kind in source:
            ref = source[kind]
            what = f"{kind.removesuffix('KeyRef')} {namespace}/{ref['name']}"
            return _key_of(read(namespace, ref["name"]), what, ref["key"], bool(ref.get("optional")))
    raise SpecError(f"unsupported valueFrom {sorted(source)}")


def container_env(
    pod: Mapping[str, Any], container: Mapping[str, Any], image: ImageConfig, lookups: Lookups
) -> dict[str, str]:
    """The image's ENV, then `envFrom`, then `env` in order (each value expanded over what came before)."""
    env = dict(image.env)
    env.setdefault("HOSTNAME", pod_hostname(pod))
    namespace = pod["metadata"]["namespace"]
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, read in (("configMapRef", lookups.config_map), ("secretRef", lookups.secret)):
            if kind in source:
                data = read(namespace, source[kind]["name"])
                if data is None and not source[kind].get("optional"):
                    raise SpecError(f"{kind.removesuffix('Ref')} {namespace}/{source[kind]['name']} not found")
                env.update({prefix + k: v for k, v in (data or {}).items()})
    for item in container.get("env") or []:
        if "valueFrom" in item:
            value = _value_from(pod, container, item["valueFrom"], lookups)
            if value is None:
                continue
        else:
            value = expand(str(item.get("value", "")), env)
        env[item["name"]] = value
    return env


def pod_hostname(pod: Mapping[str, Any]) -> str:
    return str(pod["spec"].get("hostname") or pod["metadata"]["name"])[:63]


def pod_fqdn(pod: Mapping[str, Any]) -> str | None:
    """`<hostname>.<subdomain>.<namespace>.svc.cluster.local` when the pod names a subdomain (headless Service)."""
    subdomain = pod["spec"].get("subdomain")
    if not subdomain:
        return None
    return f"{pod_hostname(pod)}.{subdomain}.{pod['metadata']['namespace']}.svc.cluster.local"


def container_plan(
    pod: Mapping[str, Any], container: Mapping[str, Any], image: ImageConfig, lookups: Lookups
) -> ContainerPlan:
    env = container_env(pod, container, image, lookups)
    command = [expand(str(a), env) for a in container.get("command") or image.entrypoint]
    args = [expand(str(a), env) for a in container.get("args") or ([] if container.get("command") else image.cmd)]
    argv = command + args
    if not argv:
        raise SpecError("no command specified")
    pod_sc = pod["spec"].get("securityContext") or {}
    sc = container.get("securityContext") or {}
    uid = int(sc.get("runAsUser", pod_sc.get("runAsUser", image.uid)))
    gid = int(sc.get("runAsGroup", pod_sc.get("runAsGroup", image.gid)))
    if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) and uid == 0:
        raise SpecError("container has runAsNonRoot and image will run as root")
    groups = [int(g) for g in pod_sc.get("supplementalGroups") or []]
    if "fsGroup" in pod_sc:
        groups.append(int(pod_sc["fsGroup"]))
    mounts = [
        Mount(m["name"], m["mountPath"], bool(m.get("readOnly")), m.get("subPath", ""))
        for m in container.get("volumeMounts") or []
    ]
    ports = {}
    for port in container.get("ports") or []:
        ports[str(port["containerPort"])] = int(port["containerPort"])
        if port.get("name"):
            ports[port["name"]] = int(port["containerPort"])
    return ContainerPlan(
        name=container["name"],
        argv=argv,
        env=env,
        working_dir=container.get("workingDir") or image.workdir,
        uid=uid,
        gid=gid,
        groups=sorted(set(groups)),
        read_only_root=bool(sc.get("readOnlyRootFilesystem")),
        mounts=mounts,
        ports=ports,
    )
