"""The README's "main job" for now: a local control plane, the operator, the examples, shown with kubectl.

There is no kubelet in the local control plane: a fake kubelet binds the worker pods to a fake node and
reports them running, so that the status you see is what the operator derives from real Job and
Deployment controllers. No container actually runs (the trainer comes with a later issue).
Pass --keep to leave the cluster and operator running until Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import kubernetes

from moeops.devcluster import ControlPlane, FakeKubelet, find_binaries

ROOT = Path(__file__).resolve().parents[1]
KUBECTL = str(ROOT / ".cache" / "bin" / "kubectl")


def kubectl(kubeconfig: Path, *args: str, show: bool = True) -> str:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    if show:
        print(f"\n$ kubectl {' '.join(args)}", flush=True)
    out = subprocess.run([KUBECTL, *args], env=env, check=True, capture_output=True, text=True).stdout
    if show:
        print(out, end="", flush=True)
    return out


def wait(what: str, probe, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.5)
    raise SystemExit(f"demo: timed out waiting for {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the cluster running until Ctrl-C")
    args = parser.parse_args()
    if find_binaries() is None:
        raise SystemExit("demo: control-plane binaries missing; run hack/bootstrap.sh (needs Go)")
    work = ROOT / ".tmp" / "demo"
    shutil.rmtree(work, ignore_errors=True)
    with ControlPlane(work) as cluster:
        kc = cluster.kubeconfig
        print(f"demo: control plane up at {cluster.server} (KUBECONFIG={kc})", flush=True)
        kubectl(kc, "apply", "-f", str(ROOT / "crds"))
        kubectl(kc, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s", show=False)
        # API discovery lags the Established condition by a moment; an operator started before discovery lists
        # the new group would not see it until the next CRD change.
        wait(
            "API discovery of moeops.dev",
            lambda: "moetrainingjobs" in kubectl(kc, "api-resources", "--api-group=moeops.dev", show=False),
        )
        log = (work / "operator.log").open("wb")
        env = {**os.environ, "KUBECONFIG": str(kc)}
        operator = subprocess.Popen(
            [sys.executable, "-m", "moeops.cli", "operator", "run", "--standalone"], env=env, stdout=log, stderr=log
        )
        kubelet = FakeKubelet(kubernetes.config.new_client_from_config(config_file=str(kc)))
        try:
            kubelet.ensure_node()
            kubelet.start_reaper()
            kubectl(kc, "apply", "-f", str(ROOT / "examples"))

            def pods_started(selector: str, count: int) -> bool:
                pending = [p for p in kubelet.pods("default", selector) if not p["spec"].get("nodeName")]
                for pod in pending:
                    kubelet.run(pod)
                return len(kubelet.pods("default", selector)) >= count

            wait("moe-debug's workers", lambda: pods_started("moeops.dev/training-job=moe-debug", 2))
            wait("moe-small's server", lambda: pods_started("moeops.dev/inference-service=moe-small", 1))
            wait(
                "moe-debug to be Running",
                lambda: (
                    "Running" in kubectl(kc, "get", "moejob", "moe-debug", "-o=jsonpath={.status.state}", show=False)
                ),
            )
            time.sleep(1)
            kubectl(kc, "get", "moetrainingjobs,inferenceservices", "-o", "wide")
            kubectl(kc, "get", "jobs,deployments,services,configmaps,pods", "-l", "app.kubernetes.io/part-of=moeops")
            kubectl(kc, "get", "events", "--field-selector=involvedObject.kind=MoETrainingJob")
            if args.keep:
                print(f"\ndemo: running; export KUBECONFIG={kc}; Ctrl-C to stop", flush=True)
                while True:
                    time.sleep(3600)
        except KeyboardInterrupt:
            print("\ndemo: stopping", flush=True)
        finally:
            kubelet.stop()
            operator.terminate()
            operator.wait(timeout=30)
            log.close()


if __name__ == "__main__":
    main()
