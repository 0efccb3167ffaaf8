"""InferenceService → Deployment (model servers) + Service, and the resolution of the model it serves."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from moeops.api import env
from moeops.api.v1alpha1.common import VolumeLocation
from moeops.api.v1alpha1.inferenceservice import InferenceServiceSpec
from moeops.api.v1alpha1.runtime import ServingRuntimeConfig

from ..config import OperatorConfig
from ..errors import InvalidSpec, ModelNotReady
from ..naming import INFERENCE_SERVICE_LABEL, Owner, metadata, serving_labels
from . import pods
from .child import Child

CONTAINER = "server"
MODEL_MOUNT = "/models"
SERVICE_PORT = 80


def resolve_model(spec: InferenceServiceSpec, training_job: Mapping[str, Any] | None) -> VolumeLocation:
    """Where the model's files are. Raises InvalidSpec (won't fix itself) or ModelNotReady (will)."""
    if spec.model.checkpoint is not None:
        return spec.model.checkpoint
    ref = spec.model.training_job_ref
    assert ref is not None  # CEL guarantees exactly one of the two.
    if training_job is None:
        raise ModelNotReady(f"MoETrainingJob {ref.name!r} not found in this namespace")
    storage = ((training_job.get("spec") or {}).get("checkpoint") or {}).get("storage") or {}
    if not storage.get("claimName"):
        raise InvalidSpec(
            "ModelUnreachable",
            f"spec.model.trainingJobRef: MoETrainingJob {ref.name!r} keeps checkpoints on ephemeral pod storage;"
            " give it spec.checkpoint.storage.claimName to serve it",
        )
    if not (training_job.get("status") or {}).get("checkpoint"):
        raise ModelNotReady(f"MoETrainingJob {ref.name!r} has no checkpoint yet")
    return VolumeLocation(claim_name=storage["claimName"], path=storage.get("path", "/"))


def model_uri(location: VolumeLocation) -> str:
    return f"pvc://{location.claim_name}{location.path}" if location.claim_name else f"file://{location.path}"


def service_url(owner: Owner) -> str:
    return f"http://{owner.name}.{owner.namespace}.svc.cluster.local"


def desired_replicas(spec: InferenceServiceSpec, stopped: bool, autoscaled: int | None = None) -> int:
    """The Deployment's replicas: 0 when stopped; else what the autoscaler last decided (`.status.desiredReplicas`,
    bounded again in case spec.replicas changed since), and max(min, 1) until it has decided (always, without a
    bus). Derived from the status rather than left out of the managed fields, so that every reconcile re-applies
    the autoscaler's number instead of resetting it to min, and a Deployment deleted by hand comes back at it."""
    if stopped:
        return 0
    bounds = spec.replicas
    if autoscaled is None:
        return max(bounds.min, 1)
    if autoscaled == 0 and bounds.min == 0:
        return 0  # scaled to zero when idle
    return min(bounds.max, max(bounds.min, 1, autoscaled))


def _server_config(owner: Owner, spec: InferenceServiceSpec) -> ServingRuntimeConfig:
    return ServingRuntimeConfig(
        service_name=owner.name,
        namespace=owner.namespace,
        model_dir=MODEL_MOUNT,
        port=spec.port,
        early_exit=spec.early_exit,
        batching=spec.batching,
        threads=spec.threads,
    )


def _server_env(
    config: str, model: VolumeLocation, cfg: OperatorConfig, spec: InferenceServiceSpec
) -> list[dict[str, Any]]:
    bus: list[dict[str, Any]] = []
    if cfg.nats_url:  # the server reports its load for the autoscaler (moeops.serving.load_reporter)
        bus.append({"name": env.NATS_URL, "value": cfg.nats_url})
        if cfg.nats_token_secret:
            secret = {"name": cfg.nats_token_secret, "key": "token"}
            bus.append({"name": env.NATS_TOKEN, "valueFrom": {"secretKeyRef": secret}})
    # spec.threads reaches the server as its --threads (through the config); OMP_NUM_THREADS says the same to
    # the libraries beside torch's intra-op pool. Unset: from the container's CPU figure.
    threads = [{"name": pods.THREADS_ENV, "value": str(spec.threads)}] if spec.threads else []
    threads = threads or pods.cpu_threads_env(CONTAINER, spec.resources)
    return [
        {"name": env.SERVING_CONFIG, "value": config},
        {"name": env.MODEL_DIR, "value": model.in_mount(MODEL_MOUNT)},
        *bus,
        pods.field_env(env.POD_NAME, "metadata.name"),  # the key of this server's load in the bus
        *threads,
    ]


