"""The filter stage in a MoETrainingJob's status (pure): `status.filter` from the filter Job and its pods, state
`Filtering` until it succeeds, `Failed` if it fails, the condition `DataFiltered` with the counts per level, and
`DataDrift` when a reference was given: whether the filtered corpus drifted from it (PSI, moeops.datafilter.drift).

The counts come from task 0's termination message (moeops.datafilter.pipeline.summary): the operator reads them
from the pod's status, never from the data claim it does not mount.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from .conditions import Event, StatusUpdate, set_condition, timestamp

CONDITION = "DataFiltered"
DRIFT_CONDITION = "DataDrift"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


def _job_condition(job: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    conditions = (job.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == type_ and c.get("status") == "True"), None)


def task0_summary(pods: Sequence[Mapping[str, Any]], container: str) -> dict[str, Any] | None:
    """What task 0 left as its termination message: {"counts": flat counts per level, "drift"?: ...}, or None."""
    for pod in pods:
        annotations = pod["metadata"].get("annotations") or {}
        if annotations.get(COMPLETION_INDEX_ANNOTATION) != "0" or (pod.get("status") or {}).get("phase") != "Succeeded":
            continue
        for status in pod["status"].get("containerStatuses") or []:
            message = ((status.get("state") or {}).get("terminated") or {}).get("message")
            if status.get("name") != container or not message:
                continue
            try:
                found = json.loads(message)
                levels = {key: int(value) for key, value in found["level1"].items()}
                for level in ("level2", "level3"):
                    levels.update({key: int(value) for key, value in (found.get(level) or {}).items()})
                counts = {"documents": int(found["documents"]), "kept": int(found["kept"]), **levels,
                          "malformed": int(found["malformed"])}  # fmt: skip
                drift = found.get("drift")
                if drift is None:
                    return {"counts": counts}
                return {"counts": counts, "drift": {"psiLengths": float(drift["psi_lengths"]),
                        "psiTerms": float(drift["psi_terms"]), "threshold": float(drift["threshold"]),
                        "drifted": bool(drift["drifted"])}}  # fmt: skip
            except (ValueError, KeyError, TypeError, AttributeError):
                return None
    return None


def filter_status(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], *, container: str, output: str,
                  tasks: int) -> dict[str, Any]:  # fmt: skip
    """status.filter (wire form) from the filter Job and, once it completed, its pods."""
    counts = job.get("status") or {}
    out: dict[str, Any] = {"tasks": tasks, "succeeded": int(counts.get("succeeded") or 0), "output": output}
    failed = _job_condition(job, "Failed")
    if failed is not None:
        return {**out, "state": "Failed", "message": failed.get("message") or failed.get("reason") or "failed"}
    if _job_condition(job, "Complete") is None:
        return {**out, "state": "Running"}
    found = task0_summary(pods, container)
    if found is None:  # a Job complete without task 0's counts: its pod is gone or the message was lost
        return {**out, "state": "Succeeded", "message": "task 0 left no counts (its pod is gone)"}
    return {**out, "state": "Succeeded", **found}


def _summary(counts: Mapping[str, int] | None) -> str:
    if not counts:
        return "filtered"
    level2 = f"; level 2 removed {counts['rebalance']} to re-weight the domains" if counts.get("rebalance") else ""
    level3 = level2 + (
        f"; level 3 removed {counts['adversarial']} unlike the reference" if counts.get("adversarial") else ""
    )
    return (f"kept {counts['kept']} of {counts['documents']} documents: level 1 removed {counts['exact']} exact and"
            f" {counts['near']} near duplicates, {counts['quality']} of low quality{level3}")  # fmt: skip


def filtering_update(
    previous: Mapping[str, Any], found: Mapping[str, Any], *, generation: int, now: datetime
) -> StatusUpdate:
    """The owner's status while the filter has not succeeded: state Filtering (Failed if the filter failed), with
    status.filter and the DataFiltered condition; an event when the state changes."""
    before: list[dict[str, Any]] = list(previous.get("conditions") or [])
    failed = found["state"] == "Failed"
    message = found.get("message") or "" if failed else f"{found['succeeded']} of {found['tasks']} filter tasks done"
    conditions = set_condition(before, CONDITION, False, "FilterFailed" if failed else "Filtering", message,
                               now=now, generation=generation)  # fmt: skip
    state = "Failed" if failed else "Filtering"
    patch: dict[str, Any] = {"state": state, "filter": dict(found), "conditions": conditions,
                             "observedGeneration": generation}  # fmt: skip
    events: list[Event] = []
    if previous.get("state") != state:
        events.append(Event("Warning", "FilterFailed", message) if failed else Event("Normal", "Filtering", message))
    if failed:  # finished: the workers never start, a TTL applies
        patch["conditions"] = set_condition(conditions, "Failed", True, "FilterFailed", message, now=now,
                                            generation=generation)  # fmt: skip
        patch["completionTime"] = previous.get("completionTime") or timestamp(now)
    return StatusUpdate(patch, events)


def filtered_update(
    update: StatusUpdate, previous: Mapping[str, Any], found: Mapping[str, Any], *, generation: int, now: datetime
) -> StatusUpdate:
    """The training status once the filter succeeded, with status.filter and DataFiltered=True (an event once)."""
    before = update.patch.get("conditions") or list(previous.get("conditions") or [])
    was = next((c for c in previous.get("conditions") or [] if c.get("type") == CONDITION), None)
    message = _summary(found.get("counts"))
    conditions = set_condition(before, CONDITION, True, "Filtered", message, now=now, generation=generation)
    events = list(update.events)
    if was is None or was.get("status") != "True":
        events.append(Event("Normal", "Filtered", message))
    drift = found.get("drift")
    if drift is not None:
        conditions, drift_events = _drift_condition(previous, conditions, drift, generation=generation, now=now)
        events += drift_events
    return StatusUpdate({**update.patch, "filter": dict(found), "conditions": conditions}, events)


def _drift_condition(
    previous: Mapping[str, Any], conditions: list[dict[str, Any]], drift: Mapping[str, Any], *, generation: int,
    now: datetime,
) -> tuple[list[dict[str, Any]], list[Event]]:  # fmt: skip
    """DataDrift: True (a Warning event when it turns True) if the filtered corpus's lengths or words drifted from
    the reference beyond the PSI threshold (moeops.datafilter.drift)."""
    drifted = bool(drift["drifted"])
    message = (f"PSI from the reference: lengths {drift['psiLengths']}, words {drift['psiTerms']}"
               f" (threshold {drift['threshold']})")  # fmt: skip
    reason = "DriftFromReference" if drifted else "CloseToReference"
    was = next((c for c in previous.get("conditions") or [] if c.get("type") == DRIFT_CONDITION), None)
    updated = set_condition(conditions, DRIFT_CONDITION, drifted, reason, message, now=now, generation=generation)
    turned = drifted and (was is None or was.get("status") != "True")
    return updated, [Event("Warning", reason, message)] if turned else []
