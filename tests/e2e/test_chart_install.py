"""The Helm chart on the real control plane: `helm install` is accepted object by object, the pods of the restricted
components pass Pod Security `restricted` admission, the operator's ServiceAccount may do exactly what the operator
does (kubectl auth can-i with impersonation), and the operator, run under that identity, reconciles a training job."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import Cluster, OperatorProcess, wait_for
from helm_release import NEVER_PULLS, Helm, can_i, fresh_namespace, installed
from manifests import training_job

# What the operator calls (moeops.operator.kube, the handlers, kopf), namespaced: (verb, resource).
OPERATOR_MAY = [
    *((verb, "moetrainingjobs.moeops.dev") for verb in ("get", "list", "watch", "patch", "delete")),
    *((verb, "inferenceservices.moeops.dev") for verb in ("get", "list", "watch", "patch")),
    ("patch", "moetrainingjobs.moeops.dev/status"),
    ("patch", "inferenceservices.moeops.dev/status"),
    ("update", "moetrainingjobs.moeops.dev/finalizers"),
    *((verb, "jobs.batch") for verb in ("get", "list", "watch", "create", "patch", "delete")),  # delete: restarts
    ("list", "pods"),  # which worker failed
    *((verb, "deployments.apps") for verb in ("get", "list", "watch", "create", "patch")),
    *((verb, resource) for verb in ("get", "create", "patch") for resource in ("configmaps", "services")),
    ("create", "events"),
    ("list", "events"),
]
OPERATOR_MAY_CLUSTER = [("list", "customresourcedefinitions.apiextensions.k8s.io"),
                        ("watch", "customresourcedefinitions.apiextensions.k8s.io")]  # fmt: skip
OPERATOR_MAY_NOT = [
    ("get", "secrets"),
    ("list", "secrets"),
    ("create", "pods/exec"),
    ("create", "pods"),
    ("get", "pods"),
    ("delete", "pods"),
    ("delete", "deployments.apps"),
    ("delete", "inferenceservices.moeops.dev"),
    ("create", "moetrainingjobs.moeops.dev"),
    ("update", "moetrainingjobs.moeops.dev"),
    ("delete", "configmaps"),
    ("create", "roles.rbac.authorization.k8s.io"),
    ("escalate", "clusterroles.rbac.authorization.k8s.io"),
    ("impersonate", "serviceaccounts"),
    ("patch", "clusterkopfpeerings.kopf.dev"),  # one replica: standalone, no peering
]
OPERATOR_MAY_NOT_CLUSTER = [("delete", "namespaces"), ("list", "namespaces"), ("list", "nodes"),
                            ("create", "customresourcedefinitions.apiextensions.k8s.io")]  # fmt: skip


@pytest.fixture
def release(cluster: Cluster, namespace: str) -> Iterator[tuple[Helm, str, str, str]]:
    """The chart installed in `namespace` (Pod Security `restricted`), the node agent in a `privileged` namespace of
    its own; (helm, release, release namespace, agent namespace)."""
    agent_ns = f"{namespace}-node"
    fresh_namespace(cluster, agent_ns, "privileged")
    values = {
        "carbonAgent.enabled": True,
        "carbonAgent.region": "eu-west-1",
        "carbonAgent.namespace": agent_ns,
        "otel.enabled": True,
        "otel.endpoint": "http://otel-collector.invalid:4317",
        "nats.auth.existingSecret": "nats-auth",
        "nats.tls.enabled": True,
        "nats.tls.existingSecret": "nats-tls",
        "grafanaDashboard.enabled": True,
    }
    try:
        with installed(cluster, namespace, values) as (helm, name):
            yield helm, name, namespace, agent_ns
    finally:
        cluster.core.delete_namespace(agent_ns, _preload_content=False)


def test_install_is_accepted_and_restricted(cluster: Cluster, release: tuple[Helm, str, str, str]) -> None:
    helm, name, namespace, agent_ns = release
    status = json.loads(helm("status", name, "--namespace", namespace, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    manifest = helm("get", "manifest", name, "--namespace", namespace).stdout
    objects = [o for o in yaml.safe_load_all(manifest) if o]
    kinds = sorted({o["kind"] for o in objects})
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "Deployment", "ServiceAccount"]
    # Every object is there, as the API server stored it.
    got = cluster.kubectl("get", "-f", "-", "-o", "json", stdin=manifest)
    stored = json.loads(got.stdout)["items"]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in stored) == sorted(
        (o["kind"], o["metadata"]["name"]) for o in objects
    )
    (daemon_set,) = [o for o in stored if o["kind"] == "DaemonSet"]
    assert daemon_set["metadata"]["namespace"] == agent_ns  # the node agent, in its privileged namespace
    # The CRDs from the chart's crds/ (already there from the suite's crds/: helm leaves existing CRDs alone).
    for crd in ("moetrainingjobs.moeops.dev", "inferenceservices.moeops.dev", "clusterkopfpeerings.kopf.dev"):
        cluster.kubectl("get", "crd", crd)
    # Pod Security `restricted` admits the pods of the operator, the rebalancer and the aggregator (the
    # replicaset controller creates them; with no kubelet they stay Pending, images unpulled).
    for component in ("operator", "rebalancer", "carbon-aggregator"):
        selector = f"app.kubernetes.io/instance={name},app.kubernetes.io/component={component}"
        pods = wait_for(f"a {component} pod", partial(cluster.list, "Pod", namespace, selector), timeout=60)
        assert pods[0]["spec"]["containers"][0]["image"].startswith(NEVER_PULLS)
    replica_sets = cluster.kubectl("get", "replicasets", "-n", namespace, "-o", "json")
    for rs in json.loads(replica_sets.stdout)["items"]:
        failures = [c for c in rs.get("status", {}).get("conditions", []) if c["type"] == "ReplicaFailure"]
        assert not failures, failures


def test_operator_service_account_can_do_what_the_operator_does_and_no_more(
    cluster: Cluster, release: tuple[Helm, str, str, str]
) -> None:
    _, name, namespace, agent_ns = release
    account = f"system:serviceaccount:{namespace}:{name}-operator"
    elsewhere = "default"  # cluster-wide: any namespace
    for verb, resource in OPERATOR_MAY:
        for ns in (namespace, elsewhere):
            assert can_i(cluster, account, verb, resource, ns), f"operator cannot {verb} {resource} in {ns}"
    for verb, resource in OPERATOR_MAY_CLUSTER:
        assert can_i(cluster, account, verb, resource, None), f"operator cannot {verb} {resource}"
    for verb, resource in OPERATOR_MAY_NOT:
        assert not can_i(cluster, account, verb, resource, namespace), f"operator may {verb} {resource}"
    for verb, resource in OPERATOR_MAY_NOT_CLUSTER:
        assert not can_i(cluster, account, verb, resource, None), f"operator may {verb} {resource}"
    # The other components use no API, bar the node agent's `list pods`.
    for component in ("rebalancer", "carbon-aggregator"):
        other = f"system:serviceaccount:{namespace}:{name}-{component}"
        assert not can_i(cluster, other, "list", "pods", namespace)
        assert not can_i(cluster, other, "get", "moetrainingjobs.moeops.dev", namespace)
    agent = f"system:serviceaccount:{agent_ns}:{name}-carbon-agent"
    assert can_i(cluster, agent, "list", "pods", None)
    assert not can_i(cluster, agent, "get", "pods", namespace)
    assert not can_i(cluster, agent, "get", "secrets", namespace)


def kubeconfig_for(cluster: Cluster, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig with the cluster of the suite's and a fresh token of `account` (the TokenRequest API)."""
    token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration=1h").stdout.strip()
    admin: dict[str, Any] = yaml.safe_load(cluster.kubeconfig.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    server = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [server],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": server["name"], "user": account}}],
        "current-context": account,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_operator_runs_under_its_service_account(
    cluster: Cluster, operator: OperatorProcess, release: tuple[Helm, str, str, str], tmp_path: Path
) -> None:
    _, name, namespace, _ = release
    kubeconfig = kubeconfig_for(cluster, namespace, f"{name}-operator", tmp_path / "operator.kubeconfig")
    whoami = subprocess.run(
        [cluster.kubectl.binary, "--kubeconfig", str(kubeconfig), "auth", "whoami", "-o", "json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert (
        json.loads(whoami.stdout)["status"]["userInfo"]["username"]
        == f"system:serviceaccount:{namespace}:{name}-operator"
    )

    operator.stop()  # the suite's operator (admin credentials) would reconcile the job regardless
    (tmp_path / "log").mkdir()
    scoped = OperatorProcess(kubeconfig, tmp_path / "log")
    try:
        scoped.start()
        cluster.kubectl.apply(training_job("chart-rbac", namespace))
        wait_for("the worker Job", lambda: cluster.read("Job", namespace, "chart-rbac"), timeout=60)
        wait_for("the ConfigMap", lambda: cluster.read("ConfigMap", namespace, "chart-rbac-config"))
        wait_for("status set", lambda: cluster.status("moetrainingjobs", namespace, "chart-rbac").get("plan"))
        wait_for("an Event posted", lambda: cluster.events(namespace, "chart-rbac") or None)
        log = scoped.log()
        for sign in ("Forbidden", "forbidden", "Not enough permissions", " 403"):
            assert sign not in log, f"{sign!r} in the operator's log: {log[-3000:]}"
    finally:
        scoped.stop()
        operator.start()


def test_watched_namespaces_and_peering_under_the_service_account(
    cluster: Cluster, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    """Two replicas watching one namespace: a Role there (not a ClusterRole), the release's KopfPeering in it, and
    the operator, given the chart's MOEOPS_PEERING_NAME and peering under its ServiceAccount's token, keeps its
    record in that object and reconciles a job there without a single refusal."""
    jobs = f"{namespace}-jobs"
    fresh_namespace(cluster, jobs, "baseline")
    try:
        with installed(cluster, namespace, {"operator.replicas": 2, "operator.watchNamespaces": [jobs]}) as (
            helm,
            name,
        ):
            account = f"system:serviceaccount:{namespace}:{name}-operator"
            for verb, resource in [*OPERATOR_MAY, ("patch", "kopfpeerings.kopf.dev")]:
                assert can_i(cluster, account, verb, resource, jobs), f"operator cannot {verb} {resource} in {jobs}"
            for verb, resource in [("list", "moetrainingjobs.moeops.dev"), ("create", "jobs.batch")]:
                assert not can_i(cluster, account, verb, resource, "default"), f"operator may {verb} {resource}"
            assert can_i(cluster, account, "watch", "namespaces", None)
            assert not can_i(cluster, account, "patch", "clusterkopfpeerings.kopf.dev", None)
            manifest = [o for o in yaml.safe_load_all(helm("get", "manifest", name, "-n", namespace).stdout) if o]
            (deployment,) = [
                o for o in manifest if o["kind"] == "Deployment" and o["metadata"]["name"] == f"{name}-operator"
            ]
            env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
            peering = env["MOEOPS_PEERING_NAME"]  # one per release (the default, `moeops`, would be shared)
            assert peering == name
            cluster.kubectl("get", "kopfpeering", peering, "-n", jobs)

            kubeconfig = kubeconfig_for(cluster, namespace, f"{name}-operator", tmp_path / "operator.kubeconfig")
            operator.stop()
            (tmp_path / "log").mkdir()
            scoped = OperatorProcess(
                kubeconfig, tmp_path / "log", standalone=False, args=("--namespace", jobs),
                env={"MOEOPS_PEERING_NAME": peering},
            )  # fmt: skip
            try:
                scoped.start()
                cluster.kubectl.apply(training_job("chart-peered", jobs))
                wait_for("the worker Job", lambda: cluster.read("Job", jobs, "chart-peered"), timeout=60)
                wait_for("status set", lambda: cluster.status("moetrainingjobs", jobs, "chart-peered").get("plan"))

                def peering_record() -> dict[str, Any] | None:
                    got = cluster.kubectl("get", "kopfpeering", peering, "-n", jobs, "-o", "json")
                    return json.loads(got.stdout).get("status") or None

                wait_for("the replica's record in the KopfPeering", peering_record, timeout=30)
                log = scoped.log()
                for sign in ("Forbidden", "forbidden", "Not enough permissions", " 403"):
                    assert sign not in log, f"{sign!r} in the operator's log: {log[-3000:]}"
            finally:
                scoped.stop()
                operator.start()
    finally:
        cluster.core.delete_namespace(jobs, _preload_content=False)
