"""`moeops serve` (also `python -m moeops.serving`): the model server, in a pod or on a workstation.

In a pod the operator says everything through the environment (operator/children/serving.py): MOEOPS_SERVING_CONFIG
holds the resolved ServingRuntimeConfig as JSON (service, namespace, port, early exit, batching), MOEOPS_MODEL_DIR
the checkpoint directory inside the model volume, and MOEOPS_NATS_URL (with MOEOPS_POD_NAME) turns on the load
reporter. Locally: `moeops serve --checkpoint .tmp/train/<job>/checkpoints --port 8080`. Flags override the config.

A configuration that can never work (unreadable config, no checkpoint, no architecture) exits with 78 (EX_CONFIG)
before the server starts; the weights themselves load after it has started, while /healthz answers and /readyz
says "loading".
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from moeops import telemetry
from moeops.api import env
from moeops.api.v1alpha1.inferenceservice import BatchingSpec, EarlyExitSpec
from moeops.api.v1alpha1.runtime import ServingRuntimeConfig

DEFAULT_PORT = 8080
LOCAL_HOST = "127.0.0.1"
"""A server started by hand answers this machine only, unless told otherwise (--host)."""
POD_HOST = "0.0.0.0"
"""In a pod (the operator gives the ServingRuntimeConfig) the server binds the pod's own addresses: its network
namespace is its own, and the Service reaches it there."""
KEEP_ALIVE_S = 5
"""An idle keep-alive connection is closed after this long (a slow or silent client holds no socket for long)."""


def _runtime_config(path: Path | None) -> ServingRuntimeConfig | None:
    text = path.read_text() if path is not None else os.environ.get(env.SERVING_CONFIG)
    if not text:
        return None
    try:
        return ServingRuntimeConfig.model_validate_json(text)
    except ValueError as exc:
        _fail(f"{path or env.SERVING_CONFIG}: not a ServingRuntimeConfig: {exc}")
    return None  # unreachable


def _fail(message: str) -> None:
    click.echo(f"moeops serve: {message}", err=True)
    sys.exit(env.EXIT_CODE_INVALID_CONFIG)


@click.command("serve")
@click.option("--config", "config", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help=f"A ServingRuntimeConfig JSON file  [default: ${env.SERVING_CONFIG}, JSON text]")  # fmt: skip
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help=f"A step-XXXXXXXX directory or the directory of them  [default: ${env.MODEL_DIR}, the config's"
                   " modelDir]")  # fmt: skip
@click.option("--train-config", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="The run's resolved config.json (its architecture)  [default: beside the checkpoints]")  # fmt: skip
@click.option("--host", default=None,
              help="Address to bind  [default: 0.0.0.0 in a pod (a ServingRuntimeConfig is given: the pod binds its"
                   f" own address), else {LOCAL_HOST}]")  # fmt: skip
@click.option("--port", type=click.IntRange(1, 65535), default=None, help=f"[default: the config's, or {DEFAULT_PORT}]")
@click.option("--model-name", default=None,
              help="The id clients send as `model`  [default: the service, or the checkpoint's job]")  # fmt: skip
@click.option("--max-batch-size", type=click.IntRange(min=1), default=None, help="[default: the config's, or 16]")
@click.option("--max-latency-ms", type=click.FloatRange(min=0), default=None, help="[default: the config's, or 10]")
@click.option("--batched-matmuls/--no-batched-matmuls", default=True, show_default=True,
              help="Run a round's full-depth sequences as one batch (off: one pass per sequence)")  # fmt: skip
@click.option("--early-exit/--no-early-exit", default=None, help="[default: the config's, or off]")
@click.option("--exit-threshold", type=click.FloatRange(0, 1), default=None, help="[default: the config's, or 0.9]")
@click.option("--exit-rule", type=click.Choice(["softmax-max", "top2-margin"]), default=None)
@click.option("--device", default=None, help="torch device  [default: cuda when available, else cpu]")
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=1 << 20, show_default=True)
@click.option("--max-queued", type=click.IntRange(min=1), default=256, show_default=True,
              help="Requests waiting for the batch beyond which new ones get 429 with Retry-After")  # fmt: skip
@click.option("--request-timeout-s", type=click.FloatRange(min=0, min_open=True), default=600.0, show_default=True,
              help="A request generating longer than this is cancelled (504)")  # fmt: skip
@click.option("--body-timeout-s", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="A request body not all arrived after this long gets 408")  # fmt: skip
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="torch intra-op threads  [default: the config's threads, else $OMP_NUM_THREADS, else the cgroup's CPU"
    " limit (cpu.max)]",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning"]), default="info", show_default=True)
def serve(
    config: Path | None,
    checkpoint: Path | None,
    train_config: Path | None,
    host: str | None,
    port: int | None,
    model_name: str | None,
    max_batch_size: int | None,
    max_latency_ms: float | None,
    batched_matmuls: bool,
    early_exit: bool | None,
    exit_threshold: float | None,
    exit_rule: str | None,
    device: str | None,
    max_body_bytes: int,
    max_queued: int,
    request_timeout_s: float,
    body_timeout_s: float,
    threads: int | None,
    log_level: str,
) -> None:
    """Serve a trained checkpoint: OpenAI-compatible /v1/completions, /v1/chat/completions and /v1/models,
    /healthz, /readyz, /metrics."""
    import torch
    import uvicorn

    from moeops.checkpoint.layout import read_meta
    from moeops.serving.decoding.early_exit import ExitPolicy
    from moeops.serving.loader import CheckpointRef, ModelLoadError, load_served
    from moeops.serving.openai.app import ServerSettings, create_app
    from moeops.serving.threads import choose_threads

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runtime = _runtime_config(config)
    model_dir = checkpoint or _env_path(env.MODEL_DIR) or (Path(runtime.model_dir) if runtime else None)
    if model_dir is None:
        _fail(f"no checkpoint: give --checkpoint, or set {env.MODEL_DIR} or {env.SERVING_CONFIG}")
        return
    try:
        ref = CheckpointRef.resolve(model_dir, train_config)
    except ModelLoadError as exc:
        _fail(str(exc))
        return
    name = (
        model_name or (runtime.service_name if runtime else None) or str(read_meta(ref.step_dir).get("job") or "moeops")
    )
    spec = runtime.early_exit if runtime else EarlyExitSpec()
    updates = {"enabled": early_exit, "threshold": exit_threshold, "rule": exit_rule}
    spec = spec.model_copy(update={k: v for k, v in updates.items() if v is not None})
    batching = runtime.batching if runtime else BatchingSpec()
    try:
        policy = ExitPolicy.from_spec(spec)
        target = torch.device(device) if device else None
    except (ValueError, RuntimeError) as exc:
        _fail(str(exc))
        return
    settings = ServerSettings(
        policy=policy,
        max_batch_size=max_batch_size or batching.max_batch_size,
        max_latency_ms=batching.max_latency_ms if max_latency_ms is None else max_latency_ms,
        max_body_bytes=max_body_bytes,
        batched_matmuls=batched_matmuls,
        service=runtime.service_name if runtime else None,
        namespace=runtime.namespace if runtime else None,
        max_queued=max_queued,
        request_timeout_s=request_timeout_s,
        body_timeout_s=body_timeout_s,
    )
    spec_threads = runtime.threads if runtime else None
    intra_op = (
        choose_threads(spec_threads, configured_by="the InferenceService's threads")
        if threads is None and spec_threads is not None
        else choose_threads(threads)
    )
    torch.set_num_threads(intra_op.threads)
    click.echo(
        f"moeops serve: {name} = step {ref.step} of {ref.step_dir} ({json.dumps(ref.arch.model_dump(by_alias=True))});"
        f" batch ≤ {settings.max_batch_size} within {settings.max_latency_ms:g} ms; early exit {policy};"
        f" {intra_op.threads} intra-op thread(s) ({intra_op.source})",
        err=True,
    )
    otel = telemetry.setup("server")  # OpenTelemetry, when OTEL_EXPORTER_OTLP_ENDPOINT is set
    app = create_app(lambda: load_served(ref, name, target), settings)
    try:
        uvicorn.run(app, host=host or (POD_HOST if runtime else LOCAL_HOST),
                    port=port or (runtime.port if runtime else DEFAULT_PORT), log_level=log_level,
                    timeout_graceful_shutdown=10, timeout_keep_alive=KEEP_ALIVE_S)  # fmt: skip
    finally:
        otel.shutdown()


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    return Path(value) if value else None
