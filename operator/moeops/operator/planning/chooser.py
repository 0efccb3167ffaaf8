"""Choose data/tensor/pipeline/expert parallel degrees from the cluster's scale, as the seed prescribes.

- about 100 GPUs: data parallel (with sharded states);
- about 1,000 GPUs: tensor parallel inside a node + pipeline parallel across nodes, data parallel over the rest;
- about 10,000 GPUs: add expert parallelism and activation checkpointing, then optimizer offload to host memory.

The regime gives the starting plan; if that plan does not fit in GPU memory (or leaves a data-parallel rank
without a sequence) we escalate one step at a time: activation checkpointing, more tensor parallel (never
across nodes), more pipeline stages, more expert parallel, optimizer offload. The first plan that fits wins.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

from moeops.api.v1alpha1.presets import Architecture

from ..errors import InvalidSpec
from .memory import GIB, Degrees, estimate_bytes_per_gpu

SMALL_SCALE_MAX_GPUS = 316  # geometric middle of 100 and 1,000
MEDIUM_SCALE_MAX_GPUS = 3162  # geometric middle of 1,000 and 10,000
MEMORY_HEADROOM = 0.9  # plan for 90% of the GPU: fragmentation and spikes.
MAX_EXPERT_DEGREE = 64


@dataclass(frozen=True)
class PlanInputs:
    arch: Architecture
    world_size: int
    gpus_per_node: int
    gpu_memory_bytes: int
    global_batch_size: int
    micro_batch_size: int = 1
    precision: str = "bf16"
    pipeline_allowed: bool = True
    """False when every layer's hidden state must be on one rank (the early-exit loss): no pipeline stages."""
    cpu: bool = False
    """No GPU asked (gpusPerWorker 0): one rank per worker, and the plan's reason says CPU, not GPUs."""

    @property
    def ranks(self) -> str:
        """`8 GPUs` or `2 CPU ranks`: what the reason counts."""
        return (
            f"{self.world_size} CPU rank{'s' if self.world_size != 1 else ''}"
            if self.cpu
            else f"{self.world_size} GPUs"
        )


@dataclass(frozen=True)
class Plan:
    degrees: Degrees
    memory_per_gpu_bytes: int
    reason: str

    @property
    def summary(self) -> str:
        d = self.degrees
        return f"dp{d.data}·tp{d.tensor}·pp{d.pipeline}·ep{d.expert}"


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def _tensor_candidates(x: PlanInputs) -> list[int]:
    # TP needs fast links: only inside a node, and it must split the attention heads evenly.
    return _divisors(math.gcd(x.gpus_per_node, x.arch.heads))


