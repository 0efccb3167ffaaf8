"""The race behind the flaky operator-down recovery test, made deterministic on a real control plane.

After an operator restart kopf's resume handler and the worker Job's event handler run side by side. The Job's
handler may record a restart (`.status.restarts` 1) and delete the failed Job before the resume handler runs with the
job as kopf listed it at start-up (`restarts` 0). Children built from that body belonged to the previous attempt: a
worker Job labelled attempt 0 and the workers' Service selecting attempt 0's (gone) pods. The handler is called here
in-process with such a stale body; no operator process runs, so nothing else touches the children.
"""

from __future__ import annotations

import json
from typing import Any, cast

import kopf
from harness import Cluster, wait_for
from manifests import training_job

from moeops.operator.config import OperatorConfig
from moeops.operator.handlers.training import reconcile_training_job
from moeops.operator.kube import Kube
from moeops.operator.naming import RESTART_ATTEMPT_LABEL

PLURAL = "moetrainingjobs"
NAME = "stale"


def handle(cluster: Cluster, body: dict[str, Any]) -> None:
    """kopf's resume/update handler, called the way kopf calls it (keyword arguments, the body it holds)."""
    memo = kopf.Memo(kube=Kube(cluster.api_client), config=OperatorConfig())
    handler: Any = reconcile_training_job  # kopf passes ~20 keyword arguments; the handler reads these three
    raw = cast(kopf.RawBody, body)
    handler(body=kopf.Body(raw), spec=kopf.Spec(kopf.Body(raw)), memo=memo)


def test_a_resume_with_a_body_older_than_the_recorded_restart_builds_the_current_attempt(
    cluster: Cluster, namespace: str
) -> None:
    cluster.kubectl.apply(training_job(NAME, namespace))
    handle(cluster, wait_for("the job", lambda: cluster.get(PLURAL, namespace, NAME)))
    first = wait_for("the worker Job of attempt 0", lambda: cluster.read("Job", namespace, NAME))
    assert first["metadata"]["labels"][RESTART_ATTEMPT_LABEL] == "0"
    stale = cluster.get(PLURAL, namespace, NAME)
    assert stale and "observedGeneration" in stale["status"]

    # What the worker Job's handler does on a failure: the restart first in the status, then the Job deleted.
    restart = json.dumps({"status": {"restarts": 1, "restartsCountTowardsMax": 1}})
    cluster.kubectl("patch", "mtj", NAME, "-n", namespace, "--subresource=status", "--type=merge", "-p", restart)
    cluster.kubectl("delete", "job", NAME, "-n", namespace, "--cascade=foreground", "--wait=true")

    handle(cluster, stale)  # the resume handler, with the body listed before the restart was recorded

    job = cluster.read("Job", namespace, NAME)
    assert job is None or job["metadata"]["labels"][RESTART_ATTEMPT_LABEL] == "1"
    service = cluster.read("Service", namespace, f"{NAME}-workers")
    assert service and service["spec"]["selector"][RESTART_ATTEMPT_LABEL] == "1"
    assert cluster.status(PLURAL, namespace, NAME)["restarts"] == 1
