"""MoETrainingJob → ConfigMap (resolved config), headless Service (rendezvous) and Indexed Job (workers)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from moeops.api import env
from moeops.api.v1alpha1.data import pvc_mount_path
from moeops.api.v1alpha1.presets import Architecture
from moeops.api.v1alpha1.runtime import CheckpointConfig, ParallelPlan, TrainingRuntimeConfig, WorldSpec
from moeops.api.v1alpha1.trainingjob import MoETrainingJobSpec

from ..config import OperatorConfig
from ..naming import (
    KUEUE_QUEUE_LABEL,
    POD_GROUP_LABEL,
    RESTART_ATTEMPT_LABEL,
    Owner,
    config_map_name,
    metadata,
    rank0_address,
    training_labels,
    worker_job_name,
    workers_service_name,
)
from ..planning import Plan
from ..planning.sizing import model_size
from . import pods
from .child import Child

CONTAINER = "trainer"
CONFIG_FILE = "config.json"
CONFIG_MOUNT = "/etc/moeops"
CHECKPOINT_MOUNT = "/checkpoints"
ROLE_LABEL = "moeops.dev/role"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


def nproc_per_node(spec: MoETrainingJobSpec) -> int:
    return max(spec.workers.gpus_per_worker, 1)


def checkpoint_dir(spec: MoETrainingJobSpec) -> str:
    return spec.checkpoint.storage.in_mount(CHECKPOINT_MOUNT)


def runtime_config(
    owner: Owner, spec: MoETrainingJobSpec, arch: Architecture, plan: Plan, cfg: OperatorConfig
) -> TrainingRuntimeConfig:
    return TrainingRuntimeConfig(
        job_name=owner.name,
        namespace=owner.namespace,
        architecture=arch,
        training=spec.training,
        data=spec.data,
        plan=ParallelPlan(**asdict(plan.degrees)),
        world=WorldSpec(
            nnodes=spec.workers.replicas, nproc_per_node=nproc_per_node(spec), rendezvous_port=cfg.rendezvous_port
        ),
        checkpoint=CheckpointConfig(
            interval_steps=spec.checkpoint.interval_steps, keep=spec.checkpoint.keep, directory=checkpoint_dir(spec)
        ),
        rebalance=spec.rebalance,
        carbon=spec.carbon,
    )


def config_map(owner: Owner, config: TrainingRuntimeConfig) -> Child:
    data = {CONFIG_FILE: json.dumps(config.to_wire(), indent=2, sort_keys=True)}
    labels = training_labels(owner.name)
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(owner, config_map_name(owner.name), labels),
        "data": data,
    }
    return Child(body, managed={"metadata": {"labels": labels}, "data": data})


def worker_labels(owner: Owner, attempt: int) -> dict[str, str]:
    """The labels of the worker pods of one restart attempt (the headless Service selects only those)."""
    return {**training_labels(owner.name), ROLE_LABEL: "worker", RESTART_ATTEMPT_LABEL: str(attempt)}


def workers_service(owner: Owner, cfg: OperatorConfig, *, attempt: int = 0) -> Child:
    labels = training_labels(owner.name)
    spec = {
        "clusterIP": "None",
        # Rendezvous happens before any worker is Ready: publish addresses regardless of readiness.
        "publishNotReadyAddresses": True,
        # `<job>-0.<job>-workers` never resolves to a pod of an earlier attempt that is still stopping.
        "selector": worker_labels(owner, attempt),
        "ports": [{"name": "rendezvous", "port": cfg.rendezvous_port, "targetPort": cfg.rendezvous_port}],
    }
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, workers_service_name(owner.name), labels),
        "spec": spec,
    }
    managed = {"metadata": {"labels": labels}, "spec": {"selector": spec["selector"], "ports": spec["ports"]}}
    return Child(body, managed=managed)


def _worker_env(owner: Owner, spec: MoETrainingJobSpec, cfg: OperatorConfig) -> list[dict[str, Any]]:
    plain = {
        env.CONFIG_PATH: f"{CONFIG_MOUNT}/{CONFIG_FILE}",
        env.JOB_NAME: owner.name,
        env.NAMESPACE: owner.namespace,
        env.NNODES: str(spec.workers.replicas),
        env.NPROC_PER_NODE: str(nproc_per_node(spec)),
        env.MASTER_ADDR: rank0_address(owner.name, owner.namespace),
        env.MASTER_PORT: str(cfg.rendezvous_port),
        env.CHECKPOINT_DIR: checkpoint_dir(spec),
    }
    bus: list[dict[str, Any]] = []
    # Every job's rank 0 reports its progress over the bus; the ranks publish step metrics and follow plans only
    # when their config (the ConfigMap's `rebalance.enabled`) says so.
    if cfg.nats_url:
        bus.append({"name": env.NATS_URL, "value": cfg.nats_url})
        if cfg.nats_token_secret:
            secret = {"name": cfg.nats_token_secret, "key": "token"}
            bus.append({"name": env.NATS_TOKEN, "valueFrom": {"secretKeyRef": secret}})
    return [
        *({"name": k, "value": v} for k, v in plain.items()),
        *bus,
        pods.field_env(env.NODE_RANK, f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"),
        pods.field_env(env.POD_NAME, "metadata.name"),
        pods.field_env(env.NODE_NAME, "spec.nodeName"),
        # The job's own, last: they may refer to the operator's with $(NAME); the API refuses the names it sets.
        *pods.cpu_threads_env(CONTAINER, spec.workers.resources),
        *({"name": var.name, "value": var.value} for var in spec.workers.env or ()),
    ]


def _data_storage(spec: MoETrainingJobSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts) for a `pvc://<claim>/...` source: the claim, read-only, at /data/<claim> (where the trainer
    looks: moeops.trainer.corpus.data_root). When the data is on the checkpoint claim, that volume is mounted a second
    time, read-only, rather than naming the claim in two volumes (one volume per claim in a pod)."""
    claim = spec.data.claim()
    if claim is None:
        return [], []
    if claim == spec.checkpoint.storage.claim_name:
        return [], [{"name": "checkpoints", "mountPath": pvc_mount_path(claim), "readOnly": True}]
    volume = {"name": "data", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
    return [volume], [{"name": "data", "mountPath": pvc_mount_path(claim), "readOnly": True}]


WEIGHT_BYTES = 2
"""Bytes per parameter of the weights ranks share on a node (bf16, the trainer's compute dtype on GPUs)."""


def _pod_template(
    owner: Owner, spec: MoETrainingJobSpec, cfg: OperatorConfig, attempt: int, shm_limit: str | None
) -> dict[str, Any]:
    workers, sched = spec.workers, spec.scheduling
    labels = worker_labels(owner, attempt)
    if sched.gang:
        labels[POD_GROUP_LABEL] = owner.name
    data_volumes, data_mounts = _data_storage(spec)
    container = {
        "name": CONTAINER,
        "image": workers.image or cfg.runtime_image,
        "imagePullPolicy": workers.image_pull_policy or cfg.image_pull_policy,
        "command": ["moeops", "train", "--config", f"{CONFIG_MOUNT}/{CONFIG_FILE}"],
        "env": _worker_env(owner, spec, cfg),
        "ports": [{"name": "rendezvous", "containerPort": cfg.rendezvous_port}],
        "resources": pods.resources(workers.resources, workers.gpus_per_worker),
        "securityContext": pods.CONTAINER_SECURITY_CONTEXT,
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
            {"name": "checkpoints", "mountPath": CHECKPOINT_MOUNT},
            *data_mounts,
            *pods.scratch_mounts(),
        ],
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",  # a failed worker fails the Job: the operator restarts the whole group.
        "subdomain": workers_service_name(owner.name),
        "terminationGracePeriodSeconds": cfg.worker_grace_seconds,
        "securityContext": pods.POD_SECURITY_CONTEXT,
        "automountServiceAccountToken": False,  # the trainer never calls the API server: no token to steal
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": config_map_name(owner.name)}},
            pods.storage_volume("checkpoints", spec.checkpoint.storage, read_only=False),
            *data_volumes,
            *pods.scratch_volumes(shm_limit),
        ],
    }
    optional = {
        "nodeSelector": workers.node_selector,
        "tolerations": [t.to_wire() for t in workers.tolerations] if workers.tolerations else None,
        "priorityClassName": sched.priority_class_name,
        "schedulerName": sched.scheduler_name,
    }
    pod.update({k: v for k, v in optional.items() if v})
    return {"metadata": {"labels": labels}, "spec": pod}


