"""One operator-level loop copies the bus into `.status` (progress, rebalance, carbon), runs the carbon gate and the
autoscaler.

Not kopf timers: kopf puts its finalizer on every object a timer or daemon runs for (kopf issue #1074; a `when=`
filter only narrows which objects get it), so `kubectl delete` of any MoETrainingJob or InferenceService hung while
the operator was down. This loop is started by a `kopf.on.startup` handler and walks kopf's indexes of the two
kinds (the objects as last seen, no reads): nothing of it is tied to an object, so no finalizer. kopf removes the
finalizer the timers left on existing objects the first time it sees each of them (it drops a finalizer no handler
needs), which is the upgrade path.

Each source (`status_sources.py`, `autoscale.py`) has its cadence (`status.refresh.Schedule`); a pass runs the due
ones over every object that is not being deleted and patches each object's status once, with only the fields that
changed, conditional on the resourceVersion it was read at (a 409 re-reads and compares again). A failure on one
object is logged and the pass goes on; the loop itself never stops before the operator does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

import kopf

from moeops.api.v1alpha1 import inferenceservice, trainingjob

from ..config import OperatorConfig
from ..kube import ApiError
from ..status import StatusUpdate
from ..status.refresh import Schedule, changed_fields, leads_peers, merged, with_status
from .autoscale import autoscale_fields
from .carbon_gate import gate_fields
from .common import CONFLICT_RETRIES, config_of, kube_of, now, write_status
from .observe import traced
from .serving import SERVING
from .status_sources import (
    Context,
    SourceFn,
    carbon_fields,
    progress_fields,
    rebalance_fields,
    storage_fields,
    workers_fields,
)

logger = logging.getLogger(__name__)

TASK = "status_loop"
"""The memo key of the loop's asyncio task."""
TRAINING, SERVING_PLURAL = trainingjob.PLURAL, inferenceservice.PLURAL
SOURCES: dict[str, dict[str, SourceFn]] = {
    # source: {plural: how it reads one object}; in this order, each seeing the status the previous ones leave
    "carbon_gate": {TRAINING: gate_fields},  # first: a job it pauses is not looked at for blocked workers
    "progress": {TRAINING: progress_fields},
    "rebalance": {TRAINING: rebalance_fields},
    "workers": {TRAINING: workers_fields},
    "storage": {TRAINING: storage_fields},
    "carbon": {TRAINING: carbon_fields, SERVING_PLURAL: carbon_fields},
    "autoscale": {SERVING_PLURAL: autoscale_fields},
}
Index = Mapping[Any, Any]
CONFIGURED = ("kube", "config", "reports", "grid_intensity")
"""What `setup.configure` puts in the memo for the loop (it runs in a thread, so the loop waits for all of them)."""


