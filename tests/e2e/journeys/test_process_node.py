"""The process node gives a container what a kubelet gives it: volumes, env, names, status, signals, logs."""

from __future__ import annotations

import json
import textwrap
import urllib.request
from typing import Any

from harness import Cluster, wait_for

from moeops.devcluster.node import local_service_address
from moeops.devcluster.node.volumes import claim_dir
from moeops.devcluster.platform import LocalPlatform

IMAGE = "ghcr.io/moeops/moeops-runtime:0.1.0"
RESTRICTED_POD = {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                  "seccompProfile": {"type": "RuntimeDefault"}}  # fmt: skip
RESTRICTED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
              "capabilities": {"drop": ["ALL"]}}  # fmt: skip


def pod(name: str, script: str, **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": IMAGE, "command": ["python", "-c", textwrap.dedent(script)],
                 "securityContext": RESTRICTED, **spec.pop("container", {})}  # fmt: skip
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"restartPolicy": "Never", "securityContext": RESTRICTED_POD, "containers": [container], **spec},
    }


def phase(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return dict(json.loads(cluster.core.read_namespaced_pod(name, namespace, _preload_content=False).data))


def finished(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    found = phase(cluster, namespace, name)
    return found if found["status"].get("phase") in ("Succeeded", "Failed") else None


def test_a_pod_runs_with_its_volumes_env_and_user(
    platform: LocalPlatform, journey_cluster: Cluster, journey_namespace: str
) -> None:
    ns = journey_namespace
    journey_cluster.kubectl.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
                                   "data": {"greeting": "hello"}}, "-n", ns)  # fmt: skip
    journey_cluster.kubectl.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
                                   "spec": {"accessModes": ["ReadWriteMany"],
                                            "resources": {"requests": {"storage": "1Gi"}}}}, "-n", ns)  # fmt: skip
    script = """
        import os, socket, pathlib
        out = pathlib.Path("/data/out.txt")
        out.write_text(" ".join([open("/etc/moeops/greeting").read(), os.environ["POD"], str(os.getuid()),
                                 socket.gethostname(), os.environ["HOME"]]))
        try:
            open("/oops", "w")
        except OSError as e:
            print("read-only root:", e.errno)
        print("done")
        """
    manifest = pod("writer", script, volumes=[{"name": "cfg", "configMap": {"name": "cfg"}},
                                              {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                                              {"name": "tmp", "emptyDir": {}}],
                   container={"env": [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                              "volumeMounts": [{"name": "cfg", "mountPath": "/etc/moeops", "readOnly": True},
                                               {"name": "data", "mountPath": "/data"},
                                               {"name": "tmp", "mountPath": "/tmp"}]})  # fmt: skip
    journey_cluster.kubectl.apply(manifest, "-n", ns)
    done = wait_for("the writer pod to finish", lambda: finished(journey_cluster, ns, "writer"), timeout=120)
    state = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert state["exitCode"] == 0 and state["reason"] == "Completed"
    assert done["status"]["podIP"].startswith("127.244.")
    written = (claim_dir(platform.node_state, ns, "data") / "out.txt").read_text()
    assert written == "hello writer 65532 writer /home/nonroot"
    logs = journey_cluster.kubectl("logs", "-n", ns, "writer").stdout
    assert "read-only root: 30" in logs and "done" in logs, logs


def test_exit_codes_images_and_graceful_deletion(journey_cluster: Cluster, journey_namespace: str) -> None:
    ns = journey_namespace
    journey_cluster.kubectl.apply(pod("fails", "import sys; sys.exit(3)"), "-n", ns)
    journey_cluster.kubectl.apply(
        {
            **pod("foreign", "pass"),
            "spec": {
                **pod("foreign", "pass")["spec"],
                "containers": [
                    {**pod("foreign", "pass")["spec"]["containers"][0], "image": "docker.io/library/nginx:1.27"}
                ],
            },
        },
        "-n",
        ns,
    )
    term = """
        import signal, sys, time, pathlib
        def bye(*_):
            print("got SIGTERM, saving", flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, bye)
        print("serving", flush=True)
        time.sleep(600)
        """
    journey_cluster.kubectl.apply(pod("sleeper", term, terminationGracePeriodSeconds=20), "-n", ns)
    failed = wait_for("the failing pod", lambda: finished(journey_cluster, ns, "fails"), timeout=120)
    assert failed["status"]["phase"] == "Failed"
    assert failed["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3

    def waiting_reason() -> str | None:
        statuses = phase(journey_cluster, ns, "foreign")["status"].get("containerStatuses") or [{}]
        return (statuses[0].get("state", {}).get("waiting") or {}).get("reason")

    assert wait_for("ErrImagePull", lambda: waiting_reason() in ("ErrImagePull", "ImagePullBackOff"), timeout=60)

    def running() -> bool:
        status = phase(journey_cluster, ns, "sleeper")["status"]
        return bool(status.get("containerStatuses") and "running" in status["containerStatuses"][0]["state"])

    wait_for("the sleeper to run", running, timeout=120)
    wait_for(
        "the sleeper's first line",
        lambda: "serving" in journey_cluster.kubectl("logs", "-n", ns, "sleeper", check=False).stdout,
        timeout=60,
    )
    journey_cluster.kubectl("delete", "pod", "-n", ns, "sleeper", "--wait=true", "--timeout=60s")


def test_headless_names_and_the_service_proxy(journey_cluster: Cluster, journey_namespace: str) -> None:
    ns = journey_namespace
    server = """
        import http.server, os, socket
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = socket.gethostname().encode()
                self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
                self.wfile.write(body)
        http.server.HTTPServer((os.environ["POD_IP"], 8080), H).serve_forever()
        """
    web = pod("web-0", server, hostname="web-0", subdomain="web", container={
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1}})  # fmt: skip
    journey_cluster.kubectl.apply(web, "-n", ns)
    for svc in ({"name": "web", "clusterIP": "None"}, {"name": "web-http"}):
        spec = {"selector": {"app": "web-0"}, "ports": [{"port": 80, "targetPort": "http"}]}
        if svc.get("clusterIP"):
            spec["clusterIP"] = svc["clusterIP"]
        journey_cluster.kubectl.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": svc["name"]},
                                       "spec": spec}, "-n", ns)  # fmt: skip
    client = f"""
        import urllib.request
        for url in ("http://web-0.web.{ns}.svc:8080/", "http://web-http.{ns}.svc/"):
            print(url, urllib.request.urlopen(url, timeout=10).read().decode(), flush=True)
        """
    wait_for("web-0 ready", lambda: any(c["type"] == "Ready" and c["status"] == "True"
                                        for c in phase(journey_cluster, ns, "web-0")["status"].get("conditions", [])),
             timeout=120)  # fmt: skip
    journey_cluster.kubectl.apply(pod("client", client), "-n", ns)
    done = wait_for("the client pod", lambda: finished(journey_cluster, ns, "client"), timeout=120)
    logs = journey_cluster.kubectl("logs", "-n", ns, "client", check=False).stdout
    assert done["status"]["phase"] == "Succeeded", logs
    cluster_ip = journey_cluster.core.read_namespaced_service("web-http", ns).spec.cluster_ip
    address = local_service_address(cluster_ip)
    with urllib.request.urlopen(f"http://{address}/", timeout=10) as answer:
        assert answer.read() == b"web-0"
