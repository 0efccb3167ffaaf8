"""What a pod worker asks of its node: the API calls (status, events, deletion, ConfigMaps, Secrets, claims) and the
node's shared parts (cgroups, images, hosts file, venv). The Kubernetes edge of the process node."""

from __future__ import annotations

import base64
import json
import logging
import secrets
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from .cgroups import CgroupTree
from .images import ImageCatalog
from .podspec import Lookups
from .volumes import VolumeReaders

log = logging.getLogger(__name__)
MERGE = "application/merge-patch+json"


@dataclass
class NodeContext:
    api_client: kubernetes.client.ApiClient
    name: str
    state_dir: Path
    cgroups: CgroupTree
    images: ImageCatalog
    hosts_path: Path
    venv: Path = field(default_factory=lambda: Path(sys.prefix))
    checkout: Path = field(default_factory=lambda: Path(__file__).resolve().parents[4])
    """The source tree an editable install points at (the venv's .pth files and scripts name these paths)."""

    def host_paths(self) -> list[Path]:
        """What must stay visible at its own path inside a container, above its volumes: the venv (its scripts'
        shebangs name it) and the checkout (an editable install's sources). A volume at /tmp would otherwise hide a
        checkout under /tmp, as a CI clone may be."""
        found: list[Path] = []
        for path in sorted({self.checkout.resolve(), self.venv.resolve()}, key=lambda p: len(p.parts)):
            if not any(path.is_relative_to(kept) for kept in found):
                found.append(path)
        return found

    on_release: Callable[[str], None] = lambda uid: None

    def __post_init__(self) -> None:
        self.core = kubernetes.client.CoreV1Api(self.api_client)
        self.lookups = Lookups(config_map=self._config_map, secret=self._secret)
        self.volume_readers = VolumeReaders(self._config_map, self._secret_b64, self._claim_exists)

    def _read(self, call: Callable[..., Any], *args: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads(call(*args, _preload_content=False).data))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def _config_map(self, namespace: str, name: str) -> Mapping[str, str] | None:
        found = self._read(self.core.read_namespaced_config_map, name, namespace)
        return None if found is None else dict(found.get("data") or {})

    def _secret_b64(self, namespace: str, name: str) -> Mapping[str, str] | None:
        found = self._read(self.core.read_namespaced_secret, name, namespace)
        return None if found is None else dict(found.get("data") or {})

    def _secret(self, namespace: str, name: str) -> Mapping[str, str] | None:
        data = self._secret_b64(namespace, name)
        return None if data is None else {k: base64.b64decode(v).decode() for k, v in data.items()}

    def _claim_exists(self, namespace: str, name: str) -> bool:
        return self._read(self.core.read_namespaced_persistent_volume_claim, name, namespace) is not None

    def patch_status(self, pod: Mapping[str, Any], status: dict[str, Any]) -> None:
        meta = pod["metadata"]
        self.core.patch_namespaced_pod_status(
            meta["name"], meta["namespace"], {"status": status}, _content_type=MERGE, _preload_content=False
        )

    def delete_pod(self, pod: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}}
        try:
            self.core.delete_namespaced_pod(meta["name"], meta["namespace"], body=body, _preload_content=False)
        except ApiException as error:
            if error.status not in (404, 409):
                raise

    def event(self, pod: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        meta = pod["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "metadata": {"name": f"{meta['name']}.{secrets.token_hex(8)}", "namespace": meta["namespace"]},
            "involvedObject": {
                "kind": "Pod",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
                "apiVersion": "v1",
            },
            "reason": reason,
            "message": message[:1024],
            "type": kind,
            "source": {"component": "kubelet", "host": self.name},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], body, _preload_content=False)
        except (ApiException, OSError) as error:
            log.debug("event %s for %s not posted: %s", reason, meta["name"], error)

    def release(self, uid: str) -> None:
        self.cgroups.remove_pod(uid)
        self.on_release(uid)
