"""The e2e fixtures: a real control plane (or any cluster named by MOEOPS_E2E_KUBECONFIG), the real
kubectl, the operator as a separate process, and a fake kubelet that moves pods through phases."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from harness import Cluster, OperatorProcess, wait_for

from missing import missing
from moeops.devcluster import ControlPlane, FakeKubelet, find_binaries
from moeops.devcluster.nats_server import NatsServer, find_nats_server
from otlp_receiver import OtlpReceiver

REPO = Path(__file__).resolve().parents[2]
EXTERNAL_KUBECONFIG = os.environ.get("MOEOPS_E2E_KUBECONFIG")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if EXTERNAL_KUBECONFIG:
        yield Path(EXTERNAL_KUBECONFIG)
        return
    if find_binaries() is None:
        missing(
            "e2e tests need etcd, kube-apiserver and kube-controller-manager: run hack/controlplane/build.sh"
            " (the README's test command does it when Go is installed)"
        )
    work = tmp_path_factory.mktemp("controlplane")
    with ControlPlane(work) as plane:
        yield plane.kubeconfig


@pytest.fixture(scope="session")
def cluster(kubeconfig: Path) -> Cluster:
    c = Cluster(kubeconfig)
    c.kubectl("apply", "-f", str(REPO / "crds"))
    c.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    # The OpenAPI document (what `kubectl explain` and field validation read) is published a moment later.
    for resource in ("moetrainingjobs.moeops.dev", "inferenceservices.moeops.dev"):
        wait_for(f"OpenAPI of {resource}", partial(explained, c, resource))
    return c


def explained(cluster: Cluster, resource: str) -> bool:
    return cluster.kubectl("explain", resource, check=False).returncode == 0


@pytest.fixture(scope="session")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer | None]:
    """A nats-server the operator reads rebalancer reports from (None without the binary: tests that need it
    skip, or fail under CI=true)."""
    if find_nats_server() is None:
        yield None
        return
    with NatsServer(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture(scope="session")
def intensity_series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The grid-intensity series the operator's carbon gate reads (re-read when it changes); tests write their own
    region's rows into it. It starts empty."""
    path = tmp_path_factory.mktemp("carbon") / "grid.csv"
    path.write_text("timestamp,region,g_co2e_per_kwh\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """The OTLP/HTTP receiver the operator exports its spans and metrics to (tests/otlp_receiver.py)."""
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def operator(
    cluster: Cluster,
    bus: NatsServer | None,
    intensity_series: Path,
    otlp_receiver: OtlpReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    env = {"MOEOPS_NATS_URL": bus.url} if bus is not None else {}
    env |= {"MOEOPS_CARBON_INTENSITY_SERIES": str(intensity_series), "MOEOPS_CARBON_GATE_INTERVAL_S": "1"}
    env["MOEOPS_AUTOSCALE_INTERVAL_S"] = "1"  # the autoscaler's timer, 5 s by default
    env["MOEOPS_PROGRESS_INTERVAL_S"] = "1"  # the progress timer's, 5 s by default
    # The status loop's other reads (15, 30 and 10 s by default): tests wait on what they bring, not on the timer.
    env |= {"MOEOPS_REBALANCE_STATUS_INTERVAL_S": "1", "MOEOPS_CARBON_STATUS_INTERVAL_S": "1",
            "MOEOPS_WORKERS_INTERVAL_S": "1"}  # fmt: skip
    env |= otlp_receiver.env(interval_ms=1000)  # OpenTelemetry: spans and metrics to the receiver (test_otlp_operator)
    proc = OperatorProcess(cluster.kubeconfig, tmp_path_factory.mktemp("operator"), env=env)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def kubelet(cluster: Cluster) -> Iterator[FakeKubelet]:
    if EXTERNAL_KUBECONFIG:
        pytest.skip("the fake kubelet only drives node-less clusters; this cluster has real kubelets")
    fake = FakeKubelet(cluster.api_client)
    fake.ensure_node()
    fake.start_reaper()
    yield fake
    fake.stop()


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace that enforces the `restricted` Pod Security Standard on every pod."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.core.create_namespace(
        {"metadata": {"name": name, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )
    yield name
    cluster.core.delete_namespace(name, _preload_content=False)
