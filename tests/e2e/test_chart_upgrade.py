"""The chart's life on the real control plane: `helm install`, then `helm upgrade` (Helm 4: server-side apply) across
value sets (operator replicas 2 -> 1 -> 2, cluster-wide <-> namespaced, node agent on/off, TLS on/off) and
`helm uninstall`, asserting after each that the release is deployed and that the live objects are exactly the
release's (nothing missing, no orphaned peering object, RBAC as the values say); users bound to Kubernetes' `edit`,
`view` and `admin` roles in a namespace get our resources through aggregation; and an agent namespace whose Pod
Security level would never admit the agent fails the install instead of reporting it deployed."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from harness import Cluster, wait_for
from helm_release import CHART, NEVER_PULLS, Helm, can_i, fresh_namespace, installed, set_json
from manifests import training_job

# Every kind the chart renders (ReplicaSets and Pods carry the instance label too, but belong to their owners).
KINDS = (
    "clusterroles,clusterrolebindings,roles,rolebindings,clusterkopfpeerings,kopfpeerings,deployments,daemonsets,"
    "serviceaccounts,configmaps,poddisruptionbudgets,networkpolicies"
)
Key = tuple[str, str, str]  # kind, namespace ("" when cluster-scoped), name


def live_objects(cluster: Cluster, release: str) -> set[Key]:
    got = cluster.kubectl("get", KINDS, "-A", "-l", f"app.kubernetes.io/instance={release}", "-o", "json")
    return {
        (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in json.loads(got.stdout)["items"]
    }


def release_objects(helm: Helm, release: str, namespace: str) -> list[dict[str, Any]]:
    manifest = helm("get", "manifest", release, "--namespace", namespace).stdout
    return [o for o in yaml.safe_load_all(manifest) if o]


def keys(objects: list[dict[str, Any]]) -> set[Key]:
    return {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in objects}


@pytest.fixture
def namespaces(cluster: Cluster, namespace: str) -> Iterator[tuple[str, str, str]]:
    """(the release's `restricted` namespace, a `privileged` one for the node agent, a `baseline` one for jobs)."""
    agent, jobs = f"{namespace}-node", f"{namespace}-jobs"
    fresh_namespace(cluster, agent, "privileged")
    fresh_namespace(cluster, jobs, "baseline")
    yield namespace, agent, jobs
    for name in (agent, jobs):
        cluster.core.delete_namespace(name, _preload_content=False)


def test_install_upgrade_across_value_sets_and_uninstall(cluster: Cluster, namespaces: tuple[str, str, str]) -> None:
    namespace, agent_ns, jobs = namespaces
    agent = {"carbonAgent.enabled": True, "carbonAgent.region": "eu-west-1", "carbonAgent.namespace": agent_ns}
    tls = {"nats.tls.enabled": True, "nats.tls.existingSecret": "nats-tls"}
    # The opt-in knobs, so that the API server validates what they render (NetworkPolicies, spread, pod labels).
    knobs = {
        "networkPolicy.enabled": True,
        "networkPolicy.apiServer.cidrs": ["127.0.0.1/32"],
        "networkPolicy.nats.to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "nats"}}}],
        "networkPolicy.healthFrom": [{"podSelector": {"matchLabels": {"app": "prometheus"}}}],
        "operator.podLabels": {"team": "ml"},
        "rebalancer.topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}
        ],
    }
    steps: list[tuple[str, dict[str, Any]]] = [
        ("2 replicas, cluster-wide", {"operator.replicas": 2}),
        ("down to 1 replica", {"operator.replicas": 1}),  # RollingUpdate -> Recreate: what failed under SSA
        ("2 replicas watching a namespace, agent and TLS on",
         {"operator.replicas": 2, "operator.watchNamespaces": [jobs], **agent, **tls, **knobs}),
        ("2 replicas cluster-wide, agent and TLS on", {"operator.replicas": 2, **agent, **tls, **knobs}),
        ("1 replica watching a namespace, agent and TLS off",
         {"operator.replicas": 1, "operator.watchNamespaces": [jobs]}),
        ("the defaults", {}),
    ]  # fmt: skip
    helm = Helm(cluster.kubeconfig)
    name = f"moeops-{uuid.uuid4().hex[:6]}"
    try:
        for revision, (what, values) in enumerate(steps, start=1):
            verb = "install" if revision == 1 else "upgrade"
            args = set_json({"image.registry": NEVER_PULLS, **values})
            result = helm(verb, name, str(CHART), "--namespace", namespace, *args, "--timeout", "120s", check=False)
            assert result.returncode == 0, f"helm {verb} ({what}) failed: {result.stdout}{result.stderr}"
            status = json.loads(helm("status", name, "--namespace", namespace, "-o", "json").stdout)
            assert (status["info"]["status"], status["version"]) == ("deployed", revision), what
            assert_release_matches(cluster, helm, name, namespace, values, jobs, what)

        helm("uninstall", name, "--namespace", namespace, "--timeout", "60s")
        assert wait_for("nothing of the release left", lambda: not live_objects(cluster, name) or None, timeout=60)
    finally:
        helm("uninstall", name, "--namespace", namespace, "--timeout", "60s", check=False)