def desired_suspend(spec: MoETrainingJobSpec, *, carbon_paused: bool = False) -> bool | None:
    """What the operator wants `Job.spec.suspend` to be, or None to leave it to Kueue.

    A queued job is created suspended and Kueue unsuspends it on admission; the operator then only forces
    suspension when the user asks for it, or while the carbon gate holds the job (`planning.carbon_gate`).
    """
    if spec.run_policy.suspend or carbon_paused:
        return True
    return None if spec.scheduling.queue_name else False


def worker_job(
    owner: Owner,
    spec: MoETrainingJobSpec,
    cfg: OperatorConfig,
    *,
    carbon_paused: bool = False,
    attempt: int = 0,
    deadline_left_s: int | None = None,
    arch: Architecture | None = None,
) -> Child:
    """The Indexed Job of one restart attempt. `deadline_left_s` replaces `activeDeadlineSeconds` for a later
    attempt (what is left of it: restarts do not extend the deadline). `arch` sizes /dev/shm (None: the floor)."""
    labels = training_labels(owner.name)
    if spec.scheduling.queue_name:
        labels[KUEUE_QUEUE_LABEL] = spec.scheduling.queue_name
    suspend = desired_suspend(spec, carbon_paused=carbon_paused)
    shm_limit = pods.shm_size_limit(model_size(arch).total_params * WEIGHT_BYTES) if arch else None
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": spec.workers.replicas,
        "parallelism": spec.workers.replicas,
        # A pod replaced alone could not rejoin the static rendezvous its peers left: the first failure fails
        # the Job (its other pods are stopped) and the operator restarts the whole group (planning/recovery.py),
        # counting the restarts against runPolicy.backoffLimit; disruptions (DisruptionTarget) are not counted.
        "backoffLimit": 0,
        "suspend": True if suspend is None else suspend,
        "podFailurePolicy": {
            "rules": [
                # A configuration the trainer rejects will be rejected again: fail now, don't restart.
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": CONTAINER,
                        "operator": "In",
                        "values": [env.EXIT_CODE_INVALID_CONFIG],
                    },
                },
            ]
        },
        "template": _pod_template(owner, spec, cfg, attempt, shm_limit),
    }
    deadline = deadline_left_s if deadline_left_s is not None else spec.run_policy.active_deadline_seconds
    if deadline:
        job_spec["activeDeadlineSeconds"] = deadline
    body = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(owner, worker_job_name(owner.name), {**labels, RESTART_ATTEMPT_LABEL: str(attempt)}),
        "spec": job_spec,
    }
    # The attempt label is not managed: a Job of an earlier attempt keeps it until it is deleted. The first attempt's
    # deadline is: an edit of runPolicy.activeDeadlineSeconds reaches its running Job (None removes it, a merge-patch
    # null). A later attempt's is what was left when its Job was made (relative to that Job's start): recomputed now it
    # would count this attempt's time twice, so an edit counts from the next attempt's Job on.
    managed: dict[str, Any] = {"metadata": {"labels": labels}, "spec": {}}
    if deadline_left_s is None:
        managed["spec"]["activeDeadlineSeconds"] = deadline or None
    if suspend is not None:
        managed["spec"]["suspend"] = suspend
    return Child(body, managed=managed)


def training_children(
    owner: Owner,
    spec: MoETrainingJobSpec,
    arch: Architecture,
    plan: Plan,
    cfg: OperatorConfig,
    *,
    carbon_paused: bool = False,
    attempt: int = 0,
    deadline_left_s: int | None = None,
) -> list[Child]:
    """Every child of a MoETrainingJob, in creation order (the Job last: its pods mount the others).

    `attempt` is the group restart the worker Job belongs to (`.status.restarts`).
    """
    config = runtime_config(owner, spec, arch, plan, cfg)
    job = worker_job(
        owner, spec, cfg, carbon_paused=carbon_paused, attempt=attempt, deadline_left_s=deadline_left_s, arch=arch
    )
    return [config_map(owner, config), workers_service(owner, cfg, attempt=attempt), job]
