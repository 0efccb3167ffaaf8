"""Helm releases of the chart on the e2e control plane: the real helm binary, a release installed for the length of a
`with` block, fresh namespaces at a Pod Security level, and `kubectl auth can-i` as another identity."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness import Cluster

from missing import missing
from moeops.devcluster.controlplane import DEFAULT_BIN_DIR

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "moeops"
NEVER_PULLS = "registry.invalid/moeops"  # no kubelet here; elsewhere .invalid never resolves


def set_json(values: dict[str, Any]) -> list[str]:
    """helm's --set-json arguments for {dotted.key: value}."""
    return [f"--set-json={k}={json.dumps(v)}" for k, v in values.items()]


def helm_binary() -> str:
    found = shutil.which("helm", path=f"{DEFAULT_BIN_DIR}")
    if found is None:
        missing("helm not found: run hack/bootstrap.sh (hack/fetch_kube_clients.py puts it in .cache/bin)")
    return found


class Helm:
    def __init__(self, kubeconfig: Path) -> None:
        self.binary = helm_binary()
        self.kubeconfig = kubeconfig

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [self.binary, "--kubeconfig", str(self.kubeconfig), *args]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed: {result.stdout}\n{result.stderr}")
        return result


@contextmanager
def installed(cluster: Cluster, namespace: str, values: dict[str, Any]) -> Iterator[tuple[Helm, str]]:
    """The chart installed as a fresh release in `namespace` with `values` (images that never pull); uninstalled
    afterwards. (helm, release name)."""
    helm = Helm(cluster.kubeconfig)
    name = f"moeops-{uuid.uuid4().hex[:6]}"
    args = set_json({"image.registry": NEVER_PULLS, **values})
    try:
        helm("install", name, str(CHART), "--namespace", namespace, *args, "--timeout", "120s")
        yield helm, name
    finally:
        helm("uninstall", name, "--namespace", namespace, "--timeout", "60s", check=False)


def fresh_namespace(cluster: Cluster, name: str, level: str) -> None:
    labels = {"pod-security.kubernetes.io/enforce": level}
    cluster.core.create_namespace({"metadata": {"name": name, "labels": labels}})


def can_i(cluster: Cluster, account: str, verb: str, resource: str, namespace: str | None) -> bool:
    where = ["-n", namespace] if namespace else []
    resource, _, subresource = resource.partition("/")
    sub = [f"--subresource={subresource}"] if subresource else []
    result = cluster.kubectl("auth", "can-i", verb, resource, *sub, f"--as={account}", *where, check=False)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), f"kubectl auth can-i {verb} {resource}: {result.stdout} {result.stderr}"
    return answer == "yes"
