"""Rendering the Helm chart (charts/moeops) with the real helm binary, for the chart tests: the `helm` fixture,
`render` (objects as dicts) and lookups of rendered objects."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from missing import missing

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "moeops"
HELM = shutil.which("helm", path=f"{REPO / '.cache' / 'bin'}") or shutil.which("helm")


@pytest.fixture(scope="module")
def helm() -> str:
    if HELM is None:
        missing("helm not found: run hack/bootstrap.sh (hack/fetch_kube_clients.py puts it in .cache/bin)")
    return HELM


def run_helm(helm: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([helm, *args], capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed: {result.stderr}")
    return result


def render(
    helm: str,
    values: dict[str, Any] | None = None,
    namespace: str = "moeops",
    *,
    release: str = "rel",
    chart: Path | None = None,
) -> list[dict[str, Any]]:
    """`helm template` of the chart (or `chart`) with `values` (--set-json each), as a list of objects."""
    args = [f"--set-json={k}={json.dumps(v)}" for k, v in (values or {}).items()]
    out = run_helm(helm, "template", release, str(chart or CHART), "--namespace", namespace, *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    found = [o for o in of_kind(objects, kind) if o["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"{kind} *{suffix}: {[o['metadata']['name'] for o in of_kind(objects, kind)]}"
    return found[0]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return only  # type: ignore[no-any-return]


def env(workload: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(workload).get("env", [])}


def workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in ("Deployment", "DaemonSet")]


AGENT_ON = {"carbonAgent.enabled": True, "carbonAgent.region": "eu-west-1", "carbonAgent.namespace": "moeops-node"}


# The node agent on, with what it requires (a region, a namespace of its own).
AGENT_ON = {"carbonAgent.enabled": True, "carbonAgent.region": "eu-west-1", "carbonAgent.namespace": "moeops-node"}
