"""A pod's volumes as folders on this machine, which the sandbox binds into each container.

- configMap / secret: the keys (or `items`) written as files (`defaultMode`, default 0644), once at pod start;
- emptyDir: a folder of the pod's own, removed with the pod (`sizeLimit` is watched by the node: see `usage_bytes`);
- persistentVolumeClaim: one folder per claim, `<state>/pvc/<namespace>/<claim>`, shared by every pod that mounts
  it and kept after them (what a ReadWriteMany volume gives); the claim must exist;
- hostPath: the path itself.
Volumes that take ownership management (emptyDir, PVC) are given to the pod's `fsGroup` (group-writable, setgid),
as the kubelet does, so a non-root container can write its checkpoints.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .podspec import SpecError

Reader = Callable[[str, str], Mapping[str, str] | None]


@dataclass(frozen=True)
class VolumeReaders:
    config_map: Reader
    secret: Reader
    claim_exists: Callable[[str, str], bool]


def claim_dir(state: Path, namespace: str, claim: str) -> Path:
    return state / "pvc" / namespace / claim


def _write_keys(folder: Path, data: Mapping[str, str], source: Mapping[str, Any], binary: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    mode = int(source.get("defaultMode", 0o644))
    items = source.get("items") or [{"key": k, "path": k} for k in data]
    for item in items:
        if item["key"] not in data:
            if source.get("optional"):
                continue
            raise SpecError(f"configmap/secret key {item['key']!r} not found")
        path = folder / item["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        value = data[item["key"]]
        path.write_bytes(base64.b64decode(value) if binary else value.encode())
        path.chmod(int(item.get("mode", mode)))


def _give_to_group(folder: Path, gid: int | None) -> None:
    if gid is None:
        return
    os.chown(folder, -1, gid)
    folder.chmod(0o2775)


def prepare(pod: Mapping[str, Any], pod_dir: Path, state: Path, readers: VolumeReaders) -> dict[str, str]:
    """Volume name → the folder (or file) on this machine. Raises SpecError for what cannot be mounted yet."""
    namespace = pod["metadata"]["namespace"]
    fs_group = (pod["spec"].get("securityContext") or {}).get("fsGroup")
    sources: dict[str, str] = {}
    for volume in pod["spec"].get("volumes") or []:
        name = volume["name"]
        folder = pod_dir / "volumes" / name
        if "configMap" in volume or "secret" in volume:
            kind = "configMap" if "configMap" in volume else "secret"
            source = volume[kind]
            ref = source.get("name") or source.get("secretName", "")
            data = (readers.config_map if kind == "configMap" else readers.secret)(namespace, ref)
            if data is None:
                if not source.get("optional"):
                    raise SpecError(f'{kind.lower()} "{ref}" not found')
                data = {}
            _write_keys(folder, data, source, binary=kind == "secret")
        elif "emptyDir" in volume:
            folder.mkdir(parents=True, exist_ok=True)
            _give_to_group(folder, fs_group)
        elif "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            if not readers.claim_exists(namespace, claim):
                raise SpecError(f'persistentvolumeclaim "{claim}" not found')
            folder = claim_dir(state, namespace, claim)
            folder.mkdir(parents=True, exist_ok=True)
            _give_to_group(folder, fs_group)
        elif "hostPath" in volume:
            folder = Path(volume["hostPath"]["path"])
            if volume["hostPath"].get("type") == "DirectoryOrCreate":
                folder.mkdir(parents=True, exist_ok=True)
        else:
            kinds = sorted(set(volume) - {"name"})
            raise SpecError(f"volume {name!r}: {', '.join(kinds)} is not supported by the process node")
        sources[name] = str(folder)
    return sources


def empty_dir_limits(pod: Mapping[str, Any]) -> dict[str, str]:
    """emptyDir volume name → its sizeLimit, for those that set one."""
    return {
        v["name"]: str(v["emptyDir"]["sizeLimit"])
        for v in pod["spec"].get("volumes") or []
        if "emptyDir" in v and (v["emptyDir"] or {}).get("sizeLimit")
    }


def usage_bytes(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for file in files:
            try:
                total += (Path(root) / file).lstat().st_size
            except OSError:
                continue
    return total
