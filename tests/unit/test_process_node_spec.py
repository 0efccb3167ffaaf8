"""The process node's pure parts: what a kubelet derives from a pod spec, our images' configuration, names."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from moeops.devcluster.node.agent import requests_of, unschedulable_reason
from moeops.devcluster.node.container import Termination
from moeops.devcluster.node.images import ImageCatalog, ImagePullError, parse_dockerfile, repository
from moeops.devcluster.node.network import PodName, ServiceName, hosts_file, local_service_address
from moeops.devcluster.node.podspec import Lookups, SpecError, container_plan, expand, field_value
from moeops.devcluster.node.podstatus import pod_phase
from moeops.devcluster.node.quantity import parse_quantity

IMAGES = Path(__file__).resolve().parents[2] / "images"
CONFIG = {"settings": {"mode": "fast"}}
SECRETS = {"nats": {"token": "s3cret"}}
LOOKUPS = Lookups(config_map=lambda ns, name: CONFIG.get(name), secret=lambda ns, name: SECRETS.get(name))


def pod(**container: object) -> dict[str, Any]:
    return {
        "metadata": {"name": "job-0-abc", "namespace": "team", "uid": "u-1", "annotations": {"rank": "3"}},
        "spec": {
            "nodeName": "n0",
            "hostname": "job-0",
            "subdomain": "job-workers",
            "securityContext": {"runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532, "runAsNonRoot": True},
            "containers": [{"name": "c", "image": "ghcr.io/moeops/moeops-runtime:0.1.0", **container}],
        },
        "status": {"podIP": "127.244.0.7"},
    }


def runtime():
    return ImageCatalog(IMAGES).resolve("ghcr.io/moeops/moeops-runtime:0.1.0")


def test_expansion_follows_kubernetes_rules() -> None:
    env = {"A": "x", "B": "y"}
    assert expand("$(A)-$(B)", env) == "x-y"
    assert expand("$(MISSING)", env) == "$(MISSING)"
    assert expand("$$(A)", env) == "$(A)"
    assert expand("cost $$5", env) == "cost $5"


def test_the_runtime_image_gives_its_env_workdir_user_and_venv() -> None:
    image = runtime()
    assert image.env["PATH"].startswith("/opt/venv/bin:")
    assert image.env["XDG_CACHE_HOME"] == "/tmp/.cache"
    assert (image.workdir, image.uid, image.gid, image.venv) == ("/home/nonroot", 65532, 65532, "/opt/venv")
    assert ("nonroot", 65532, 65532, "/home/nonroot") in image.users


def test_an_image_that_is_not_ours_cannot_be_pulled() -> None:
    with pytest.raises(ImagePullError, match="moeops-runtime"):
        ImageCatalog(IMAGES).resolve("docker.io/library/nginx:1.27")
    with pytest.raises(ImagePullError):
        ImageCatalog(IMAGES).resolve("ghcr.io/moeops/moeops-nonexistent:1")
    assert repository("r.example/a/moeops-runtime:1@sha256:ab") == "moeops-runtime"


def test_dockerfile_exec_and_shell_forms() -> None:
    image = parse_dockerfile("x", 'FROM a AS b\nENV A=1\nFROM c\nENV B=2 C="$B x"\nENTRYPOINT ["run"]\nCMD echo hi\n')
    assert image.env["B"] == "2" and image.env["C"] == "2 x" and "A" not in image.env
    assert image.entrypoint == ["run"] and image.cmd == ["/bin/sh", "-c", "echo hi"]


def test_env_from_every_source_in_order() -> None:
    container = {
        "command": ["moeops", "train", "--rank=$(RANK)"],
        "env": [
            {"name": "RANK", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['rank']"}}},
            {"name": "ADDR", "value": "$(POD_IP):29500"},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "nats", "key": "token"}}},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
        ],
        "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "S_"}],
        "resources": {"limits": {"memory": "4Gi"}},
    }
    plan = container_plan(pod(**container), pod()["spec"]["containers"][0] | container, runtime(), LOOKUPS)
    assert plan.argv == ["moeops", "train", "--rank=3"]
    assert plan.env["ADDR"] == "$(POD_IP):29500"  # defined later: kept verbatim, as Kubernetes does
    assert plan.env["POD_IP"] == "127.244.0.7"
    assert plan.env["TOKEN"] == "s3cret" and plan.env["S_mode"] == "fast" and plan.env["MEM"] == "4096"
    assert plan.env["HOME"] == "/home/nonroot"
    assert (plan.uid, plan.gid, plan.groups, plan.working_dir) == (65532, 65532, [65532], "/home/nonroot")


def test_what_cannot_start_says_why() -> None:
    missing = {"env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}], "command": ["x"]}
    with pytest.raises(SpecError, match="secret team/nope not found"):
        container_plan(pod(), missing, runtime(), LOOKUPS)
    root = pod()
    root["spec"]["securityContext"]["runAsUser"] = 0
    with pytest.raises(SpecError, match="runAsNonRoot"):
        container_plan(root, {"name": "c", "command": ["x"]}, runtime(), LOOKUPS)
    with pytest.raises(SpecError, match="fieldPath"):
        field_value(pod(), "spec.unknown")


def test_hosts_file_names_pods_under_their_headless_service_and_services() -> None:
    text = hosts_file(
        [PodName("127.244.0.2", "team", "job-0", "job-workers")], [ServiceName("127.96.3.4", "team", "moe-small")]
    )
    line = next(x for x in text.splitlines() if x.startswith("127.244.0.2"))
    assert "job-0.job-workers.team.svc.cluster.local" in line and "job-0.job-workers.team.svc" in line.split()
    assert "moe-small.team.svc" in text and local_service_address("10.96.3.4") == "127.96.3.4"
    assert local_service_address("None") is None


def test_quantities_and_scheduling() -> None:
    assert parse_quantity("500m") == Fraction(1, 2) and parse_quantity("4Gi") == 4 * 2**30
    p = pod(resources={"requests": {"cpu": "1"}, "limits": {"memory": "1Gi"}})
    assert requests_of(p) == {"cpu": 1, "memory": 2**30}
    free = {"cpu": Fraction(2), "memory": Fraction(2**31)}
    assert unschedulable_reason(p, {}, free) == ""
    assert "Insufficient cpu" in unschedulable_reason(p, {}, {**free, "cpu": Fraction(1, 2)})
    p["spec"]["nodeSelector"] = {"gpu": "h100"}
    assert "selector" in unschedulable_reason(p, {"gpu": "a100"}, free)


def test_pod_phase_follows_restart_policy() -> None:
    ok, bad = Termination(0, "Completed", "", ""), Termination(1, "Error", "", "")
    assert pod_phase("Never", [ok, ok], 0) == "Succeeded"
    assert pod_phase("Never", [ok, bad], 0) == "Failed"
    assert pod_phase("Never", [ok, None], 1) == "Running"
    assert pod_phase("OnFailure", [bad], 0) == "Running"
    assert pod_phase("Always", [ok], 0) == "Running"
