"""InferenceService handlers: resolve the model, reconcile Deployment + Service, follow readiness.

A service whose `model.trainingJobRef` is not servable yet (no such job, no checkpoint yet) is not retried on a
timer: the training job's own watch events reconcile the services waiting for it (`training_job_changed`, through
the index of services by the job they reference), so it is served as soon as the job's first checkpoint shows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from moeops.api import GROUP
from moeops.api.v1alpha1 import trainingjob
from moeops.api.v1alpha1.common import VERSION
from moeops.api.v1alpha1.inferenceservice import PLURAL, STOP_ANNOTATION, InferenceServiceSpec

from ..children.disruption import API_VERSION as DISRUPTION_API_VERSION
from ..children.disruption import KIND as DISRUPTION_KIND
from ..children.disruption import disruption_budget
from ..children.serving import model_uri, resolve_model, service_url, serving_children
from ..config import OperatorConfig
from ..drift import controlled_by
from ..errors import InvalidSpec, ModelNotReady
from ..kube import ChildRefused, Kube
from ..naming import INFERENCE_SERVICE_LABEL, MANAGED_BY, OPERATOR_NAME
from ..status import StatusUpdate, serving_status
from ..status.rejection import accepted, rejection_status
from .common import (
    StatusFn,
    api_errors_to_kopf,
    config_of,
    kube_of,
    now,
    owner_of,
    retry_transient,
    validation_message,
    with_fresh_owner,
)
from .observe import traced
from .typed import spec_of, typed_spec

SERVING = (GROUP, VERSION, PLURAL)
DEPLOYMENT_LABELS: Mapping[str, Any] = {
    MANAGED_BY: OPERATOR_NAME,
    INFERENCE_SERVICE_LABEL: kopf.PRESENT,
}


def stop_value(body: Mapping[str, Any]) -> str | None:
    value = (body["metadata"].get("annotations") or {}).get(STOP_ANNOTATION)
    return None if value is None else str(value)


def is_stopped(body: Mapping[str, Any]) -> bool:
    return (stop_value(body) or "").lower() == "true"


def report(
    body: Mapping[str, Any],
    deployment: Mapping[str, Any] | None,
    *,
    model: str | None,
    not_ready: tuple[str, str] | None,
) -> StatusFn:
    """How to compute the status from the owner as (re-)read, given the Deployment (None: none was applied)."""
    generation = int(body["metadata"].get("generation") or 0)
    stopped = is_stopped(body)
    url = service_url(owner_of(body)) if deployment else None

    def status_of(fresh: Mapping[str, Any]) -> StatusUpdate:
        update = serving_status(
            deployment, fresh.get("status") or {}, stopped=stopped, url=url, model=model, not_ready=not_ready,
            generation=generation, now=now(), stop_value=stop_value(fresh),
        )  # fmt: skip
        if stopped:  # forget the autoscaler's number: un-stopping starts again from max(min, 1)
            update = StatusUpdate({**update.patch, "desiredReplicas": None}, update.events)
        if deployment:  # every child went through
            update.patch["conditions"] = accepted(update.patch["conditions"], generation=generation, now=now())
        return update

    return status_of


def reconcile(kube: Kube, cfg: OperatorConfig, body: Mapping[str, Any]) -> tuple[StatusFn, bool]:
    """`reconcile_spec` for an owner read afresh (its spec not validated yet)."""
    try:
        spec = spec_of(InferenceServiceSpec, body)
    except ValidationError as exc:
        return report(body, None, model=None, not_ready=("InvalidSpec", validation_message(exc))), False
    return reconcile_spec(kube, cfg, body, spec)


def reconcile_spec(
    kube: Kube, cfg: OperatorConfig, body: Mapping[str, Any], spec: InferenceServiceSpec
) -> tuple[StatusFn, bool]:
    """Bring the children in line; return how to compute the status from the owner as (re-)read, and
    whether to retry later (the model is not ready yet)."""
    owner = owner_of(body)
    try:
        ref = spec.model.training_job_ref
        job = kube.get_custom(trainingjob.PLURAL, owner.namespace, ref.name) if ref else None
        location = resolve_model(spec, job)
    except InvalidSpec as exc:
        return report(body, None, model=None, not_ready=(exc.reason, exc.message)), False
    except ModelNotReady as exc:
        return report(body, None, model=None, not_ready=("ModelNotReady", str(exc))), True

    deployment: Mapping[str, Any] = {}
    likely_new = "observedGeneration" not in (body.get("status") or {})
    autoscaled = (body.get("status") or {}).get("desiredReplicas")  # the autoscaler's number (handlers/autoscale)
    for child in serving_children(owner, spec, location, is_stopped(body), cfg, autoscaled):
        _, deployment = kube.ensure(child, owner.uid, likely_new=likely_new)  # the Deployment comes last
    budget = disruption_budget(owner, spec)
    if budget is not None:
        kube.ensure(budget, owner.uid, likely_new=likely_new)
    elif not likely_new:  # replicas.max edited below 2: the budget made for the larger service goes
        kube.delete_owned(DISRUPTION_API_VERSION, DISRUPTION_KIND, owner.namespace, owner.name, owner.uid)
    return report(body, deployment, model=model_uri(location), not_ready=None), False


def report_invalid_spec(body: kopf.Body, memo: kopf.Memo, message: str, **_: Any) -> None:
    """A spec the model refuses: `InvalidSpec` in the status (and its event); no children are touched."""
    meta = body["metadata"]
    status_of = report(body, None, model=None, not_ready=("InvalidSpec", message))
    with_fresh_owner(kube_of(memo), PLURAL, meta["namespace"], meta["name"], status_of, cached=body)


@kopf.on.resume(*SERVING)
@kopf.on.create(*SERVING)
@kopf.on.update(*SERVING)
@traced()
@api_errors_to_kopf
@typed_spec(InferenceServiceSpec, on_invalid=report_invalid_spec)
def reconcile_inference_service(body: kopf.Body, spec: InferenceServiceSpec, memo: kopf.Memo, **_: Any) -> None:
    kube = kube_of(memo)
    meta = body["metadata"]
    try:
        status_of, _model_pending = reconcile_spec(kube, config_of(memo), body, spec)
    except ChildRefused as exc:  # refused again until the spec changes: no retry, the next edit reconciles
        generation, message = int(meta.get("generation") or 0), str(exc)
        refused = lambda owner: rejection_status(  # noqa: E731
            owner.get("status") or {}, "ChildRejected", message, generation=generation, now=now()
        )
        with_fresh_owner(kube, PLURAL, meta["namespace"], meta["name"], refused)
        return
    with_fresh_owner(kube, PLURAL, meta["namespace"], meta["name"], status_of, cached=body)
    # The model not ready yet (`_model_pending`): no timer; `training_job_changed` reconciles it when its job changes.


@kopf.index(*SERVING)
def services_by_training_job(namespace: str | None, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """The InferenceServices that serve a training job's checkpoint, by (namespace, job name)."""
    ref = ((body.get("spec") or {}).get("model") or {}).get("trainingJobRef") or {}
    return {(namespace, ref["name"]): body["metadata"]["name"]} if ref.get("name") else {}


