"""MoETrainingJob handlers: reconcile children and status; follow the worker Job and restart the whole group of
workers when one fails (planning/recovery.py); expire after the TTL."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import kopf
from pydantic import ValidationError

from moeops.api import GROUP
from moeops.api.v1alpha1.common import VERSION
from moeops.api.v1alpha1.trainingjob import PLURAL, MoETrainingJobSpec

from ..children.training import training_children
from ..config import OperatorConfig
from ..drift import controlled_by
from ..errors import InvalidSpec
from ..kube import ChildRefused, Kube, NotOwned
from ..naming import MANAGED_BY, OPERATOR_NAME, RESTART_ATTEMPT_LABEL, TRAINING_JOB_LABEL
from ..planning import plan_training_job
from ..planning.carbon_gate import is_carbon_paused
from ..planning.recovery import (
    Recovery,
    Verdict,
    decide_recovery,
    first_failed_pod,
    needs_failed_pod,
    remaining_deadline_s,
    restarts,
)
from ..status import StatusUpdate, invalid_spec_status, is_finished, plan_status, training_status, ttl_expiry
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
from .data_filter_gate import data_filter_gate
from .observe import JOBS, traced
from .typed import spec_of, typed_spec

TRAINING = (GROUP, VERSION, PLURAL)
JOB_LABELS: Mapping[str, Any] = {MANAGED_BY: OPERATOR_NAME, TRAINING_JOB_LABEL: kopf.PRESENT}
JOB_POD_LABEL = "batch.kubernetes.io/controller-uid"
"""The Job controller's label on the pods of one Job (by uid: never those of an earlier Job of the same name)."""


def follow_job(
    kube: Kube, spec: MoETrainingJobSpec, job: Mapping[str, Any], owner: Mapping[str, Any], *, generation: int
) -> tuple[StatusUpdate | None, Recovery]:
    """The owner's status from its worker Job, and what to do about a failure (None: a Job of an earlier
    attempt says nothing about the job). Reads the Job's pods only when a worker failed."""
    status = owner.get("status") or {}
    failed_pod = None
    if needs_failed_pod(job, status):
        meta = job["metadata"]
        failed_pod = first_failed_pod(kube.list_pods(meta["namespace"], f"{JOB_POD_LABEL}={meta['uid']}"))
    recovery = decide_recovery(
        job,
        status,
        backoff_limit=spec.run_policy.backoff_limit,
        failed_pod=failed_pod,
        durable_checkpoints=spec.checkpoint.storage.claim_name is not None,
    )
    if recovery.verdict is Verdict.STALE:
        return None, recovery
    return training_status(spec, job, status, generation=generation, now=now(), recovery=recovery), recovery


def invalid_spec(body: Mapping[str, Any], reason: str, message: str) -> StatusFn:
    """How to compute the status of a job whose spec the operator refuses (no children are touched)."""
    generation = int(body["metadata"].get("generation") or 0)
    return lambda owner: invalid_spec_status(
        owner.get("status") or {}, reason, message, generation=generation, now=now()
    )


def reconcile(kube: Kube, cfg: OperatorConfig, body: Mapping[str, Any]) -> StatusFn:
    """`reconcile_spec` for an owner read afresh (its spec not validated yet). Never raises on a bad spec."""
    try:
        spec = spec_of(MoETrainingJobSpec, body)
    except ValidationError as exc:
        return invalid_spec(body, "InvalidSpec", validation_message(exc))
    return reconcile_spec(kube, cfg, body, spec)


def reconcile_spec(kube: Kube, cfg: OperatorConfig, body: Mapping[str, Any], spec: MoETrainingJobSpec) -> StatusFn:
    """Bring the children in line with the spec. Never raises on a spec the planner refuses.

    Returns how to compute the status from the owner as (re-)read, so that a write conflict costs a read
    and a recomputation, not another round of the children.
    """
    generation = int(body["metadata"].get("generation") or 0)
    try:
        arch, plan = plan_training_job(spec)
    except InvalidSpec as exc:
        return invalid_spec(body, exc.reason, exc.message)

    owner_ref = owner_of(body)
    job: Mapping[str, Any] = {}
    status = body.get("status") or {}
    likely_new = "observedGeneration" not in status
    carbon_paused = is_carbon_paused(status)
    attempt = restarts(status)  # a Job is created for the current attempt only (planning/recovery.py)
    deadline = spec.run_policy.active_deadline_seconds
    deadline_left = remaining_deadline_s(deadline, status.get("startTime"), now()) if attempt else None
    gate = data_filter_gate(kube, cfg, body, spec, likely_new=likely_new)  # spec.data.filter: filter first
    if gate.waiting is not None:
        return gate.waiting
    spec = gate.spec  # the workers read the filtered shards
    children = training_children(
        owner_ref, spec, arch, plan, cfg, carbon_paused=carbon_paused, attempt=attempt, deadline_left_s=deadline_left
    )
    for child in children:
        _, job = kube.ensure(child, owner_ref.uid, likely_new=likely_new)  # the Job comes last

    def status_of(owner: Mapping[str, Any]) -> StatusUpdate | None:
        status = owner.get("status") or {}
        update, _ = follow_job(kube, spec, job, owner, generation=generation)
        if update is None:
            return None  # a Job of an earlier attempt, being deleted: its successor will report
        update.patch["plan"] = plan_status(plan)
        update.patch["conditions"] = accepted(update.patch["conditions"], generation=generation, now=now())
        if not status.get("progress"):
            update.patch["progress"] = {"step": 0, "totalSteps": spec.training.steps, "percent": 0}
        return update

    return gate.wrap(status_of, generation)


