"""InferenceService autoscaling: the operator's status loop reads each service's load from NATS and sets the replicas.

Every MOEOPS_AUTOSCALE_INTERVAL_S (5 s by default) the status loop (`status_loop.py`; no kopf timer: a timer puts a
finalizer on every object) reads the latest load of each of the service's server pods from the `moeops-serving-load`
KV bucket (`moeops.bus.serving_load`; the servers write it, `moeops.serving.load_reporter`) and asks the pure
`planning.autoscale.decide` for the replicas (the algorithm is stated there).

Who sets the Deployment's replicas. One writer: the serving reconcile (`children.serving.desired_replicas`), which
derives them from `.status.desiredReplicas`. The timer writes its decision there and re-runs the reconcile on the
owner as it will be (the carbon gate's pattern): the Deployment is patched by the operator's field manager
(`moeops-operator`), and a reconcile triggered by anything else (a spec edit, the wake annotation, a deleted
Deployment) re-applies the autoscaler's number instead of resetting it to min. The status write is conditional on
the owner's resourceVersion; on a conflict it is recomputed from a fresh read.

State. The window of recent recommendations and the idle timer live in the loop's memory (by uid); the decided replicas
and the last wake value acted on live in the status. After an operator restart the window restarts full at the
replicas in force and the idle timer at the restart (`planning.autoscale.initial_state`): scale-down and scale to
zero are delayed by at most one window or idle period, never brought forward, and a service at zero stays there.

Without a bus (no MOEOPS_NATS_URL) the timer does nothing and the Deployment keeps max(min, 1) replicas. When the bus
cannot be read (server down, bucket missing) a tick does nothing either: replicas are never changed on missing data.
A stopped service (`moeops.dev/stop`) is left to the reconcile, which holds it at zero; its memo state is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from moeops.api.v1alpha1.inferenceservice import PLURAL, WAKE_ANNOTATION, InferenceServiceSpec
from moeops.bus.serving_load import ensure_serving_load_bucket, service_loads

from ..children.serving import desired_replicas
from ..config import OperatorConfig
from ..kube import Kube
from ..planning.autoscale import Decision, Policy, State, decide, initial_state
from ..status import StatusUpdate
from ..status.autoscale import autoscale_status
from .common import now, with_fresh_owner
from .serving import is_stopped, reconcile
from .status_sources import Context, Fields
from .typed import spec_of

logger = logging.getLogger(__name__)


def policy_of(spec: InferenceServiceSpec) -> Policy:
    r = spec.replicas
    return Policy(r.min, r.max, r.target_in_flight, r.stable_window_seconds, r.scale_to_zero_after_seconds)


def starting_state(spec: InferenceServiceSpec, status: Mapping[str, Any], at: float) -> State:
    """The first tick's state (also after a restart): the replicas in force, and the wake value acted on last."""
    recorded = status.get("desiredReplicas")
    in_force = desired_replicas(spec, stopped=False, autoscaled=None if recorded is None else int(recorded))
    return initial_state(in_force, at, (status.get("autoscaling") or {}).get("wake"))


def autoscale_update(kube: Kube, cfg: OperatorConfig, decision: Decision, at: datetime, owner: Mapping[str, Any]) -> (
        StatusUpdate | None):  # fmt: skip
    """The decision's status update for the owner as read, with the Deployment brought to the decided replicas."""
    status = owner.get("status") or {}
    if is_stopped(owner):
        return None  # stopped since the tick began: the reconcile holds it at zero
    update = autoscale_status(status, decision, at)
    if update is None and int(status.get("replicas") or 0) == decision.replicas:
        return None  # nothing new, and the Deployment has the replicas (as far as its status says)
    patch = update.patch if update is not None else {}
    merged = {**owner, "status": {**status, **patch}}
    children = reconcile(kube, cfg, merged)[0](merged)  # re-applies the Deployment with status.desiredReplicas
    if children is None:
        return update
    events = [*(update.events if update is not None else []), *children.events]
    return StatusUpdate({**children.patch, **patch}, events)


def apply_decision(kube: Kube, cfg: OperatorConfig, decision: Decision, at: datetime, body: Mapping[str, Any]) -> None:
    meta = body["metadata"]
    compute = lambda owner: autoscale_update(kube, cfg, decision, at, owner)  # noqa: E731
    with_fresh_owner(kube, PLURAL, meta["namespace"], meta["name"], compute, cached=body)


async def autoscale_fields(ctx: Context, body: Mapping[str, Any]) -> Fields:
    """One autoscaler tick for one service; its status is written here (with the Deployment), so no fields (None)."""
    meta = body["metadata"]
    uid = str(meta.get("uid") or "")
    if ctx.reader is None or is_stopped(body) or meta.get("deletionTimestamp"):
        # A stopped service is the reconcile's (held at zero); un-stopped, it starts over from the replicas the
        # reconcile gives it.
        ctx.autoscale_states.pop(uid, None)
        return None
    try:
        spec = spec_of(InferenceServiceSpec, body)
    except ValidationError:
        return None  # the reconcile reports a spec the model refuses
    status = body.get("status") or {}
    if not status.get("model"):
        return None  # the model is not resolved yet: there is no Deployment to scale
    namespace, name = meta["namespace"], meta["name"]
    loads = await ctx.reader.read(
        ensure_serving_load_bucket,
        lambda kv: service_loads(kv, namespace, name),
        f"load of InferenceService {namespace}/{name}",
    )
    if loads is None:
        return None  # no reading: keep the replicas as they are
    at = now()
    state = ctx.autoscale_states.get(uid) or starting_state(spec, status, at.timestamp())
    wake = (meta.get("annotations") or {}).get(WAKE_ANNOTATION)
    decision = decide(policy_of(spec), loads, at.timestamp(), None if wake is None else str(wake), state)
    ctx.autoscale_states[uid] = decision.state
    if decision.changed:
        logger.info("InferenceService %s/%s: %s replicas (%s: %s)", namespace, name, decision.replicas,
                    decision.reason.value, decision.message)  # fmt: skip
    # The API calls block: off the event loop, in a thread, as kopf runs sync handlers.
    await asyncio.to_thread(apply_decision, ctx.kube, ctx.cfg, decision, at, body)
    return None
