"""The filter stage in a training job's reconcile: with `spec.data.filter`, the worker Job waits for the filter Job.

`data_filter_gate` is called by reconcile_spec before it builds the workers:
- no filter asked for: the spec passes through unchanged;
- the filter has not succeeded: the filter Job is ensured and `waiting` computes the status (Filtering, or Failed);
- it has succeeded (status.filter says so, or the Job just completed): the spec the workers get reads the filtered
  shards (`<source>.filtered`, no filter left in it) and `wrap` adds status.filter and DataFiltered=True to the
  training status.
Once status.filter records success the filter Job is never looked at again (a TTL or a user may delete it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from moeops.api.v1alpha1.trainingjob import MoETrainingJobSpec

from ..children.data_filter import FILTER_CONTAINER, filter_job
from ..config import OperatorConfig
from ..kube import Kube
from ..status.data_filter import filter_status, filtered_update, filtering_update
from .common import StatusFn, now, owner_of

JOB_POD_LABEL = "batch.kubernetes.io/controller-uid"


@dataclass(frozen=True)
class Gate:
    spec: MoETrainingJobSpec
    """What the workers are built from."""
    waiting: StatusFn | None = None
    """Set while the workers must wait: how to compute the owner's status meanwhile."""
    found: Mapping[str, Any] | None = None
    """status.filter of a filter that succeeded."""

    def wrap(self, status_of: StatusFn, generation: int) -> StatusFn:
        """The training status, with the filter's outcome when there was one."""
        found = self.found
        if found is None:
            return status_of

        def with_filter(owner: Mapping[str, Any]) -> Any:
            update = status_of(owner)
            if update is None:
                return None
            return filtered_update(update, owner.get("status") or {}, found, generation=generation, now=now())

        return with_filter


def _filtered_spec(spec: MoETrainingJobSpec) -> MoETrainingJobSpec:
    data = spec.data.model_copy(update={"source": spec.data.filtered_source(), "filter": None})
    return spec.model_copy(update={"data": data})


def data_filter_gate(
    kube: Kube, cfg: OperatorConfig, body: Mapping[str, Any], spec: MoETrainingJobSpec, *, likely_new: bool
) -> Gate:
    options = spec.data.filter
    if options is None:
        return Gate(spec)
    output = spec.data.filtered_source()
    recorded = (body.get("status") or {}).get("filter") or {}
    if recorded.get("state") == "Succeeded" and recorded.get("output") == output and "counts" in recorded:
        return Gate(_filtered_spec(spec), found=recorded)
    owner = owner_of(body)
    _, job = kube.ensure(filter_job(owner, spec, cfg), owner.uid, likely_new=likely_new)
    complete = any(c.get("type") == "Complete" for c in (job.get("status") or {}).get("conditions") or [])
    uid = job.get("metadata", {}).get("uid")
    pods = kube.list_pods(owner.namespace, f"{JOB_POD_LABEL}={uid}") if complete and uid else []
    found = filter_status(job, pods, container=FILTER_CONTAINER, output=output, tasks=options.tasks)
    if found["state"] == "Succeeded":
        return Gate(_filtered_spec(spec), found=found)
    generation = int(body["metadata"].get("generation") or 0)

    def waiting(owner_now: Mapping[str, Any]) -> Any:
        status = owner_now.get("status") or {}
        current = status.get("filter") or {}
        if current.get("state") == "Succeeded" and current.get("output") == output:
            # A newer reconcile saw the Job complete and created the workers: this one read the Job before that and
            # must not put the job back to Filtering (its write can land later, after a conflict).
            return None
        return filtering_update(status, found, generation=generation, now=now())

    return Gate(spec, waiting=waiting)