def _pipeline_candidates(x: PlanInputs, tensor: int) -> list[int]:
    if not x.pipeline_allowed:
        return [1]
    return [p for p in _divisors(x.world_size // tensor) if p <= x.arch.layers]


def _expert_candidates(x: PlanInputs, data: int) -> list[int]:
    return [e for e in _divisors(math.gcd(x.arch.experts, data)) if e <= MAX_EXPERT_DEGREE]


def _with(x: PlanInputs, d: Degrees, **changes: int | bool) -> Degrees:
    """Change degrees, keeping data × tensor × pipeline = world and the expert degree valid."""
    d = replace(d, **changes)  # type: ignore[arg-type]
    data = x.world_size // (d.tensor * d.pipeline)
    expert = max(e for e in _expert_candidates(x, data) if e <= d.expert)
    return replace(d, data=data, expert=expert)


def _budget(x: PlanInputs) -> float:
    return x.gpu_memory_bytes * MEMORY_HEADROOM


def _fits(x: PlanInputs, d: Degrees) -> bool:
    memory = estimate_bytes_per_gpu(x.arch, d, x.micro_batch_size, x.precision)
    return memory <= _budget(x) and d.data <= x.global_batch_size


def _regime(x: PlanInputs) -> tuple[str, Degrees]:
    if x.world_size <= SMALL_SCALE_MAX_GPUS:
        return f"{x.ranks} (~100 scale): data parallel", Degrees(x.world_size, 1, 1)
    tensor = max(_tensor_candidates(x))
    pipes = [p for p in _pipeline_candidates(x, tensor) if p >= 2] or [1]
    start = _with(x, Degrees(1, tensor, pipes[0]), expert=1)
    across = (
        "pipeline across nodes"
        if x.pipeline_allowed
        else "no pipeline stages (the early-exit loss needs every layer on one rank)"
    )
    if x.world_size <= MEDIUM_SCALE_MAX_GPUS:
        return (
            f"{x.ranks} (~1,000 scale): tensor parallel inside {x.gpus_per_node}-GPU nodes,"
            f" {across}, data parallel over the rest",
            start,
        )
    start = _with(x, start, expert=MAX_EXPERT_DEGREE, activation_checkpointing=True)
    return (
        f"{x.ranks} (~10,000 scale): tensor inside nodes, {across},"
        " expert parallel within the data-parallel group, activation checkpointing",
        start,
    )


def _escalations(x: PlanInputs, start: Degrees) -> Iterator[tuple[str, str, Degrees]]:
    """(kind of step, description, degrees) in escalation order; the first entry is the start itself."""
    d = start
    yield "", "", d
    if not d.activation_checkpointing:
        d = replace(d, activation_checkpointing=True)
        yield "ckpt", "activation checkpointing", d
    for tensor in (t for t in _tensor_candidates(x) if t > d.tensor):
        d = _with(x, d, tensor=tensor)
        yield "tp", f"tensor parallel {tensor}", d
    for pipeline in (p for p in _pipeline_candidates(x, d.tensor) if p > d.pipeline):
        d = _with(x, d, pipeline=pipeline)
        yield "pp", f"{pipeline} pipeline stages", d
    for expert in (e for e in _expert_candidates(x, d.data) if e > d.expert):
        d = _with(x, d, expert=expert)
        yield "ep", f"expert parallel {expert}", d
    yield "offload", "optimizer state offloaded to host memory", replace(d, optimizer_offload=True)


def _describe(x: PlanInputs, head: str, escalated: list[str], d: Degrees) -> Plan:
    memory = estimate_bytes_per_gpu(x.arch, d, x.micro_batch_size, x.precision)
    per = "rank (workers.gpuMemoryGiB)" if x.cpu else "GPU"
    fit = f"est. {memory / GIB:.1f} of {x.gpu_memory_bytes / GIB:.0f} GiB per {per}"
    extra = f"; to fit: {', '.join(escalated)}" if escalated else ""
    return Plan(degrees=d, memory_per_gpu_bytes=memory, reason=f"{head}{extra}; {fit}")


def choose_plan(x: PlanInputs) -> Plan:
    """The plan for this scale, escalated until it fits. Raises InvalidSpec when nothing fits."""
    head, start = _regime(x)
    steps: dict[str, str] = {}  # one entry per kind of step: "tensor parallel 8", not 2, 4 and 8.
    for kind, step, degrees in _escalations(x, start):
        if kind:
            steps[kind] = step
        if _fits(x, degrees):
            return _describe(x, head, list(steps.values()), degrees)
    memory = estimate_bytes_per_gpu(x.arch, degrees, x.micro_batch_size, x.precision)
    if degrees.data > x.global_batch_size:
        raise InvalidSpec(
            "PlanInfeasible",
            f"spec.training.globalBatchSize ({x.global_batch_size}) is smaller than the smallest data-parallel"
            f" degree possible on {x.world_size} GPUs ({degrees.data}): raise it or use fewer workers",
        )
    raise InvalidSpec(
        "PlanInfeasible",
        f"the model does not fit on {x.world_size} GPUs of {x.gpu_memory_bytes / GIB:.0f} GiB even with"
        f" {', '.join(steps.values())} (est. {memory / GIB:.1f} GiB per GPU): add workers or use larger GPUs",
    )


def validate_explicit_plan(x: PlanInputs, requested: Degrees) -> Plan:
    """Check user-given degrees against the model and cluster. Raises InvalidSpec naming the field."""
    d = requested
    field = "spec.parallelism"
    if d.world_size != x.world_size:
        raise InvalidSpec(
            "InvalidParallelism",
            f"{field}: data × tensor × pipeline = {d.world_size}, but the job has {x.world_size} GPUs",
        )
    if x.arch.heads % d.tensor:
        raise InvalidSpec("InvalidParallelism", f"{field}.tensor ({d.tensor}) must divide heads ({x.arch.heads})")
    if d.pipeline > x.arch.layers:
        raise InvalidSpec(
            "InvalidParallelism", f"{field}.pipeline ({d.pipeline}) exceeds the model's layers ({x.arch.layers})"
        )
    if x.arch.experts % d.expert or d.data % d.expert:
        raise InvalidSpec(
            "InvalidParallelism",
            f"{field}.expert ({d.expert}) must divide both experts ({x.arch.experts}) and data ({d.data})",
        )
    if d.data > x.global_batch_size:
        raise InvalidSpec(
            "InvalidParallelism",
            f"{field}.data ({d.data}) exceeds spec.training.globalBatchSize ({x.global_batch_size})",
        )
    notes = []
    if d.tensor > x.gpus_per_node:
        notes.append(f"tensor parallel {d.tensor} spans nodes of {x.gpus_per_node} GPUs (slow)")
    memory = estimate_bytes_per_gpu(x.arch, d, x.micro_batch_size, x.precision)
    if memory > _budget(x):
        notes.append("WARNING: exceeds GPU memory")
    plan = _describe(x, f"explicit degrees on {x.ranks}", [], d)
    return replace(plan, reason=plan.reason + ("; " + "; ".join(notes) if notes else ""))


def with_activation_checkpointing(x: PlanInputs, plan: Plan, on: bool) -> Plan:
    """The plan with the user's explicit activation-checkpointing switch, which wins over the chooser's."""
    if plan.degrees.activation_checkpointing == on:
        return plan
    degrees = replace(plan.degrees, activation_checkpointing=on)
    memory = estimate_bytes_per_gpu(x.arch, degrees, x.micro_batch_size, x.precision)
    state = "on" if on else "off"
    note = f"; activation checkpointing {state} by spec (est. {memory / GIB:.1f} GiB per GPU)"
    if memory > _budget(x):
        note += " WARNING: exceeds GPU memory"
    return Plan(degrees=degrees, memory_per_gpu_bytes=memory, reason=plan.reason + note)
