"""Two operator replicas with kopf peering: one acts, the other pauses, nothing is reconciled twice."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from harness import Cluster, OperatorProcess, wait_for
from manifests import training_job

REPO = Path(__file__).resolve().parents[2]


def test_two_replicas_peer_and_only_one_acts(
    cluster: Cluster, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    cluster.kubectl("apply", "-f", str(REPO / "deploy" / "peering.yaml"))
    operator.stop()  # the suite's standalone operator would act regardless of peering
    replicas = [OperatorProcess(cluster.kubeconfig, tmp_path / name, standalone=False) for name in ("a", "b")]
    try:
        for replica in replicas:
            (tmp_path / replica.log_dir.name).mkdir()
            replica.start()
        wait_for(
            "one replica to pause in favour of the other",
            lambda: sum("Pausing operations in favour of" in r.log() for r in replicas) == 1,
            timeout=60,
        )
        paused = next(r for r in replicas if "Pausing operations in favour of" in r.log())
        active = next(r for r in replicas if r is not paused)
        for i in range(3):
            cluster.kubectl.apply(training_job(f"peered-{i}", namespace))
        for i in range(3):
            wait_for(
                f"peered-{i} reconciled",
                partial(cluster.status_if, "moetrainingjobs", namespace, f"peered-{i}", lambda s: s.get("plan")),
            )

        # A replica may act on older objects before it learns of a higher-priority peer; the new jobs, created
        # after the pause, must be handled by the active replica only.
        def handled(replica: OperatorProcess) -> set[str]:
            return {
                r["object"]["name"]
                for r in replica.records()
                if r.get("object", {}).get("namespace") == namespace
                and "reconcile_training_job" in r.get("message", "")
            }

        assert handled(active) == {"peered-0", "peered-1", "peered-2"}
        assert handled(paused) == set()
    finally:
        for replica in replicas:
            replica.stop()
        operator.start()