# kopf passes each index by its name; its handler protocols do not declare them, hence the ignore.
@kopf.on.event(GROUP, VERSION, trainingjob.PLURAL)  # type: ignore[arg-type]
@traced()
def training_job_changed(
    body: kopf.Body,
    memo: kopf.Memo,
    services_by_training_job: kopf.Index[tuple[str | None, str | None], str],
    **_: Any,
) -> None:
    """Reconcile the services still waiting for this job's model (no model in their status yet)."""
    kube, cfg = kube_of(memo), config_of(memo)
    namespace = body.metadata.namespace or ""
    for name in set(services_by_training_job.get((namespace, body.metadata.name), [])):

        def compute(owner: Mapping[str, Any]) -> StatusUpdate | None:
            if (owner.get("status") or {}).get("model"):
                return None  # served already: its own handlers follow it
            return reconcile(kube, cfg, owner)[0](owner)

        retry_transient(lambda: with_fresh_owner(kube, PLURAL, namespace, name, compute))  # noqa: B023


@kopf.on.event("apps", "v1", "deployments", labels=DEPLOYMENT_LABELS)
@traced("InferenceService", owner_label=INFERENCE_SERVICE_LABEL)
def server_deployment_changed(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Follow the Deployment's replicas into the owner's status; recreate it if it was deleted."""
    kube, cfg = kube_of(memo), config_of(memo)

    def compute(owner: Mapping[str, Any]) -> StatusUpdate | None:
        status = owner.get("status") or {}
        if not controlled_by(body, owner["metadata"]["uid"]):
            return None
        if event["type"] == "DELETED":
            return reconcile(kube, cfg, owner)[0](owner)
        return serving_status(
            body,
            status,
            stopped=is_stopped(owner),
            url=service_url(owner_of(owner)),
            model=status.get("model"),
            not_ready=None,
            generation=int(owner["metadata"].get("generation") or 0),
            now=now(),
            stop_value=stop_value(owner),
        )

    namespace = body.metadata.namespace or ""
    with_fresh_owner(kube, PLURAL, namespace, body.metadata.labels[INFERENCE_SERVICE_LABEL], compute)
