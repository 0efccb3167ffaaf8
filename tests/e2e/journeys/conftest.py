"""The journeys' platform: the whole of moeops on this machine (`moeops.devcluster.platform`, what `make demo`
starts), with pods that really run on the process node. Its own control plane: the process node schedules every
pod it sees, which the fake-kubelet tests of tests/e2e must not meet."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from harness import Cluster

from missing import missing
from moeops.devcluster import find_binaries
from moeops.devcluster.nats_server import find_nats_server
from moeops.devcluster.platform import LocalPlatform


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/journeys/" in str(item.path):
            item.add_marker(pytest.mark.journey)


@pytest.fixture(scope="package")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPlatform]:
    if find_binaries() is None or find_nats_server() is None:
        missing("the journeys need the control-plane binaries and nats-server: run hack/bootstrap.sh")
    if os.geteuid() != 0:
        missing("the process node needs root (mount namespaces, cgroups, the pods' uids), as a kubelet does")
    with LocalPlatform(tmp_path_factory.mktemp("platform")) as running:
        yield running


@pytest.fixture(scope="package")
def journey_cluster(platform: LocalPlatform) -> Cluster:
    return Cluster(platform.kubeconfig)


@pytest.fixture
def journey_namespace(journey_cluster: Cluster) -> Iterator[str]:
    """A fresh namespace that enforces the `restricted` Pod Security Standard on every pod."""
    name = f"j-{uuid.uuid4().hex[:8]}"
    labels = {"pod-security.kubernetes.io/enforce": "restricted"}
    journey_cluster.core.create_namespace({"metadata": {"name": name, "labels": labels}})
    yield name
    journey_cluster.core.delete_namespace(name, _preload_content=False)
