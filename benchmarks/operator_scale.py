"""Operator scale: apply N MoETrainingJobs at once to a local control plane and measure, per job, the time
from its apply to all of its children existing, plus the operator's peak RSS and the API server's writes per job.

Baseline, run in the same process against the same control plane: a hand-rolled watch loop that builds the
same children with the same pure builders and creates them from a thread pool as large as the operator's
(no kopf, no status, no events): the floor set by the API server and the builders on this machine.

The two alternate in rounds (baseline then operator, then operator then baseline, ...), each round in its own
namespace, so that a machine shared with other work and a store that grows weigh on both alike; the ratios are
of the figures pooled over the rounds. Writes per job: the API server's own count of mutating requests
(`apiserver_request_total`, POST/PUT/PATCH/DELETE) from the apply to the end of the settle time, less the apply.

    .venv/bin/python benchmarks/operator_scale.py --jobs 500 --rounds 2   # all at once, 2 rounds of each
    .venv/bin/python benchmarks/operator_scale.py --jobs 500 --rate 10    # a steady 10 applies/s
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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


SETTLE_S = 5.0
"""After the last worker Job: the status writes and events that follow the children (both sides wait as long)."""
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE")
REQUESTS = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<count>[0-9.e+]+)$", re.M)


def api_writes(kubeconfig: Path) -> float:
    """Mutating requests the API server has served so far (its own counter, every client)."""
    raw = subprocess.run([str(ROOT / ".cache/bin/kubectl"), "--kubeconfig", str(kubeconfig), "get", "--raw",
                          "/metrics"], check=True, capture_output=True, text=True).stdout  # fmt: skip
    return sum(float(m["count"]) for m in REQUESTS.finditer(raw)
               if any(f'verb="{verb}"' in m["labels"] for verb in WRITE_VERBS))  # fmt: skip


@dataclass(frozen=True)
class Round:
    """One side's measurement in one round."""

    latencies: list[float]
    writes_per_job: float
    load: tuple[float, float]
    """The 1-minute load average before the apply and after the settle time."""


def measured(
    api: kubernetes.client.ApiClient, kubeconfig: Path, namespace: str, n: int, rate: float | None, timeout: float
) -> Round:
    """Apply n jobs into `namespace` (a controller already watching it), wait for every worker Job and the settle
    time: the latencies, the API server's writes per job beyond the apply, the 1-min load average before/after."""
    watcher = JobWatcher(api, namespace)
    # One job first, waited for: the controller has started and listed (an operator's start-up under load is not
    # what is measured), and both sides meet the burst warm.
    kubernetes.client.CustomObjectsApi(api).create_namespaced_custom_object(
        "moeops.dev", "v1alpha1", namespace, "moetrainingjobs", manifest("warmup", namespace), _preload_content=False
    )
    wait_all(watcher, {"warmup"}, timeout)
    time.sleep(1)
    load_before = os.getloadavg()[0]
    writes_before = api_writes(kubeconfig)
    applied = apply_all(api, namespace, n, rate)
    wait_all(watcher, set(applied), timeout)
    time.sleep(SETTLE_S)
    writes = api_writes(kubeconfig) - writes_before - n
    watcher.stop()
    return Round(latencies(applied, watcher.seen), round(writes / n, 2), (load_before, os.getloadavg()[0]))


def run_baseline(
    api: kubernetes.client.ApiClient, kubeconfig: Path, namespace: str, n: int, rate: float | None, timeout: float
) -> Round:
    kubernetes.client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    stop = threading.Event()
    controller = threading.Thread(target=baseline_controller, args=(api, namespace, stop), daemon=True)
    controller.start()
    try:
        return measured(api, kubeconfig, namespace, n, rate, timeout)
    finally:
        stop.set()


def run_operator(
    api: kubernetes.client.ApiClient,
    kubeconfig: Path,
    namespace: str,
    n: int,
    rate: float | None,
    timeout: float,
    log: Path,
) -> tuple[Round, int, int, float]:
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
        time.sleep(4)  # the operator's start-up (imports, first listing); `measured` waits for a first job too
        idle_rss = peak[0]
        try:
            result = measured(api, kubeconfig, namespace, n, rate, timeout)
        finally:
            done.set()
            times = psutil.Process(proc.pid).cpu_times()
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # kopf's graceful stop can outlast 30 s on a loaded machine
                proc.kill()
                proc.wait()
    return result, idle_rss, peak[0], times.user + times.system


