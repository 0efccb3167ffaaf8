"""The chart's production knobs, rendered by the real helm: upgrade-safe operator strategy, one peering object per
release, pod templates free of the chart's version, the agent's namespace explicit, users' aggregated roles,
priorityClassName, PodDisruptionBudget, NetworkPolicy, topology spread, pod labels, rbac.create, per-component
security contexts and probe timing, and the schema refusing wrong ones. The install/upgrade path is in
tests/e2e/test_chart_upgrade.py."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from helm_chart import AGENT_ON, CHART, container, env, helm, named, of_kind, render, run_helm, workloads

__all__ = ["helm"]  # the fixture

Objects = list[dict[str, Any]]


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]  # type: ignore[no-any-return]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]  # type: ignore[no-any-return]


EVERYTHING = {**AGENT_ON, "operator.replicas": 2, "otel.enabled": True, "otel.endpoint": "http://otel.obs:4318"}


# Upgrade safety ------------------------------------------------------------------------------------------------


def test_operator_strategy_is_recreate_alone_and_an_owned_rolling_update_when_peered(helm: str) -> None:
    alone = named(render(helm), "Deployment", "-operator")
    # Recreate: never two standalone operators; and no rollingUpdate block, which Recreate rejects.
    assert alone["spec"]["strategy"] == {"type": "Recreate"}
    peered = named(render(helm, {"operator.replicas": 2}), "Deployment", "-operator")
    # Spelt out (not left to the API server's defaults): Helm's server-side apply then owns rollingUpdate and
    # removes it when replicas drop back to 1 (tests/e2e/test_chart_upgrade.py runs that upgrade).
    assert peered["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }


def test_pod_templates_do_not_change_with_the_chart_version(helm: str, tmp_path: Path) -> None:
    bumped = tmp_path / "moeops"
    shutil.copytree(CHART, bumped)
    chart = yaml.safe_load((bumped / "Chart.yaml").read_text())
    chart["version"] = "9.9.9"
    (bumped / "Chart.yaml").write_text(yaml.safe_dump(chart))

    before, after = workloads(render(helm, EVERYTHING)), workloads(render(helm, EVERYTHING, chart=bumped))
    assert len(before) == 4
    for old, new in zip(before, after, strict=True):
        assert old["metadata"]["labels"]["helm.sh/chart"] == "moeops-0.1.0"  # objects still say which chart
        assert new["metadata"]["labels"]["helm.sh/chart"] == "moeops-9.9.9"
        assert old["spec"]["template"] == new["spec"]["template"], old["metadata"]["name"]
        labels = pod_labels(old)
        assert "helm.sh/chart" not in labels and "app.kubernetes.io/version" not in labels


# Peering per release -------------------------------------------------------------------------------------------


def test_each_release_peers_through_its_own_object(helm: str) -> None:
    names = {}
    for release in ("team-a", "team-b"):
        objects = render(helm, {"operator.replicas": 2}, release=release)
        (peering,) = of_kind(objects, "ClusterKopfPeering")
        assert env(named(objects, "Deployment", "-operator"))["MOEOPS_PEERING_NAME"] == peering["metadata"]["name"]
        names[release] = peering["metadata"]["name"]
    assert names == {"team-a": "team-a-moeops", "team-b": "team-b-moeops"}
    # A release called moeops keeps the name deploy/peering.yaml and the operator's default use.
    (peering,) = of_kind(render(helm, {"operator.replicas": 2}, release="moeops"), "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "moeops"
    namespaced = render(helm, {"operator.replicas": 2, "operator.watchNamespaces": ["jobs"]})
    (peering,) = of_kind(namespaced, "KopfPeering")
    assert peering["metadata"] == {**peering["metadata"], "name": "rel-moeops", "namespace": "jobs"}


# The agent's namespace -----------------------------------------------------------------------------------------


def test_the_agent_needs_a_namespace_of_its_own(helm: str) -> None:
    values = ["--set", "carbonAgent.enabled=true", "--set", "carbonAgent.region=eu-west-1"]
    for command in (["template", "rel"], ["lint"]):
        result = run_helm(helm, *command, str(CHART), *values, check=False)
        assert result.returncode != 0
        assert "/carbonAgent/namespace': minLength" in result.stdout + result.stderr
    agent = named(render(helm, AGENT_ON), "DaemonSet", "-carbon-agent")
    assert agent["metadata"]["namespace"] == "moeops-node"


# Users' roles --------------------------------------------------------------------------------------------------


def test_edit_and_view_aggregate_our_resources(helm: str) -> None:
    objects = render(helm)
    edit, view = named(objects, "ClusterRole", "-edit"), named(objects, "ClusterRole", "-view")
    labels = edit["metadata"]["labels"]
    assert labels["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert labels["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert "rbac.authorization.k8s.io/aggregate-to-view" not in labels
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert {"aggregate-to-edit", "aggregate-to-admin"}.isdisjoint(
        k.rpartition("/")[2] for k in view["metadata"]["labels"]
    )
    writes = {"create", "delete", "patch", "update"}
    for rule in edit["rules"]:
        if any(r.endswith("/status") for r in rule["resources"]):
            assert rule["verbs"] == ["get"]  # status is the operator's to write
        else:
            assert writes <= set(rule["verbs"]) and set(rule["resources"]) == {"moetrainingjobs", "inferenceservices"}
    assert all(set(rule["verbs"]) == {"get", "list", "watch"} for rule in view["rules"])
    off = render(helm, {"rbac.aggregateToDefaultRoles": False})
    assert [r["metadata"]["name"] for r in of_kind(off, "ClusterRole")] == ["rel-moeops-operator"]


def test_rbac_create_false_renders_no_rbac(helm: str) -> None:
    objects = render(helm, {"rbac.create": False, **AGENT_ON, "operator.watchNamespaces": ["team-a"]})
    assert not [o for o in objects if o["kind"] in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")]
    assert len(of_kind(objects, "ServiceAccount")) == 4  # the accounts stay: bind them yourself


# Scheduling and availability -----------------------------------------------------------------------------------


def test_priority_class_chart_wide_and_per_component(helm: str) -> None:
    assert all("priorityClassName" not in pod_spec(w) for w in workloads(render(helm, AGENT_ON)))
    objects = render(helm, {**AGENT_ON, "priorityClassName": "moeops-control", "carbonAgent.priorityClassName": "node"})
    classes = {w["metadata"]["name"]: pod_spec(w)["priorityClassName"] for w in workloads(objects)}
    assert classes == {
        "rel-moeops-operator": "moeops-control",
        "rel-moeops-rebalancer": "moeops-control",
        "rel-moeops-carbon-aggregator": "moeops-control",
        "rel-moeops-carbon-agent": "node",
    }


def test_pdb_only_for_peered_replicas(helm: str) -> None:
    assert not of_kind(render(helm), "PodDisruptionBudget")  # one replica: a PDB would block every drain
    objects = render(helm, {"operator.replicas": 3})
    (pdb,) = of_kind(objects, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert (
        pdb["spec"]["selector"]["matchLabels"]
        == named(objects, "Deployment", "-operator")["spec"]["selector"]["matchLabels"]
    )
    assert not of_kind(
        render(helm, {"operator.replicas": 3, "operator.podDisruptionBudget.enabled": False}), "PodDisruptionBudget"
    )


def test_topology_spread(helm: str) -> None:
    assert "topologySpreadConstraints" not in pod_spec(named(render(helm), "Deployment", "-operator"))
    peered = pod_spec(named(render(helm, {"operator.replicas": 2}), "Deployment", "-operator"))
    (spread,) = peered["topologySpreadConstraints"]  # peered replicas spread over nodes, softly, by default
    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    anti: dict[str, Any] = {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
    assert "topologySpreadConstraints" not in pod_spec(
        named(render(helm, {"operator.replicas": 2, "operator.affinity": anti}), "Deployment", "-operator")
    )  # the user's affinity replaces the default
    zones = [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"}]
    reb = pod_spec(named(render(helm, {"rebalancer.topologySpreadConstraints": zones}), "Deployment", "-rebalancer"))
    (spread,) = reb["topologySpreadConstraints"]
    assert spread["topologyKey"] == "topology.kubernetes.io/zone"
    assert spread["labelSelector"] == {"matchLabels": {"app.kubernetes.io/name": "moeops",
                                                       "app.kubernetes.io/instance": "rel",
                                                       "app.kubernetes.io/component": "rebalancer"}}  # fmt: skip


def test_pod_labels_and_annotations(helm: str) -> None:
    objects = render(helm, {
        "commonLabels": {"team": "ml"},
        "operator.podLabels": {"sidecar.istio.io/inject": "false", "app.kubernetes.io/component": "hijack"},
        "operator.podAnnotations": {"prometheus.io/scrape": "false"},
    })  # fmt: skip
    op = named(objects, "Deployment", "-operator")
    labels = pod_labels(op)
    assert labels["sidecar.istio.io/inject"] == "false" and labels["team"] == "ml"
    assert labels["app.kubernetes.io/component"] == "operator"  # a podLabel never detaches pods from the selector
    assert op["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert op["spec"]["template"]["metadata"]["annotations"] == {"prometheus.io/scrape": "false"}
    assert "sidecar.istio.io/inject" not in pod_labels(named(objects, "Deployment", "-rebalancer"))


# Security contexts and probes ----------------------------------------------------------------------------------


def test_security_contexts_per_component(helm: str) -> None:
    objects = render(helm, {
        **AGENT_ON,
        "operator.podSecurityContext": {"runAsUser": 1000, "fsGroupChangePolicy": "OnRootMismatch"},
        "rebalancer.securityContext": {"readOnlyRootFilesystem": False},
        "carbonAgent.securityContext": {"capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]}},
    })  # fmt: skip
    op = named(objects, "Deployment", "-operator")
    assert pod_spec(op)["securityContext"]["runAsUser"] == 1000
    assert pod_spec(op)["securityContext"]["runAsNonRoot"] is True  # the rest of the chart-wide one stays
    assert container(named(objects, "Deployment", "-rebalancer"))["securityContext"]["readOnlyRootFilesystem"] is False
    assert container(op)["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod_spec(named(objects, "Deployment", "-carbon-aggregator"))["securityContext"]["runAsUser"] == 65532
    agent = container(named(objects, "DaemonSet", "-carbon-agent"))["securityContext"]
    assert agent["capabilities"]["add"] == ["SYS_ADMIN"] and agent["allowPrivilegeEscalation"] is False


def test_operator_probe_timing(helm: str) -> None:
    c = container(named(render(helm), "Deployment", "-operator"))
    assert c["livenessProbe"] == {"httpGet": {"path": "/healthz", "port": "health"}, "initialDelaySeconds": 10,
                                  "periodSeconds": 20, "timeoutSeconds": 5, "failureThreshold": 3}  # fmt: skip
    tuned = render(helm, {"operator.livenessProbe": {"periodSeconds": 60, "failureThreshold": 5},
                          "operator.readinessProbe": {"initialDelaySeconds": 3}})  # fmt: skip
    c = container(named(tuned, "Deployment", "-operator"))
    assert c["livenessProbe"]["periodSeconds"] == 60 and c["livenessProbe"]["failureThreshold"] == 5
    assert c["livenessProbe"]["initialDelaySeconds"] == 10  # merged with the defaults
    assert c["readinessProbe"]["initialDelaySeconds"] == 3 and c["readinessProbe"]["httpGet"]["path"] == "/healthz"


# NetworkPolicy -------------------------------------------------------------------------------------------------


def egress_ports(policy: dict[str, Any]) -> set[tuple[str, int]]:
    return {(p["protocol"], p["port"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}


def test_network_policies_are_opt_in_and_let_out_only_what_is_called(helm: str) -> None:
    assert not of_kind(render(helm, EVERYTHING), "NetworkPolicy")
    health_from = [{"podSelector": {"matchLabels": {"app": "prometheus"}}}]
    objects = render(helm, {**EVERYTHING, "networkPolicy.enabled": True,
                            "networkPolicy.apiServer.cidrs": ["10.0.0.1/32"],
                            "networkPolicy.nats.to": [{"namespaceSelector": {"matchLabels": {"name": "nats"}}}],
                            "networkPolicy.healthFrom": health_from})  # fmt: skip
    policies = {p["metadata"]["name"]: p for p in of_kind(objects, "NetworkPolicy")}
    assert sorted(policies) == [
        f"rel-moeops-{c}" for c in ("carbon-agent", "carbon-aggregator", "operator", "rebalancer")
    ]
    dns = {("UDP", 53), ("TCP", 53)}
    api, nats, otlp = {("TCP", 443), ("TCP", 6443)}, {("TCP", 4222)}, {("TCP", 4318)}
    assert egress_ports(policies["rel-moeops-operator"]) == dns | api | nats | otlp
    assert egress_ports(policies["rel-moeops-rebalancer"]) == dns | nats | otlp
    assert egress_ports(policies["rel-moeops-carbon-aggregator"]) == dns | nats | otlp
    assert egress_ports(policies["rel-moeops-carbon-agent"]) == dns | api | nats | otlp  # list pods
    assert policies["rel-moeops-carbon-agent"]["metadata"]["namespace"] == "moeops-node"
    op = policies["rel-moeops-operator"]
    assert (
        op["spec"]["podSelector"]["matchLabels"]
        == named(objects, "Deployment", "-operator")["spec"]["selector"]["matchLabels"]
    )
    assert {"ipBlock": {"cidr": "10.0.0.1/32"}} in [t for rule in op["spec"]["egress"] for t in rule.get("to", [])]
    (ingress,) = op["spec"]["ingress"]
    assert ingress["ports"] == [{"port": 8080, "protocol": "TCP"}] and ingress["from"][0]["podSelector"]
    for name in ("rel-moeops-rebalancer", "rel-moeops-carbon-aggregator", "rel-moeops-carbon-agent"):
        assert policies[name]["spec"]["ingress"] == [] and policies[name]["spec"]["policyTypes"] == [
            "Ingress",
            "Egress",
        ]
    # No bus, no OTel: only DNS and the API server for the operator, and no other policies.
    alone = render(helm, {"nats.enabled": False, "networkPolicy.enabled": True})
    (only,) = of_kind(alone, "NetworkPolicy")
    assert egress_ports(only) == dns | api
    # The OTLP port follows the endpoint (a scheme's default when it names none).
    https = render(helm, {"networkPolicy.enabled": True, "otel.enabled": True, "otel.endpoint": "https://otel.obs"})
    assert ("TCP", 443) in egress_ports(named(https, "NetworkPolicy", "-rebalancer"))


# The schema ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["--set", "operator.livenessProbe.periodSecond=5"], "additional properties 'periodSecond' not allowed"),
        (["--set", "operator.readinessProbe.timeoutSeconds=0"], "/operator/readinessProbe/timeoutSeconds"),
        (["--set", "operator.podDisruptionBudget.maxUnavailable=0"], "/operator/podDisruptionBudget/maxUnavailable"),
        (["--set", "networkPolicy.nats.ports[0]=0"], "/networkPolicy/nats/ports/0"),
        (["--set", "networkPolicy.apiServer.cidrs[0]=apiserver"], "/networkPolicy/apiServer/cidrs/0"),
        (["--set", "networkPolicy.enable=true"], "additional properties 'enable' not allowed"),
        (["--set", "rbac.aggregate=false"], "additional properties 'aggregate' not allowed"),
        (["--set", "rebalancer.topologySpreadConstraints[0].maxSkew=1"], "/rebalancer/topologySpreadConstraints/0"),
        (["--set", "carbonAggregator.podLabels.team=1"], "/carbonAggregator/podLabels/team"),
    ],
)
def test_schema_rejects_wrong_knobs(helm: str, values: list[str], message: str) -> None:
    result = run_helm(helm, "template", "rel", str(CHART), *values, check=False)
    assert result.returncode != 0, f"helm template accepted {values}"
    assert message in result.stdout + result.stderr, result.stdout + result.stderr


# Packaging -----------------------------------------------------------------------------------------------------


def test_helm_package_carries_the_schema_crds_and_dashboard(helm: str, tmp_path: Path) -> None:
    out = run_helm(helm, "package", str(CHART), "-d", str(tmp_path)).stdout
    (archive,) = tmp_path.glob("moeops-*.tgz")
    assert archive.name == "moeops-0.1.0.tgz" and str(archive) in out
    rendered = run_helm(helm, "template", "rel", str(archive), "--include-crds",
                        "--set", "grafanaDashboard.enabled=true").stdout  # fmt: skip
    kinds = [d["kind"] for d in yaml.safe_load_all(rendered) if d]
    assert kinds.count("CustomResourceDefinition") == 4 and "ConfigMap" in kinds
    refused = run_helm(helm, "template", "rel", str(archive), "--set", "operator.replicas=two", check=False)
    assert "/operator/replicas': got string, want integer" in refused.stderr
