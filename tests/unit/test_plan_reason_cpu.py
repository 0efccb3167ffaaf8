"""The plan's reason says what the job runs on: CPU ranks when it asks for no GPU, GPUs otherwise."""

from __future__ import annotations

from typing import Any

from moeops.api.v1alpha1.trainingjob import MoETrainingJobSpec
from moeops.operator.planning import plan_training_job


def reason(workers: dict[str, Any]) -> str:
    base = {"model": {"preset": "moe-debug"}, "data": {"source": "synthetic://code"}, "training": {"steps": 10}}
    spec = MoETrainingJobSpec.model_validate({**base, "workers": workers})
    return plan_training_job(spec)[1].reason


def test_a_cpu_job_is_planned_over_cpu_ranks() -> None:
    cpu = reason({"replicas": 2, "gpusPerWorker": 0})
    assert cpu.startswith("2 CPU ranks (~100 scale): data parallel") and "GPU;" not in cpu and "per GPU" not in cpu
    assert reason({"replicas": 1, "gpusPerWorker": 0}).startswith("1 CPU rank (~100 scale)")


def test_a_gpu_job_is_planned_over_gpus() -> None:
    gpu = reason({"replicas": 2, "gpusPerWorker": 4})
    assert gpu.startswith("8 GPUs (~100 scale): data parallel") and gpu.endswith("GiB per GPU")