def assert_release_matches(
    cluster: Cluster, helm: Helm, name: str, namespace: str, values: dict[str, Any], jobs: str, what: str
) -> None:
    """The live objects are the release's; the operator's strategy, peering and RBAC are what `values` say."""
    objects = release_objects(helm, name, namespace)
    # Removed objects are deleted once the apply succeeded: wait for the garbage of a shrinking step.
    wait_for(f"{what}: the live objects to be the release's", lambda: live_objects(cluster, name) == keys(objects))
    replicas = int(values.get("operator.replicas", 1))
    watched = values.get("operator.watchNamespaces", [])
    deployment = cluster.read("Deployment", namespace, f"{name}-operator")
    assert deployment is not None
    strategy = deployment["spec"]["strategy"]
    if replicas > 1:
        assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}, what
    else:
        assert strategy == {"type": "Recreate"}, what  # no rollingUpdate left behind
    pod = deployment["spec"]["template"]["spec"]
    assert ("--standalone" in pod["containers"][0]["args"]) == (replicas == 1), what
    assert ("nats-tls" in {v["name"] for v in pod["volumes"]}) == bool(values.get("nats.tls.enabled")), what

    peerings = {(kind, ns) for kind, ns, n in keys(objects) if kind.endswith("KopfPeering") and n == name}
    expected = set() if replicas == 1 else {("KopfPeering", jobs)} if watched else {("ClusterKopfPeering", "")}
    assert peerings == expected, what

    account = f"system:serviceaccount:{namespace}:{name}-operator"
    where = jobs if watched else "default"
    assert can_i(cluster, account, "create", "jobs.batch", where), what
    assert can_i(cluster, account, "create", "jobs.batch", "default") == (not watched), what
    assert can_i(cluster, account, "patch", "kopfpeerings.kopf.dev", jobs) == (replicas > 1 and bool(watched)), what
    assert can_i(cluster, account, "patch", "clusterkopfpeerings.kopf.dev", None) == (replicas > 1 and not watched)
    policies = {n for kind, _, n in keys(objects) if kind == "NetworkPolicy"}
    expected_policies = {f"{name}-{c}" for c in ("operator", "rebalancer", "carbon-aggregator", "carbon-agent")}
    assert policies == (expected_policies if values.get("networkPolicy.enabled") else set()), what
    assert ("PodDisruptionBudget" in {k for k, _, _ in keys(objects)}) == (replicas > 1), what
    agent_on = bool(values.get("carbonAgent.enabled"))
    assert ("DaemonSet" in {k for k, _, _ in keys(objects)}) == agent_on, what
    if agent_on:
        agent = f"system:serviceaccount:{values['carbonAgent.namespace']}:{name}-carbon-agent"
        assert can_i(cluster, agent, "list", "pods", None), what


def test_users_bound_to_edit_view_and_admin_get_our_resources(cluster: Cluster, namespace: str) -> None:
    bindings = {"alice": "edit", "bob": "view", "carol": "admin"}
    for user, role in bindings.items():
        cluster.kubectl("create", "rolebinding", f"{user}-{role}", f"--clusterrole={role}", f"--user={user}",
                        "-n", namespace)  # fmt: skip

    def may(user: str, verb: str, resource: str, where: str = namespace) -> bool:
        return can_i(cluster, user, verb, resource, where)

    jobs, services = "moetrainingjobs.moeops.dev", "inferenceservices.moeops.dev"
    assert not may("alice", "list", jobs)  # built-in roles alone know nothing of our resources
    with installed(cluster, namespace, {}):
        # The clusterrole-aggregation controller folds our ClusterRoles into edit, admin and view.
        wait_for("edit to aggregate our rules", lambda: may("alice", "create", jobs) or None, timeout=30)
        wait_for("view to aggregate our rules", lambda: may("bob", "list", services) or None, timeout=30)
        wait_for("admin to aggregate our rules", lambda: may("carol", "delete", services) or None, timeout=30)
        for resource in (jobs, services):
            for verb in ("create", "get", "list", "watch", "patch", "update", "delete", "deletecollection"):
                assert may("alice", verb, resource) and may("carol", verb, resource), (verb, resource)
            for verb in ("get", "list", "watch"):
                assert may("bob", verb, resource), (verb, resource)
            for verb in ("create", "patch", "delete"):
                assert not may("bob", verb, resource), (verb, resource)
            assert may("bob", "get", f"{resource}/status")
            assert not may("alice", "patch", f"{resource}/status")  # status is the operator's
            assert not may("alice", "create", resource, "default")  # bound in one namespace only
        # What a user does: apply a job and read it back, under her own name.
        cluster.kubectl.apply(training_job("alices-job", namespace), "--as=alice")
        got = cluster.kubectl("get", "moetrainingjob", "alices-job", "-n", namespace, "--as=bob", "-o", "name")
        assert got.stdout.strip() == "moetrainingjob.moeops.dev/alices-job"
    # Uninstalled: the aggregated rules go with the release.
    wait_for("edit to lose our rules", lambda: not may("alice", "create", jobs) or None, timeout=30)


def test_an_agent_namespace_that_forbids_the_agent_fails_the_install(cluster: Cluster, namespace: str) -> None:
    helm = Helm(cluster.kubeconfig)
    name = f"moeops-{uuid.uuid4().hex[:6]}"
    values = {
        "image.registry": NEVER_PULLS,
        "carbonAgent.enabled": True,
        "carbonAgent.region": "eu-west-1",
        "carbonAgent.namespace": namespace,
    }  # fmt: skip  (the release's own namespace: `restricted`)
    try:
        result = helm("install", name, str(CHART), "--namespace", namespace, *set_json(values), check=False)
        assert result.returncode != 0, "installed an agent its namespace will never admit"
        assert f'carbonAgent.namespace "{namespace}" enforces Pod Security "restricted"' in result.stderr
        assert not live_objects(cluster, name)
    finally:
        helm("uninstall", name, "--namespace", namespace, check=False)