def rejected(body: Mapping[str, Any], reason: str, message: str) -> StatusFn:
    """How to compute the status of a job whose child the API server refused (or whose child's name is taken)."""
    generation = int(body["metadata"].get("generation") or 0)

    def status_of(owner: Mapping[str, Any]) -> StatusUpdate:
        status = owner.get("status") or {}
        update = rejection_status(status, reason, message, generation=generation, now=now())
        return StatusUpdate({**update.patch, "state": status.get("state") or "Pending"}, update.events)

    return status_of


def report_invalid_spec(body: kopf.Body, memo: kopf.Memo, message: str, **_: Any) -> None:
    """A spec the model refuses: `InvalidSpec` in the status (and its event); finished jobs keep their outcome."""
    if is_finished(body.get("status") or {}):
        return
    meta = body["metadata"]
    status_of = invalid_spec(body, "InvalidSpec", message)
    with_fresh_owner(kube_of(memo), PLURAL, meta["namespace"], meta["name"], status_of, cached=body)


def current_job(kube: Kube, namespace: str, name: str) -> tuple[Mapping[str, Any], MoETrainingJobSpec] | None:
    """The job and its spec as the API server holds them now; None when there is nothing to reconcile."""
    body = kube.get_custom(PLURAL, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp") or is_finished(body.get("status") or {}):
        return None
    try:
        return body, spec_of(MoETrainingJobSpec, body)
    except ValidationError:
        return None


@kopf.on.resume(*TRAINING)
@kopf.on.create(*TRAINING)
@kopf.on.update(*TRAINING)
@traced()
@api_errors_to_kopf
@typed_spec(MoETrainingJobSpec, on_invalid=report_invalid_spec)
def reconcile_training_job(body: kopf.Body, spec: MoETrainingJobSpec, memo: kopf.Memo, **_: Any) -> None:
    if is_finished(body.get("status") or {}):
        return  # finished jobs keep their outcome; children are never recreated.
    kube = kube_of(memo)
    meta = body["metadata"]
    owner: Mapping[str, Any] = body
    if "observedGeneration" in (body.get("status") or {}):
        # Reconciled before: kopf's body may predate a restart that the worker Job's handler has just recorded and
        # acted on (after an operator restart, resume runs beside the Jobs' first events). Children built from it
        # would belong to the previous attempt: a worker Job labelled with it, a Service selecting its gone pods.
        fresh = current_job(kube, meta["namespace"], meta["name"])
        if fresh is None:
            return  # gone, being deleted, finished, or an invalid spec (its own update event reports it)
        owner, spec = fresh
    try:
        status_of = reconcile_spec(kube, config_of(memo), owner, spec)
    except NotOwned as exc:  # the other object may go: look again later
        with_fresh_owner(kube, PLURAL, meta["namespace"], meta["name"], rejected(owner, "ChildNameConflict", str(exc)))
        raise kopf.TemporaryError(str(exc), delay=60) from exc
    except ChildRefused as exc:  # refused again until the spec changes: no retry, the next edit reconciles
        with_fresh_owner(kube, PLURAL, meta["namespace"], meta["name"], rejected(owner, "ChildRejected", str(exc)))
        return
    with_fresh_owner(kube, PLURAL, meta["namespace"], meta["name"], status_of, cached=owner)


@kopf.index(*TRAINING)
def training_jobs_by_name(namespace: str | None, name: str | None, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """The training jobs as last seen, so following a worker Job needs no read of its owner."""
    return {(namespace, name): dict(body)}


# kopf passes each index by its name; its handler protocols do not declare them, hence the ignore.
@kopf.on.event("batch", "v1", "jobs", labels=JOB_LABELS)  # type: ignore[arg-type]
@traced("MoETrainingJob", owner_label=TRAINING_JOB_LABEL)
def worker_job_changed(
    event: kopf.RawEvent,
    body: kopf.Body,
    memo: kopf.Memo,
    logger: kopf.Logger,
    training_jobs_by_name: kopf.Index[tuple[str | None, str | None], dict[str, Any]],
    **_: Any,
) -> None:
    """Follow the worker Job (and through it the pods) into the owner's status; recreate it if deleted.

    A worker failure is a group restart (planning/recovery.py): the restart is written to the owner's status
    first, then the Job is deleted (Foreground), and its DELETED event creates the next attempt's Job. The same
    order after an operator restart: a Job older than `.status.restarts` is deleted whenever it is seen.
    """
    kube, cfg = kube_of(memo), config_of(memo)
    deleted = event["type"] == "DELETED"
    decided: list[Recovery] = []  # the decision of the last computation, the one whose status stands

    def compute(owner: Mapping[str, Any]) -> StatusUpdate | None:
        decided.clear()
        status = owner.get("status") or {}
        # No waiting for the owner's own handler to write first: that would drop a Job change that lands
        # in between. Both may compute the same transition; the conditional write lets one of them win.
        if not controlled_by(body, owner["metadata"]["uid"]):
            return None
        if deleted:
            if is_finished(status):
                return None  # a finished job's children are never recreated.
            logger.info("worker Job deleted while the training job is active: creating attempt %d", restarts(status))
            try:
                return reconcile(kube, cfg, owner)(owner)
            except ChildRefused as exc:  # the next attempt's Job refused (a policy, a quota): on the job, not a log
                return rejected(owner, "ChildRejected", str(exc))(owner)
            except NotOwned as exc:  # its name taken meanwhile by an object of someone else's
                return rejected(owner, "ChildNameConflict", str(exc))(owner)
        # A finished job still takes the Job's final counts (they may land after the terminal condition).
        try:
            spec = spec_of(MoETrainingJobSpec, owner)
        except ValidationError:
            return None  # the owner's own handler reports it.
        generation = int(owner["metadata"].get("generation") or 0)
        update, recovery = follow_job(kube, spec, body, owner, generation=generation)
        decided.append(recovery)
        return update

    key = (body.metadata.namespace, body.metadata.labels[TRAINING_JOB_LABEL])
    # The next attempt's Job is built from a fresh read: the index may not hold the restart just written yet.
    cached = None if deleted else next(iter(training_jobs_by_name.get(key, [])), None)

    def follow() -> None:
        with_fresh_owner(kube, PLURAL, key[0] or "", key[1], compute, cached=cached)
        restart = decided and decided[0].verdict in (Verdict.RESTART, Verdict.STALE)
        if restart and not body.metadata.get("deletionTimestamp"):
            attempt = body.metadata.labels.get(RESTART_ATTEMPT_LABEL, "0")
            logger.info("deleting the worker Job of attempt %s: %s", attempt, decided[0].message or "restart recorded")
            kube.delete_foreground("batch/v1", "Job", key[0] or "", body.metadata.name or "", body.metadata.uid or "")

    retry_transient(follow)  # idempotent: a retry recomputes from the owner as it then is


@kopf.on.event(*TRAINING)
@traced()
async def schedule_ttl_deletion(
    event: kopf.RawEvent, body: kopf.Body, spec: kopf.Spec, memo: kopf.Memo, **_: Any
) -> None:
    """Delete a finished job `ttlSecondsAfterFinished` after completion.

    No kopf timer: timers need a finalizer on every job, which would block deletion whenever the operator is
    down. The schedule lives in memory and is rebuilt from the objects when the operator restarts.
    """
    scheduled: dict[str, tuple[datetime, asyncio.TimerHandle]] = memo["ttl_timers"]
    uid = body.metadata.uid or ""
    expiry = ttl_expiry(body.get("status") or {}, spec.get("runPolicy", {}).get("ttlSecondsAfterFinished"))
    if event["type"] == "DELETED":
        JOBS.forget(body.metadata.namespace or "", body.metadata.name or "")
    if uid in scheduled and (event["type"] == "DELETED" or scheduled[uid][0] != expiry):
        scheduled.pop(uid)[1].cancel()  # gone, or runPolicy.ttlSecondsAfterFinished edited: schedule it anew
    if event["type"] == "DELETED" or expiry is None or uid in scheduled:
        return
    loop = asyncio.get_running_loop()
    kube = kube_of(memo)
    name, namespace = body.metadata.name or "", body.metadata.namespace or ""

    def expire() -> None:
        scheduled.pop(uid, None)
        loop.run_in_executor(None, kube.delete_custom, PLURAL, namespace, name, uid)

    delay = max(0.0, (expiry - now()).total_seconds())
    scheduled[uid] = (expiry, loop.call_later(delay, expire))