def report(run: Round) -> str:
    """One side's round in a line (printed as it ends: a run cut short still says what it measured)."""
    p50, p99 = pct(run.latencies, 0.5), pct(run.latencies, 0.99)
    load = f"load {run.load[0]:.1f}->{run.load[1]:.1f}"
    return f"p50 {p50:.2f} s, p99 {p99:.2f} s, {run.writes_per_job} writes/job, {load}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=500, help="jobs applied per round and side")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each side, alternated")
    parser.add_argument("--rate", type=float, default=None, help="applies per second (default: all at once)")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    base: list[Round] = []
    ours: list[Round] = []
    rss: list[tuple[int, int]] = []
    cpu: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, ControlPlane(Path(tmp) / "cp") as plane:
        subprocess.run([str(ROOT / ".cache/bin/kubectl"), "--kubeconfig", str(plane.kubeconfig), "apply", "-f",
                        str(ROOT / "crds")], check=True, capture_output=True)  # fmt: skip
        time.sleep(2)
        api = kubernetes.config.new_client_from_config(config_file=str(plane.kubeconfig))
        api.configuration.connection_pool_maxsize = 32
        for i in range(args.rounds):
            sides = ["baseline", "operator"] if i % 2 == 0 else ["operator", "baseline"]
            for side in sides:
                namespace = f"bench-{side}-{i}"
                if side == "baseline":
                    run = run_baseline(api, plane.kubeconfig, namespace, args.jobs, args.rate, args.timeout)
                    base.append(run)
                    print(f"round {i} {side}: {report(run)}", file=sys.stderr, flush=True)
                    continue
                log = Path(tmp) / f"op-{i}.log"
                run, idle, peak, cpu_s = run_operator(
                    api, plane.kubeconfig, namespace, args.jobs, args.rate, args.timeout, log
                )
                ours.append(run)
                rss.append((idle, peak))
                cpu.append(cpu_s)
                print(f"round {i} {side}: {report(run)}, peak RSS {peak / 2**20:.0f} MB, CPU {cpu_s:.1f} s",
                      file=sys.stderr, flush=True)  # fmt: skip
    op_all = sorted(t for r in ours for t in r.latencies)
    base_all = sorted(t for r in base for t in r.latencies)
    result = {
        "jobs_per_round": args.jobs,
        "rounds": args.rounds,
        "order": "alternated: baseline first in even rounds, operator first in odd ones",
        "rate_per_s": args.rate or "burst",
        "cpus": os.cpu_count(),
        "operator_p50_s": round(pct(op_all, 0.5), 2),
        "operator_p99_s": round(pct(op_all, 0.99), 2),
        "operator_max_s": round(op_all[-1], 2),
        "baseline_p50_s": round(pct(base_all, 0.5), 2),
        "baseline_p99_s": round(pct(base_all, 0.99), 2),
        "ratio_p50_operator_over_baseline": round(statistics.median(op_all) / statistics.median(base_all), 2),
        "ratio_p99_operator_over_baseline": round(pct(op_all, 0.99) / pct(base_all, 0.99), 2),
        "per_round_p99_operator_baseline": [
            [round(pct(o.latencies, 0.99), 2), round(pct(b.latencies, 0.99), 2)]
            for o, b in zip(ours, base, strict=True)
        ],
        "api_writes_per_job_operator": [r.writes_per_job for r in ours],
        "api_writes_per_job_baseline": [r.writes_per_job for r in base],
        "load_1min_before_after_operator": [[round(x, 1) for x in r.load] for r in ours],
        "load_1min_before_after_baseline": [[round(x, 1) for x in r.load] for r in base],
        "operator_idle_rss_mb": round(max(i for i, _ in rss) / 2**20, 1),
        "operator_peak_rss_mb": round(max(p for _, p in rss) / 2**20, 1),
        "operator_cpu_s_per_round": [round(c, 1) for c in cpu],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
