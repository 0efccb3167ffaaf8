"""Resolve a MoETrainingJob manifest for a run on this machine, with the operator's own pure planner:
`moeops train --job FILE --nproc N` trains exactly what the operator would configure for N ranks."""

from __future__ import annotations

from pathlib import Path

import yaml

from moeops.api.v1alpha1.runtime import TrainingRuntimeConfig
from moeops.api.v1alpha1.trainingjob import KIND, MoETrainingJobSpec
from moeops.operator.children.training import runtime_config
from moeops.operator.config import OperatorConfig
from moeops.operator.naming import Owner
from moeops.operator.planning import plan_training_job


def _check_explicit_world(spec: MoETrainingJobSpec, nproc: int) -> None:
    """An explicit parallelism is honoured as written, never replaced by `auto`: it needs its own number of ranks."""
    par = spec.parallelism
    if par.mode != "explicit" or not (par.data and par.tensor and par.pipeline):
        return  # auto: the planner chooses for nproc ranks (an incomplete explicit one is refused by the planner)
    world = par.data * par.tensor * par.pipeline
    if world != nproc:
        raise ValueError(
            f"spec.parallelism is explicit (data {par.data} x tensor {par.tensor} x pipeline {par.pipeline} ="
            f" {world} ranks) but the run has {nproc} local rank(s): run it with --nproc {world}, or set"
            f" spec.parallelism.mode: auto to let the planner choose for {nproc}"
        )


def local_config(manifest: Path, nproc: int, checkpoint_dir: Path) -> TrainingRuntimeConfig:
    """The runtime config of the manifest's job as if it ran as `nproc` CPU ranks (one per worker). An explicit
    spec.parallelism is kept (and refused, with the reason, when it needs another number of ranks)."""
    docs = [d for d in yaml.safe_load_all(manifest.read_text(encoding="utf-8")) if d and d.get("kind") == KIND]
    if len(docs) != 1:
        raise ValueError(f"{manifest}: expected exactly one {KIND}, found {len(docs)}")
    body = docs[0]
    spec = dict(body["spec"])
    spec["workers"] = {**spec.get("workers", {}), "replicas": nproc, "gpusPerWorker": 0}
    parsed = MoETrainingJobSpec.model_validate(spec)
    _check_explicit_world(parsed, nproc)
    arch, plan = plan_training_job(parsed)
    name = body["metadata"]["name"]
    owner = Owner(f"moeops.dev/{'v1alpha1'}", KIND, name, "local", "local")
    config = runtime_config(owner, parsed, arch, plan, OperatorConfig())
    checkpoint = config.checkpoint.model_copy(update={"directory": str(checkpoint_dir)})
    return config.model_copy(update={"checkpoint": checkpoint})
