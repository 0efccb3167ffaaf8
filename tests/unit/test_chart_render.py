"""The Helm chart (charts/moeops) through the real helm binary: lint, template with default and non-default values
(asserting on the rendered objects), the values schema rejecting wrong values, the chart's CRDs identical to crds/,
and Pod Security `restricted` on every container but the node agent's documented exceptions."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path
from typing import Any

import pytest

from helm_chart import AGENT_ON, CHART, container, env, helm, named, of_kind, render, run_helm, workloads

__all__ = ["helm"]  # the fixture

REPO = Path(__file__).resolve().parents[2]
RESYNC = "cp crds/*.yaml charts/moeops/crds/  (make chart-crds)"


# Lint and template ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"operator.replicas": 3, "otel.enabled": True, "otel.endpoint": "http://otel:4318",
         "otel.protocol": "http/protobuf", "grafanaDashboard.enabled": True, **AGENT_ON},
        {"operator.watchNamespaces": ["team-a", "team-b"], "nats.enabled": False},
    ],
    ids=["defaults", "everything-on", "namespaced-no-bus"],
)  # fmt: skip
def test_lint_passes(helm: str, values: dict[str, Any]) -> None:
    args = [f"--set-json={k}={json.dumps(v)}" for k, v in values.items()]
    result = run_helm(helm, "lint", "--strict", str(CHART), *args)
    assert "0 chart(s) failed" in result.stdout


def test_defaults(helm: str) -> None:
    objects = render(helm)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds.count("Deployment") == 3 and "DaemonSet" not in kinds  # agent off by default (needs a region)
    assert "ConfigMap" not in kinds and "KopfPeering" not in kinds and "ClusterKopfPeering" not in kinds
    op = named(objects, "Deployment", "-operator")
    c = container(op)
    assert c["image"] == "ghcr.io/moeops/moeops-operator:0.1.0" and c["imagePullPolicy"] == "IfNotPresent"
    assert c["command"] == ["moeops", "operator", "run"]
    assert "--standalone" in c["args"] and not any(a.startswith("--namespace") for a in c["args"])
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" and c["readinessProbe"]["httpGet"]["port"] == "health"
    assert any(a == "--liveness=http://0.0.0.0:8080/healthz" for a in c["args"])
    e = env(op)
    assert e["MOEOPS_RUNTIME_IMAGE"] == "ghcr.io/moeops/moeops-runtime:0.1.0"
    assert e["MOEOPS_NATS_URL"] == "nats://nats.nats.svc.cluster.local:4222"
    assert not any(k.startswith("OTEL_") for k in e) and "MOEOPS_WATCH_NAMESPACES" not in e
    reb = container(named(objects, "Deployment", "-rebalancer"))
    assert named(objects, "Deployment", "-rebalancer")["spec"]["replicas"] == 1  # one per cluster
    assert reb["command"] == ["python", "-m", "moeops.rebalancer"] and "--job" not in " ".join(reb.get("args", []))
    agg = container(named(objects, "Deployment", "-carbon-aggregator"))
    assert agg["command"] == ["moeops-carbon", "aggregator"] and agg["image"].endswith("/moeops-operator:0.1.0")
    # One ServiceAccount each; only the operator mounts a token.
    accounts = {
        o["metadata"]["name"]: o.get("automountServiceAccountToken") for o in of_kind(objects, "ServiceAccount")
    }
    assert accounts == {
        "rel-moeops-operator": True,
        "rel-moeops-rebalancer": False,
        "rel-moeops-carbon-aggregator": False,
    }
    for w in workloads(objects):
        assert w["metadata"]["namespace"] == "moeops"
        assert w["spec"]["template"]["spec"]["serviceAccountName"] in accounts


def test_operator_rbac_is_what_it_calls(helm: str) -> None:
    objects = render(helm)
    role = named(objects, "ClusterRole", "-operator")  # the agent (off) would have its own, users' roles are apart
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    rules = {key: sorted(verbs) for key, verbs in granted.items()}
    assert rules == {
        ("apiextensions.k8s.io", "customresourcedefinitions"): ["list", "watch"],
        ("moeops.dev", "moetrainingjobs"): ["delete", "get", "list", "patch", "watch"],  # delete: the TTL
        ("moeops.dev", "inferenceservices"): ["get", "list", "patch", "watch"],
        ("moeops.dev", "moetrainingjobs/status"): ["patch"],
        ("moeops.dev", "inferenceservices/status"): ["patch"],
        ("moeops.dev", "moetrainingjobs/finalizers"): ["update"],
        ("moeops.dev", "inferenceservices/finalizers"): ["update"],
        ("batch", "jobs"): ["create", "delete", "get", "list", "patch", "watch"],  # delete: a group restart
        ("", "pods"): ["list"],  # which worker failed
        ("", "persistentvolumeclaims"): ["get"],  # the checkpoint claim's existence and access modes
        ("apps", "deployments"): ["create", "get", "list", "patch", "watch"],
        ("policy", "poddisruptionbudgets"): ["create", "delete", "get", "patch"],  # InferenceServices of max >= 2
        ("", "configmaps"): ["create", "get", "patch"],
        ("", "services"): ["create", "get", "patch"],
        ("", "events"): ["create", "list"],  # list: a worker Job's FailedCreate
    }
    assert not any("*" in rule["verbs"] or "*" in rule["resources"] for rule in role["rules"])
    assert not any(
        r in ("secrets", "pods/exec", "pods/log", "namespaces") for rule in role["rules"] for r in rule["resources"]
    )
    (binding,) = of_kind(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rel-moeops-operator", "namespace": "moeops"}]


def test_replicas_above_one_peer(helm: str) -> None:
    objects = render(helm, {"operator.replicas": 2})
    op = named(objects, "Deployment", "-operator")
    assert op["spec"]["replicas"] == 2 and "--standalone" not in container(op)["args"]
    (peering,) = of_kind(objects, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "rel-moeops"  # one per release, named to the operator in its env
    assert env(op)["MOEOPS_PEERING_NAME"] == "rel-moeops"
    role = named(objects, "ClusterRole", "-operator")
    assert {
        "apiGroups": ["kopf.dev"],
        "resources": ["clusterkopfpeerings"],
        "verbs": ["get", "list", "watch", "patch"],
    } in role["rules"]


def test_watched_namespaces_get_roles(helm: str) -> None:
    objects = render(helm, {"operator.watchNamespaces": ["team-a", "team-b"], "operator.replicas": 2})
    c = container(named(objects, "Deployment", "-operator"))
    assert [a for a in c["args"] if a.startswith("--namespace")] == ["--namespace=team-a", "--namespace=team-b"]
    assert env(named(objects, "Deployment", "-operator"))["MOEOPS_WATCH_NAMESPACES"] == "team-a,team-b"
    roles = of_kind(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in of_kind(objects, "RoleBinding")) == ["team-a", "team-b"]
    for role in roles:
        resources = {r for rule in role["rules"] for r in rule["resources"]}
        assert {"moetrainingjobs", "jobs", "deployments", "events", "kopfpeerings"} <= resources
    cluster_role = named(objects, "ClusterRole", "-operator")  # only what is cluster-scoped
    assert {r for rule in cluster_role["rules"] for r in rule["resources"]} == {
        "customresourcedefinitions",
        "namespaces",
    }
    assert sorted(p["metadata"]["namespace"] for p in of_kind(objects, "KopfPeering")) == ["team-a", "team-b"]
    assert not of_kind(objects, "ClusterKopfPeering")


def test_nats_existing_secret_and_tls(helm: str) -> None:
    objects = render(helm, {
        "nats.url": "tls://nats-0.nats:4222,tls://nats-1.nats:4222",
        "nats.auth.existingSecret": "nats-auth", "nats.auth.type": "token", "nats.auth.tokenKey": "tok",
        "nats.tls.enabled": True, "nats.tls.existingSecret": "nats-tls", "nats.tls.certKey": "tls.crt",
        "nats.tls.keyKey": "tls.key", "nats.workerTokenSecret": "worker-nats", **AGENT_ON,
    })  # fmt: skip
    assert len(workloads(objects)) == 4
    for w in workloads(objects):
        e = env(w)
        assert e["MOEOPS_NATS_URL"] == "tls://nats-0.nats:4222,tls://nats-1.nats:4222"
        assert e["MOEOPS_NATS_TOKEN"] == {"secretKeyRef": {"name": "nats-auth", "key": "tok"}}
        assert e["MOEOPS_NATS_TLS_CA"] == "/etc/moeops/nats-tls/ca.crt"
        assert e["MOEOPS_NATS_TLS_CERT"] == "/etc/moeops/nats-tls/tls.crt"
        assert e["MOEOPS_NATS_TLS_KEY"] == "/etc/moeops/nats-tls/tls.key"
        volumes = {v["name"]: v for v in w["spec"]["template"]["spec"]["volumes"]}
        assert volumes["nats-tls"]["secret"]["secretName"] == "nats-tls" and "nats-auth" not in volumes
        mounts = {m["name"]: m for m in container(w)["volumeMounts"]}
        assert mounts["nats-tls"] == {"name": "nats-tls", "mountPath": "/etc/moeops/nats-tls", "readOnly": True}
    assert env(named(objects, "Deployment", "-operator"))["MOEOPS_NATS_TOKEN_SECRET"] == "worker-nats"

    creds = render(helm, {"nats.auth.existingSecret": "nats-auth", "nats.auth.type": "creds"})
    for w in workloads(creds):
        assert env(w)["MOEOPS_NATS_CREDS"] == "/etc/moeops/nats-auth/nats.creds" and "MOEOPS_NATS_TOKEN" not in env(w)
        volumes = {v["name"]: v for v in w["spec"]["template"]["spec"]["volumes"]}
        assert volumes["nats-auth"]["secret"]["secretName"] == "nats-auth"


def test_no_bus(helm: str) -> None:
    objects = render(helm, {"nats.enabled": False, **AGENT_ON})
    assert [w["metadata"]["name"] for w in workloads(objects)] == ["rel-moeops-operator"]
    assert not any(k.startswith("MOEOPS_NATS") for k in env(workloads(objects)[0]))


def test_otel_http(helm: str) -> None:
    otel = {"otel.enabled": True, "otel.endpoint": "http://otel.obs:4318", "otel.protocol": "http/protobuf"}
    objects = render(helm, {**otel, "otel.resourceAttributes": {"deployment.environment": "prod"}, **AGENT_ON})
    names = {}
    for w in workloads(objects):
        e = env(w)
        assert e["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel.obs:4318"
        assert e["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
        assert e["OTEL_RESOURCE_ATTRIBUTES"] == "deployment.environment=prod"
        assert e["MOEOPS_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        assert e["MOEOPS_NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
        names[w["metadata"]["name"]] = e["OTEL_SERVICE_NAME"]
        assert len({x["name"] for x in container(w)["env"]}) == len(container(w)["env"]), "duplicate env"
    assert names == {
        "rel-moeops-operator": "moeops-operator",
        "rel-moeops-rebalancer": "moeops-rebalancer",
        "rel-moeops-carbon-aggregator": "moeops-carbon-aggregator",
        "rel-moeops-carbon-agent": "moeops-carbon-agent",
    }


def test_scheduling_images_and_resources(helm: str) -> None:
    objects = render(helm, {
        "image.registry": "registry.example/ml", "image.tag": "1.2.3", "image.pullPolicy": "Always",
        "operator.image": {"tag": "1.2.4-debug"}, "operator.runtimeImage": {"repository": "other/runtime"},
        "operator.nodeSelector": {"node-role/control": "true"},
        "operator.tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ctl", "effect": "NoSchedule"}],
        "rebalancer.affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
        "carbonAggregator.resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
        "imagePullSecrets": [{"name": "regcred"}], **AGENT_ON,
    })  # fmt: skip
    op = named(objects, "Deployment", "-operator")
    spec = op["spec"]["template"]["spec"]
    assert container(op)["image"] == "registry.example/ml/moeops-operator:1.2.4-debug"
    assert container(op)["imagePullPolicy"] == "Always"
    assert env(op)["MOEOPS_RUNTIME_IMAGE"] == "other/runtime:1.2.3" and env(op)["MOEOPS_IMAGE_PULL_POLICY"] == "Always"
    assert spec["nodeSelector"] == {"node-role/control": "true"} and spec["tolerations"][0]["key"] == "dedicated"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    reb = named(objects, "Deployment", "-rebalancer")
    assert container(reb)["image"] == "registry.example/ml/moeops-operator:1.2.3"
    assert "nodeAffinity" in reb["spec"]["template"]["spec"]["affinity"]
    resources = container(named(objects, "Deployment", "-carbon-aggregator"))["resources"]
    assert resources == {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "256Mi"}}  # merged
    agent = named(objects, "DaemonSet", "-carbon-agent")
    assert container(agent)["image"] == "registry.example/ml/moeops-carbon-agent:1.2.3"
    assert agent["spec"]["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_carbon_agent(helm: str) -> None:
    objects = render(helm, {**AGENT_ON, "carbonAgent.hostPID": True, "carbonAgent.runtimeClassName": "nvidia"})
    agent = named(objects, "DaemonSet", "-carbon-agent")
    spec = agent["spec"]["template"]["spec"]
    assert agent["metadata"]["namespace"] == "moeops-node" and spec["hostPID"] and spec["runtimeClassName"] == "nvidia"
    c = container(agent)
    assert c["command"] == ["moeops-carbon", "agent"]
    e = env(agent)
    assert e["MOEOPS_NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert e["MOEOPS_CARBON_REGION"] == "eu-west-1"
    assert e["MOEOPS_CARBON_KUBELET_SOCKET"] == "/var/lib/kubelet/pod-resources/kubelet.sock"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/var/lib/kubelet/pod-resources"]["readOnly"] and mounts["/sys/class/powercap"]["readOnly"]
    assert not mounts["/var/lib/moeops/carbon-spool"].get("readOnly")
    # list pods, nothing else, bound to the agent's account in its namespace.
    role = named(objects, "ClusterRole", "-carbon-agent")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]
    binding = named(objects, "ClusterRoleBinding", "-carbon-agent")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "rel-moeops-carbon-agent", "namespace": "moeops-node"}
    ]
    sa = named(objects, "ServiceAccount", "-carbon-agent")
    assert sa["metadata"]["namespace"] == "moeops-node" and sa["automountServiceAccountToken"] is True

    nvml_only = render(helm, {**AGENT_ON, "carbonAgent.nvmlOnly": True, "carbonAgent.hostPID": True})
    agent = named(nvml_only, "DaemonSet", "-carbon-agent")
    assert env(agent)["MOEOPS_CARBON_NVML_ONLY"] == "true" and "hostPID" not in agent["spec"]["template"]["spec"]
    assert not agent["spec"]["template"]["spec"]["automountServiceAccountToken"]
    assert not [r for r in of_kind(nvml_only, "ClusterRole") if r["metadata"]["name"].endswith("-carbon-agent")]


def test_grafana_dashboard(helm: str) -> None:
    assert not of_kind(render(helm), "ConfigMap")
    (cm,) = of_kind(
        render(helm, {"grafanaDashboard.enabled": True, "grafanaDashboard.namespace": "monitoring"}), "ConfigMap"
    )
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1" and cm["metadata"]["namespace"] == "monitoring"
    dashboard = json.loads(cm["data"]["moeops.json"])
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    # The instruments' names (operator/handlers/observe.py, serving/otel.py, carbon/node/telemetry.py) as an OTel →
    # Prometheus pipeline writes them (dots to underscores; unit and _total suffixes matched loosely where they vary).
    for metric in ("moeops_job_progress", "moeops_job_tokens_per_second", "moeops_job_utilization",
                   "moeops_job_plan_epoch", "http_server_request_duration_seconds_bucket",
                   "moeops_server_tokens_generated", "moeops_server_exit_layer_mean", "hw_energy_joules_total",
                   "gen_ai_server_time_to_first_token_seconds_bucket",
                   "gen_ai_server_time_per_output_token_seconds_bucket",
                   "gen_ai_server_request_duration_seconds_bucket",
                   "hw_power_watts", "moeops_carbon_emissions_grams_total"):  # fmt: skip
        assert metric in exprs, metric
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


# Pod Security ------------------------------------------------------------------------------------------------


AGENT_EXCEPTIONS = {"runAsNonRoot"}  # root: the kubelet socket and RAPL are root-only (values.yaml, carbonAgent)


def test_every_container_is_restricted_but_the_agents_exceptions(helm: str) -> None:
    objects = render(helm, {**AGENT_ON, "operator.replicas": 2, "otel.enabled": True, "otel.endpoint": "http://o:4317"})
    assert len(workloads(objects)) == 4
    for w in workloads(objects):
        spec = w["spec"]["template"]["spec"]
        agent = w["kind"] == "DaemonSet"
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            where = f"{w['metadata']['name']}/{c['name']}"
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"], where
            assert sc.get("readOnlyRootFilesystem") is True, where
            seccomp = sc.get("seccompProfile") or spec["securityContext"].get("seccompProfile")
            assert seccomp == {"type": "RuntimeDefault"}, where
            assert not sc.get("privileged"), where
            non_root = sc.get("runAsNonRoot", spec["securityContext"].get("runAsNonRoot"))
            assert non_root is (not agent), where
        if not agent:
            assert not spec.get("hostPID") and not spec.get("hostNetwork")
            assert all("hostPath" not in v for v in spec.get("volumes", [])), w["metadata"]["name"]


# The schema ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["--set", "operator.replicas=two"], "/operator/replicas': got string, want integer"),
        (["--set", "otel.protocol=udp"], "/otel/protocol': value must be one of 'grpc', 'http/protobuf'"),
        (["--set", "operator.resources.requests.cpu=-1"], "/operator/resources/requests/cpu"),
        (["--set", "rebalancer.resources.limits.memory=-512Mi"], "/rebalancer/resources/limits/memory"),
        (["--set", "replicas=2"], "additional properties 'replicas' not allowed"),
        (["--set", "rebalancer.replicas=2"], "additional properties 'replicas' not allowed"),
        (["--set", "operator.watchNamespace=a"], "additional properties 'watchNamespace' not allowed"),
        (["--set", "carbonAgent.enabled=true"], "/carbonAgent/region': minLength"),
        (["--set", "nats.tls.enabled=true"], "/nats/tls/existingSecret': minLength"),
        (["--set", "nats.url=http://nats:4222"], "/nats/url"),
        (["--set", "operator.watchNamespaces[0]=Team_A"], "/operator/watchNamespaces/0"),
        (["--set", "otel.enabled=true"], "/otel/endpoint"),
        (["--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy"),
    ],
)
def test_schema_rejects_wrong_values(helm: str, values: list[str], message: str) -> None:
    for command in ("template", "lint"):
        args = [command, "rel", str(CHART), *values] if command == "template" else [command, str(CHART), *values]
        result = run_helm(helm, *args, check=False)
        assert result.returncode != 0, f"helm {command} accepted {values}"
        assert message in result.stdout + result.stderr, result.stdout + result.stderr


# One source for the CRDs ---------------------------------------------------------------------------------------


def test_chart_crds_are_crds() -> None:
    source = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    chart = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert chart == source, f"charts/moeops/crds/ differs from crds/: run {RESYNC}"
    _, mismatch, errors = filecmp.cmpfiles(REPO / "crds", CHART / "crds", source, shallow=False)
    assert not mismatch and not errors, f"charts/moeops/crds/ differs from crds/ ({mismatch}): run {RESYNC}"
