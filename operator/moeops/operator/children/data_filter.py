"""MoETrainingJob with `spec.data.filter` → the filter stage's Indexed Job, run before the worker Job exists.

One Job of `tasks` pods, each `python -m moeops.datafilter.pipeline` for its completion index: the pods run every
stage of level 1 (signatures → buckets → clusters → reference → filter) and exchange the stages' files in a work
folder on the data claim, which they mount read-write (the workers mount it read-only). The filtered shards and
report.json go next to the data (`<source>.filtered`), the workers then train on them; task 0 writes the counts per
level as its termination message, where the operator reads them (status/data_filter.py).

The Job carries no training-job label: the worker-Job handler must never take it for the worker Job.
"""

from __future__ import annotations

import posixpath
from typing import Any

from moeops.api import GROUP
from moeops.api.v1alpha1.data import DataFilterSpec, pvc_claim_and_path, pvc_mount_path
from moeops.api.v1alpha1.trainingjob import MoETrainingJobSpec

from ..config import OperatorConfig
from ..naming import MANAGED_BY, OPERATOR_NAME, PART_OF, Owner, metadata
from . import pods
from .child import Child

FILTER_CONTAINER = "filter"
FILTER_OF_LABEL = f"{GROUP}/data-filter-of"
"""On the filter Job (and its pods): the MoETrainingJob it filters for."""
TERMINATION_LOG = "/dev/termination-log"
WORK_FOLDER = ".work"


def filter_job_name(job: str) -> str:
    return f"{job}-data-filter"


def filter_labels(job: str) -> dict[str, str]:
    return {PART_OF: "moeops", MANAGED_BY: OPERATOR_NAME, FILTER_OF_LABEL: job}


def _in_pod(source: str) -> tuple[str, str]:
    """(claim, path in the pod) of a pvc:// source."""
    found = pvc_claim_and_path(source)
    if found is None:
        raise ValueError(f"the data filter reads a pvc:// source, got {source!r}")
    claim, path = found
    return claim, posixpath.join(pvc_mount_path(claim), path.lstrip("/"))


def filter_command(owner: Owner, spec: MoETrainingJobSpec, options: DataFilterSpec) -> list[str]:
    """The pipeline's command line: source, output and a work folder of this job's own (its uid: a job of the same
    name created again never meets the done-marks of the last one's tasks)."""
    claim, source = _in_pod(spec.data.source)
    _, output = _in_pod(spec.data.filtered_source())
    work = posixpath.join(output, WORK_FOLDER, owner.uid)
    command = ["python", "-m", "moeops.datafilter.pipeline", source, output, work, "--tasks", str(options.tasks),
               "--text-field", spec.data.text_field, "--summary", TERMINATION_LOG]  # fmt: skip
    if options.reference is not None and options.max_perplexity is not None:
        reference = posixpath.join(pvc_mount_path(claim), options.reference.lstrip("/"))
        command += ["--reference", reference, "--max-perplexity", str(options.max_perplexity)]
    if options.adversarial_drop is not None:
        command += ["--adversarial-drop", str(options.adversarial_drop)]
    for word, weight in (options.domain_weights or {}).items():
        command += ["--domain-weight", f"{word}={weight}"]
    return command


def filter_job(owner: Owner, spec: MoETrainingJobSpec, cfg: OperatorConfig) -> Child:
    """The filter stage's Indexed Job; ValueError if the spec asks for no filter (the caller checks first)."""
    options = spec.data.filter
    claim = spec.data.claim()
    if options is None or claim is None:
        raise ValueError("the filter Job needs spec.data.filter and a pvc:// source")
    labels = filter_labels(owner.name)
    workers = spec.workers
    container = {
        "name": FILTER_CONTAINER,
        "image": workers.image or cfg.runtime_image,
        "imagePullPolicy": workers.image_pull_policy or cfg.image_pull_policy,
        "command": filter_command(owner, spec, options),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
        "securityContext": pods.CONTAINER_SECURITY_CONTEXT,
        "volumeMounts": [{"name": "data", "mountPath": pvc_mount_path(claim)}, *pods.scratch_mounts()],
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": pods.POD_SECURITY_CONTEXT,
        "containers": [container],
        "volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": claim}},
            *pods.scratch_volumes(),
        ],
    }
    optional = {
        "nodeSelector": workers.node_selector,
        "tolerations": [t.to_wire() for t in workers.tolerations] if workers.tolerations else None,
        "priorityClassName": spec.scheduling.priority_class_name,
    }
    pod.update({k: v for k, v in optional.items() if v})
    job_spec = {
        "completionMode": "Indexed",
        "completions": options.tasks,
        # All at once: the tasks wait for each other between stages (moeops.datafilter.pipeline).
        "parallelism": options.tasks,
        # A task re-run after a lost pod skips the stages it marked done; a filter that fails twice per task fails.
        "backoffLimit": 2 * options.tasks,
        "template": {"metadata": {"labels": labels}, "spec": pod},
    }
    body = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(owner, filter_job_name(owner.name), labels),
        "spec": job_spec,
    }
    return Child(body, managed={"metadata": {"labels": labels}})
