"""Operator scale: apply N MoETrainingJobs at once to a local control plane and measure, per job, the time
from its apply to all of its children existing, plus the operator's peak RSS.

Baseline, run in the same process against the same control plane: a hand-rolled watch loop that builds the
same children with the same pure builders and creates them from a thread pool as large as the operator's
(no kopf, no status, no events): the floor set by the API server and the builders on this machine.

    .venv/bin/python benchmarks/operator_scale.py --jobs 500             # all at once
    .venv/bin/python benchmarks/operator_scale.py --jobs 500 --rate 10   # a steady 10 applies/s
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kubernetes
import psutil

from moeops.api.v1alpha1.trainingjob import MoETrainingJobSpec
from moeops.devcluster import ControlPlane
from moeops.operator.children.training import training_children
from moeops.operator.config import OperatorConfig
from moeops.operator.kube import Kube
from moeops.operator.naming import Owner
from moeops.operator.planning import plan_training_job

ROOT = Path(__file__).resolve().parents[1]
THREADS = OperatorConfig().max_workers


def manifest(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "moeops.dev/v1alpha1",
        "kind": "MoETrainingJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"preset": "moe-small"},
            "data": {"source": "synthetic://bench"},
            "training": {"steps": 1000, "globalBatchSize": 64},
            "workers": {"replicas": 2, "gpusPerWorker": 8},
            # Suspended: the Job controller creates no pods, so we measure the operator, not pod churn.
            "runPolicy": {"suspend": True},
        },
    }


class JobWatcher:
    """Records when the worker Job (the last child created) of each MoETrainingJob appears."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str) -> None:
        self.seen: dict[str, float] = {}
        self._batch = kubernetes.client.BatchV1Api(api)
        self._namespace = namespace
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        watch = kubernetes.watch.Watch()
        while not self._stop.is_set():
            for event in watch.stream(self._batch.list_namespaced_job, self._namespace, timeout_seconds=5):
                name = event["object"].metadata.name
                self.seen.setdefault(name, time.monotonic())
                if self._stop.is_set():
                    break

    def stop(self) -> None:
        self._stop.set()


def apply_all(api: kubernetes.client.ApiClient, namespace: str, n: int, rate: float | None) -> dict[str, float]:
    """Create n jobs: all at once (rate None), or `rate` per second."""
    custom = kubernetes.client.CustomObjectsApi(api)
    applied: dict[str, float] = {}
    start = time.monotonic()

    def create(i: int) -> None:
        name = f"bench-{i:04d}"
        if rate:
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
        applied[name] = time.monotonic()
        custom.create_namespaced_custom_object(
            "moeops.dev", "v1alpha1", namespace, "moetrainingjobs", manifest(name, namespace), _preload_content=False
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(n)))
    return applied


