"""The README's main job: the whole of moeops on this machine, one user's journey from `kubectl apply` to an answer.

Starts the local platform (`moeops.devcluster.platform`: control plane, nats-server, operator, rebalancer, carbon
aggregator and node agent, and the process node whose pods run as real processes), applies the example
MoETrainingJob and watches it train, serves its checkpoint with the example InferenceService, asks it a question
through its Service, measures exact match per domain through the same API, and sums up time, accuracy and energy.
Pass --keep to leave everything running until Ctrl-C (then `export KUBECONFIG=.tmp/demo/controlplane/kubeconfig`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from moeops.data.synthetic import DOMAINS
from moeops.devcluster import find_binaries
from moeops.devcluster.node import local_service_address
from moeops.devcluster.platform import LocalPlatform
from moeops.devcluster.served_eval import complete, served_exact_match

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
JOB, SERVICE = "moe-debug", "moe-debug"
COLUMNS = (
    "NAME:.metadata.name,STATE:.status.state,STEP:.status.progress.step,LOSS:.status.progress.loss,"
    "TOKENS/S:.status.progress.tokensPerSecond,PLAN-EPOCH:.status.rebalance.epoch,"
    "UTIL:.status.rebalance.utilization,ENERGY-J:.status.carbon.energyJoules,RESTARTS:.status.restarts"
)


def say(text: str) -> None:
    print(text, flush=True)


def status(platform: LocalPlatform, plural: str, name: str) -> dict[str, Any]:
    out = platform.kubectl("get", plural, name, "-o", "json", check=False)
    return (json.loads(out).get("status") or {}) if out else {}


def watch_training(platform: LocalPlatform, timeout_s: float = 1200) -> dict[str, Any]:
    say(f"\n$ kubectl get mtj {JOB} -w   (custom columns; a line each time something changes)")
    header, last = True, ""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        platform.check()
        table = platform.kubectl("get", "mtj", JOB, "-o", f"custom-columns={COLUMNS}", check=False).splitlines()
        if len(table) == 2 and table[1] != last:
            if header:
                say(table[0])
                header = False
            say(table[1])
            last = table[1]
        found = status(platform, "mtj", JOB)
        if found.get("state") in ("Succeeded", "Failed"):
            return found
        time.sleep(3)
    raise SystemExit(f"demo: {JOB} did not finish in {timeout_s:.0f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the platform running until Ctrl-C")
    parser.add_argument("--eval-per-domain", type=int, default=20, help="held-out questions per domain")
    args = parser.parse_args()
    if find_binaries() is None:
        raise SystemExit("demo: control-plane binaries missing; run hack/bootstrap.sh (needs Go)")
    work = ROOT / ".tmp" / "demo"
    shutil.rmtree(work, ignore_errors=True)
    started = time.monotonic()
    say("demo: starting the platform (control plane, nats-server, operator, rebalancer, carbon, process node)")
    with LocalPlatform(work) as platform:
        say(f"demo: up in {time.monotonic() - started:.0f}s; export KUBECONFIG={platform.kubeconfig}")
        journey = time.monotonic()
        for example in ("moe-checkpoints-pvc.yaml", "moe-debug-trainingjob.yaml"):
            say(f"\n$ kubectl apply -f examples/{example}")
            say(platform.kubectl("apply", "-f", str(EXAMPLES / example)).strip())
        final = watch_training(platform)
        say(f"\n$ kubectl get mtj,pods -o wide\n{platform.kubectl('get', 'mtj,pods', '-o', 'wide')}")
        if final["state"] != "Succeeded":
            say(platform.kubectl("describe", "mtj", JOB, check=False))
            raise SystemExit(f"demo: {JOB} ended {final['state']}")
        trained = time.monotonic() - journey

        say("$ kubectl apply -f examples/moe-debug-inferenceservice.yaml")
        say(platform.kubectl("apply", "-f", str(EXAMPLES / "moe-debug-inferenceservice.yaml")).strip())
        deadline = time.monotonic() + 300
        while status(platform, "inferenceservice", SERVICE).get("readyReplicas", 0) < 1:
            platform.check()
            if time.monotonic() > deadline:
                raise SystemExit("demo: the InferenceService did not become Ready in 300s")
            time.sleep(2)
        say(platform.kubectl("get", "inferenceservice", SERVICE))
        cluster_ip = platform.kubectl("get", "service", SERVICE, "-o", "jsonpath={.spec.clusterIP}")
        url = f"http://{local_service_address(cluster_ip)}"
        say(f"The Service's ClusterIP {cluster_ip} is served by the process node's proxy at {url}")
        question = "rev:kubernetes|"
        say(f'$ curl {url}/v1/completions -d \'{{"model": "{SERVICE}", "prompt": "{question}", "max_tokens": 16}}\'')
        say(f"answer: {complete(url, SERVICE, question, 16)!r}")

        config = platform.kubectl("get", "configmap", f"{JOB}-config", "-o", "jsonpath={.data.config\\.json}")
        seed = int(json.loads(config)["training"].get("seed", 0))
        accuracy = served_exact_match(url, SERVICE, DOMAINS, seed, args.eval_per_domain)
        carbon = status(platform, "mtj", JOB).get("carbon") or {}
        say("\n== summary")
        say(f"training (apply → Succeeded): {trained:.0f}s; whole journey: {time.monotonic() - journey:.0f}s")
        say(f"exact match through the InferenceService ({args.eval_per_domain} held-out questions per domain):")
        say("  " + "  ".join(f"{d} {a:.2f}" for d, a in accuracy.items()))
        say(f"energy: {carbon.get('energyJoules', 0):.0f} J (CPU estimated: {carbon.get('cpuEstimated')}), "
            f"{carbon.get('gCO2e', 0):.3f} gCO2e")  # fmt: skip
        if args.keep:
            say(f"\ndemo: running; export KUBECONFIG={platform.kubeconfig}; Ctrl-C to stop")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                say("\ndemo: stopping")
    sys.exit(0)


if __name__ == "__main__":
    main()