def deployment(
    owner: Owner,
    spec: InferenceServiceSpec,
    model: VolumeLocation,
    stopped: bool,
    cfg: OperatorConfig,
    autoscaled: int | None = None,
) -> Child:
    labels = serving_labels(owner.name)
    selector = {INFERENCE_SERVICE_LABEL: owner.name}
    config = _server_config(owner, spec).model_dump_json(by_alias=True)
    probe: dict[str, Any] = {"httpGet": {"path": "/readyz", "port": cfg.http_port_name}, "periodSeconds": 5}
    container = {
        "name": CONTAINER,
        "image": spec.image or cfg.runtime_image,
        "imagePullPolicy": spec.image_pull_policy or cfg.image_pull_policy,
        "command": ["moeops", "serve"],
        "env": _server_env(config, model, cfg, spec),
        "ports": [{"name": cfg.http_port_name, "containerPort": spec.port}],
        "readinessProbe": probe,
        "livenessProbe": {**probe, "httpGet": {**probe["httpGet"], "path": "/healthz"}, "periodSeconds": 10},
        "resources": pods.resources(spec.resources, spec.gpus),
        "securityContext": pods.CONTAINER_SECURITY_CONTEXT,
        "volumeMounts": [{"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True}, *pods.scratch_mounts()],
    }
    pod: dict[str, Any] = {
        "securityContext": pods.POD_SECURITY_CONTEXT,
        "automountServiceAccountToken": False,  # the server never calls the API server: no token to steal
        "containers": [container],
        "volumes": [pods.storage_volume("model", model, read_only=True), *pods.scratch_volumes()],
    }
    optional = {  # as on the training job's workers
        "nodeSelector": spec.node_selector,
        "tolerations": [t.to_wire() for t in spec.tolerations] if spec.tolerations else None,
        "priorityClassName": spec.priority_class_name,
    }
    pod.update({k: v for k, v in optional.items() if v})
    template = {"metadata": {"labels": {**labels, **selector}}, "spec": pod}
    replicas = desired_replicas(spec, stopped, autoscaled)
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(owner, owner.name, labels),
        "spec": {"replicas": replicas, "selector": {"matchLabels": selector}, "template": template},
    }
    managed = {"metadata": {"labels": labels}, "spec": {"replicas": replicas, "template": template}}
    return Child(body, managed=managed)


def service(owner: Owner, spec: InferenceServiceSpec, cfg: OperatorConfig) -> Child:
    labels = serving_labels(owner.name)
    svc_spec = {
        "selector": {INFERENCE_SERVICE_LABEL: owner.name},
        "ports": [{"name": cfg.http_port_name, "port": SERVICE_PORT, "targetPort": cfg.http_port_name}],
    }
    body = {"apiVersion": "v1", "kind": "Service", "metadata": metadata(owner, owner.name, labels), "spec": svc_spec}
    return Child(body, managed={"metadata": {"labels": labels}, "spec": svc_spec})


def serving_children(
    owner: Owner,
    spec: InferenceServiceSpec,
    model: VolumeLocation,
    stopped: bool,
    cfg: OperatorConfig,
    autoscaled: int | None = None,
) -> list[Child]:
    """`autoscaled`: the owner's `.status.desiredReplicas` (see `desired_replicas`)."""
    return [service(owner, spec, cfg), deployment(owner, spec, model, stopped, cfg, autoscaled)]