def wait_all(watcher: JobWatcher, names: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not names <= watcher.seen.keys():
        time.sleep(0.2)
    missing = names - watcher.seen.keys()
    if missing:
        raise SystemExit(f"{len(missing)} jobs got no children within {timeout}s")


def latencies(applied: dict[str, float], seen: dict[str, float]) -> list[float]:
    return sorted(seen[name] - t for name, t in applied.items())


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def baseline_controller(api: kubernetes.client.ApiClient, namespace: str, stop: threading.Event) -> None:
    """The same pure builders in a plain watch loop + thread pool: no framework, no status writes."""
    custom = kubernetes.client.CustomObjectsApi(api)
    kube, cfg = Kube(api), OperatorConfig()
    pool = ThreadPoolExecutor(THREADS)

    def reconcile(body: dict[str, Any]) -> None:
        meta = body["metadata"]
        owner = Owner(body["apiVersion"], body["kind"], meta["name"], meta["namespace"], meta["uid"])
        spec = MoETrainingJobSpec.model_validate(body["spec"])
        arch, plan = plan_training_job(spec)
        for child in training_children(owner, spec, arch, plan, cfg):
            kube.ensure(child, owner.uid)

    watch = kubernetes.watch.Watch()
    list_fn = custom.list_namespaced_custom_object
    handled: set[str] = set()  # each reconnect replays every object as ADDED: reconcile each once
    while not stop.is_set():
        for event in watch.stream(list_fn, "moeops.dev", "v1alpha1", namespace, "moetrainingjobs", timeout_seconds=5):
            uid = event["object"]["metadata"]["uid"]
            if event["type"] == "ADDED" and uid not in handled:
                handled.add(uid)
                pool.submit(reconcile, event["object"])
    pool.shutdown(wait=True)


def run_baseline(api: kubernetes.client.ApiClient, n: int, rate: float | None, timeout: float) -> list[float]:
    namespace = "bench-baseline"
    kubernetes.client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    stop = threading.Event()
    controller = threading.Thread(target=baseline_controller, args=(api, namespace, stop), daemon=True)
    controller.start()
    watcher = JobWatcher(api, namespace)
    time.sleep(1)
    applied = apply_all(api, namespace, n, rate)
    wait_all(watcher, set(applied), timeout)
    stop.set()
    watcher.stop()
    return latencies(applied, watcher.seen)


def run_operator(
    api: kubernetes.client.ApiClient, kubeconfig: Path, n: int, rate: float | None, timeout: float, log: Path
) -> tuple[list[float], int, int, float]:
    namespace = "bench-operator"
    kubernetes.client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    cmd = [sys.executable, "-m", "moeops.cli", "operator", "run", "--standalone", "-n", namespace]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=out)
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            process = psutil.Process(proc.pid)
            while not done.wait(0.1):
                try:
                    peak[0] = max(peak[0], process.memory_info().rss)
                except psutil.NoSuchProcess:
                    return

        threading.Thread(target=sample, daemon=True).start()
        watcher = JobWatcher(api, namespace)
        time.sleep(4)  # the operator's start-up (imports, first listing)
        idle_rss = peak[0]
        applied = apply_all(api, namespace, n, rate)
        wait_all(watcher, set(applied), timeout)
        time.sleep(5)  # the status writes and events that follow the children
        done.set()
        watcher.stop()
        times = psutil.Process(proc.pid).cpu_times()
        proc.terminate()
        proc.wait(timeout=30)
    return latencies(applied, watcher.seen), idle_rss, peak[0], times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--rate", type=float, default=None, help="applies per second (default: all at once)")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ControlPlane(Path(tmp) / "cp") as plane:
        subprocess.run([str(ROOT / ".cache/bin/kubectl"), "--kubeconfig", str(plane.kubeconfig), "apply", "-f",
                        str(ROOT / "crds")], check=True, capture_output=True)  # fmt: skip
        time.sleep(2)
        api = kubernetes.config.new_client_from_config(config_file=str(plane.kubeconfig))
        api.configuration.connection_pool_maxsize = 32
        base = run_baseline(api, args.jobs, args.rate, args.timeout)
        log = Path(tmp) / "op.log"
        ours, idle_rss, peak_rss, cpu_s = run_operator(api, plane.kubeconfig, args.jobs, args.rate, args.timeout, log)
    result = {
        "jobs": args.jobs,
        "rate_per_s": args.rate or "burst",
        "cpus": os.cpu_count(),
        "operator_p50_s": round(pct(ours, 0.5), 2),
        "operator_p99_s": round(pct(ours, 0.99), 2),
        "operator_max_s": round(ours[-1], 2),
        "baseline_p50_s": round(pct(base, 0.5), 2),
        "baseline_p99_s": round(pct(base, 0.99), 2),
        "ratio_p50_operator_over_baseline": round(statistics.median(ours) / statistics.median(base), 2),
        "ratio_p99_operator_over_baseline": round(pct(ours, 0.99) / pct(base, 0.99), 2),
        "operator_idle_rss_mb": round(idle_rss / 2**20, 1),
        "operator_peak_rss_mb": round(peak_rss / 2**20, 1),
        "operator_cpu_s": round(cpu_s, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
