"""`.status.carbon` of MoETrainingJobs and InferenceServices: the carbon aggregator's totals, copied in periodically.

Who writes it. The operator, and only the operator: this timer reads the workload's totals from the `moeops-carbon`
KV bucket (key `workload.<namespace>.<kind>.<name>`, written by `moeops.carbon.accounting.aggregator`) and patches
`.status.carbon` through the status subresource, as kopf patches every status: a JSON merge patch of
`/status` without a `fieldManager` parameter, so the API server records the field manager from kopf's User-Agent
(`kopf/<version>`): manager `kopf`, operation `Update`, subresource `status` in `.metadata.managedFields` (the
e2e test checks it).

Why not the aggregator. Least privilege: the aggregator needs NATS only; letting it patch status would give a
cluster-wide service that reads node telemetry write access to every workload's status, and a Kubernetes client
and RBAC of its own. One writer of status: the operator already owns `.status` of both resources (conditions,
plan, rebalance), so one process decides what status says and there is no second writer to race with its patches.

A timer per object rather than a watch on the bucket, as for `.status.rebalance`: the totals change by small
amounts, one KV read per object every CARBON_INTERVAL_S is cheap, and a patch goes out only when the rounded
figures changed. A job that finished more than SETTLE_S ago is not read again (the last deltas of its pods reach
the ledger within seconds of the pods ending), nor is one with `spec.carbon.enabled: false`: its `.status.carbon`
is left as it is (nothing else is cleared either; the ledger keeps counting its pods' energy). Failures (no NATS,
no bucket, a malformed value) are logged by the reader or here, and never fail the handler.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import kopf
from pydantic import ValidationError

from moeops.api.v1alpha1 import inferenceservice, trainingjob
from moeops.carbon.accounting.store import ensure_carbon_bucket, workload_carbon

from ..bus_reader import BusReader
from ..status import is_finished
from ..status.carbon import carbon_reported, carbon_status
from .common import now
from .observe import traced
from .serving import SERVING
from .training import TRAINING

logger = logging.getLogger(__name__)

CARBON_INTERVAL_S = 30.0
FIRST_READ_S = 5.0
SETTLE_S = 600.0
"""How long after a job finished its totals are still read."""
KINDS = {trainingjob.PLURAL: trainingjob.KIND, inferenceservice.PLURAL: inferenceservice.KIND}


def settled(status: kopf.Status, at: datetime) -> bool:
    """A finished job whose last energy has long been counted."""
    completed = status.get("completionTime")
    if not is_finished(dict(status)) or not completed:
        return False
    finished = datetime.fromisoformat(str(completed).replace("Z", "+00:00"))
    return at - finished > timedelta(seconds=SETTLE_S)


@kopf.timer(*TRAINING, interval=CARBON_INTERVAL_S, initial_delay=FIRST_READ_S)
@kopf.timer(*SERVING, interval=CARBON_INTERVAL_S, initial_delay=FIRST_READ_S)
@traced()
async def copy_carbon_totals(
    resource: kopf.Resource,
    spec: kopf.Spec,
    status: kopf.Status,
    namespace: str | None,
    name: str,
    memo: kopf.Memo,
    patch: kopf.Patch,
    **_: Any,
) -> None:
    reader: BusReader | None = memo.get("bus")
    kind = KINDS.get(resource.plural)
    if reader is None or namespace is None or kind is None or not carbon_reported(spec) or settled(status, now()):
        return
    totals = await reader.read(
        ensure_carbon_bucket,
        lambda kv: workload_carbon(kv, namespace, kind, name),
        f"carbon totals of {kind} {namespace}/{name}",
    )
    if totals is None:
        return
    try:
        fresh = carbon_status(totals)
    except (ValidationError, ValueError) as exc:  # a figure the schema refuses: log, keep the old status
        logger.warning("carbon totals of %s %s/%s do not fit the status: %s", kind, namespace, name, exc)
        return
    if fresh != dict(status.get("carbon") or {}):
        patch.status["carbon"] = fresh