@kopf.index(*SERVING)
def inference_services_by_name(namespace: str | None, name: str | None, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """The InferenceServices as last seen, for the status loop."""
    return {(namespace, name): dict(body)}


def active_objects(index: Index) -> Iterator[Mapping[str, Any]]:
    """The objects of a kopf index (a key → store of bodies), less those being deleted."""
    for key in list(index):
        for body in list(index.get(key, [])):
            if not body.get("metadata", {}).get("deletionTimestamp"):
                yield body


@traced()
async def refresh_status(*, ctx: Context, plural: str, body: Mapping[str, Any], sources: list[SourceFn]) -> None:
    """The due sources of one object, and one status write for what changed (a span per object and pass). Each
    source sees the status as the previous ones leave it: two that change `conditions` (the carbon gate, blocked
    workers) then both land. The write is conditional on the resourceVersion read; on a conflict the object is read
    again and the sources run again on it (a condition list computed from an older status must not overwrite a
    newer one)."""
    meta = body["metadata"]
    for _ in range(CONFLICT_RETRIES):
        updates: list[StatusUpdate] = []
        seen = body
        for source in sources:
            if (update := await source(ctx, seen)) is not None:
                updates.append(update)
                seen = with_status(seen, update.patch)
        patch = changed_fields(merged(u.patch for u in updates), body.get("status") or {})
        if not patch:
            return
        update = StatusUpdate(patch, [event for u in updates for event in u.events])
        try:
            await asyncio.to_thread(write_status, ctx.kube, plural, body, update)
            return
        except ApiError as exc:
            if exc.status != 409:
                raise
        fresh = await asyncio.to_thread(ctx.kube.get_custom, plural, meta["namespace"], meta["name"])
        if fresh is None or fresh["metadata"].get("deletionTimestamp"):
            return
        body = fresh


async def run_pass(ctx: Context, due: list[str], indexes: Mapping[str, Index]) -> None:
    live: set[str] = set()
    for plural, index in indexes.items():
        sources = [SOURCES[name][plural] for name in SOURCES if name in due and plural in SOURCES[name]]
        for body in active_objects(index):
            live.add(str(body["metadata"].get("uid") or ""))
            if not sources:
                continue
            try:
                await refresh_status(ctx=ctx, plural=plural, body=body, sources=sources)
            except ApiError as exc:
                meta = body["metadata"]
                logger.warning("status of %s %s/%s not refreshed: %s", plural, meta["namespace"], meta["name"], exc)
    ctx.forget(live)


async def leading(ctx: Context, settings: kopf.OperatorSettings) -> bool:
    """Whether this replica acts (standalone, or the highest priority of its live peers). kopf pauses the others'
    handlers when a peer of higher priority is alive, not this loop: a paused replica would act on a stale index."""
    peering = settings.peering
    if peering.standalone:
        return True
    namespace = ctx.cfg.namespaces[0] if peering.namespaced and ctx.cfg.namespaces else None
    found = await asyncio.to_thread(ctx.kube.get_peering, peering.name, namespace)
    return leads_peers((found or {}).get("status") or {}, peering.priority, now())


async def status_loop(memo: kopf.Memo, indexes: Mapping[str, Index], settings: kopf.OperatorSettings) -> None:
    cfg = OperatorConfig.from_env(os.environ)  # as `setup.configure` reads it
    ctx: Context | None = None
    intervals = {"progress": cfg.progress_interval_s, "rebalance": cfg.rebalance_status_interval_s,
                 "carbon": cfg.carbon_status_interval_s, "autoscale": cfg.autoscale_interval_s,
                 "workers": cfg.workers_interval_s, "storage": cfg.workers_interval_s,
                 "carbon_gate": cfg.carbon_gate_interval_s}  # fmt: skip
    schedule = Schedule(intervals, started_at=time.monotonic())
    while True:
        await asyncio.sleep(schedule.sleep_s(time.monotonic()))
        due = schedule.due(time.monotonic())
        if ctx is None and all(key in memo for key in CONFIGURED):  # filled by the startup handler `setup.configure`
            ctx = Context(memo.get("reports"), kube_of(memo), config_of(memo), grid=memo.get("grid_intensity"))
        if ctx is None:
            continue  # not started yet (without a bus, the bus's sources return nothing)
        try:
            if not await leading(ctx, settings):
                continue  # another replica acts
            await run_pass(ctx, due, indexes)
        except Exception:  # never let one bad pass end the loop: the next one may do better
            logger.exception("a status refresh pass failed")


# kopf passes each index by its name; its handler protocols do not declare them, hence the ignore.
@kopf.on.startup()  # type: ignore[arg-type]
async def start_status_loop(
    memo: kopf.Memo,
    settings: kopf.OperatorSettings,
    training_jobs_by_name: kopf.Index[Any, Any],
    inference_services_by_name: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    indexes = {TRAINING: training_jobs_by_name, SERVING_PLURAL: inference_services_by_name}
    memo[TASK] = asyncio.create_task(status_loop(memo, indexes, settings), name="moeops status loop")


@kopf.on.cleanup()
async def stop_status_loop(memo: kopf.Memo, **_: Any) -> None:
    task: asyncio.Task[None] | None = memo.get(TASK)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
