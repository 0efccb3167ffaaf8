"""The filter stage in a MoETrainingJob's status (pure): `status.filter` from the filter Job and its pods, state
`Filtering` until it succeeds, `Failed` if it fails, and the condition `DataFiltered` with the counts per level.

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
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


def _job_condition(job: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    conditions = (job.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == type_ and c.get("status") == "True"), None)


def task0_counts(pods: Sequence[Mapping[str, Any]], container: str) -> dict[str, int] | None:
    """The counts task 0 left as its termination message (flattened for status.filter.counts), or None."""
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
                return {"documents": int(found["documents"]), "kept": int(found["kept"]), **levels,
                        "malformed": int(found["malformed"])}  # fmt: skip
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
    found = task0_counts(pods, container)
    if found is None:  # a Job complete without task 0's counts: its pod is gone or the message was lost
        return {**out, "state": "Succeeded", "message": "task 0 left no counts (its pod is gone)"}
    return {**out, "state": "Succeeded", "counts": found}


def _summary(counts: Mapping[str, int] | None) -> str:
    if not counts:
        return "filtered"
    return (f"kept {counts['kept']} of {counts['documents']} documents: level 1 removed {counts['exact']} exact and"
            f" {counts['near']} near duplicates, {counts['quality']} of low quality")  # fmt: skip


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
    return StatusUpdate({**update.patch, "filter": dict(found), "conditions": conditions}, events)
