"""Forward and backward of one optimizer step over M micro-batches: locally (gradient accumulation) or
through a torch.distributed.pipelining schedule. Both minimise the same objective:

    Σ_micro-batches  cross-entropy sum / (answer tokens of the global batch) · D  +  balancing losses / M

(D: data-parallel degree, which FSDP divides by again; the balancing losses are attached inside the stage,
see stage.py). Each returns this rank's cross-entropy sum on the last stage, None elsewhere.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

from .errors import ConfigError
from .parallelize import CollectiveClock
from .topology import Topology

FORWARD_SHARE_OF_WORK = 3.0
"""A training step's work per forward pass: the forward and a backward of about twice its cost."""

AutocastFactory = Callable[[], contextlib.AbstractContextManager[object]]


def micro_batches(micro_batch_size: int | None, batch_per_rank: int, stages: int) -> int:
    """How many micro-batches a rank's batch is cut into. Unset: one without pipelining; with P stages the
    largest divisor of the batch up to 4·P (a GPipe bubble of (P-1)/(M+P-1), at most ~20%)."""
    if micro_batch_size is not None:
        if batch_per_rank % micro_batch_size:
            raise ConfigError(
                f"training.microBatchSize ({micro_batch_size}) must divide the per-rank batch ({batch_per_rank})"
            )
        return batch_per_rank // micro_batch_size
    if stages == 1:
        return 1
    return max(m for m in range(1, min(batch_per_rank, 4 * stages) + 1) if batch_per_rank % m == 0)


def _cross_entropy_sum(logits_BSV: Tensor, targets_BS: Tensor) -> Tensor:
    return F.cross_entropy(logits_BSV.flatten(0, 1).float(), targets_BS.flatten(), reduction="sum")


class StepRunner(Protocol):
    wait_seconds: float
    """Of the last forward_backward, the time spent waiting for other ranks' gradients (0 when unknown)."""

    def forward_backward(self, inputs_BS: Tensor, targets_BS: Tensor, answers: Tensor) -> Tensor | None: ...


class LocalRunner:
    """All layers on this rank: gradient accumulation over micro-batches (FSDP reduces on the last one)."""

    def __init__(
        self, module: nn.Module, topo: Topology, micro: int, autocast: AutocastFactory, gathers: CollectiveClock | None
    ) -> None:
        """`gathers`: FSDP's collective clock (parallelize.py), None without data parallelism."""
        self.module, self.topo, self.micro, self.autocast = module, topo, micro, autocast
        self.gathers = gathers
        self.wait_seconds = 0.0

    def forward_backward(self, inputs_BS: Tensor, targets_BS: Tensor, answers: Tensor) -> Tensor | None:
        total = torch.zeros((), device=inputs_BS.device)
        gathered_before = self.gathers.seconds if self.gathers is not None else 0.0
        # tensor_split: exactly `micro` parts even when a rebalanced share does not divide evenly.
        pairs = list(zip(inputs_BS.tensor_split(self.micro), targets_BS.tensor_split(self.micro), strict=True))
        for i, (x_BS, y_BS) in enumerate(pairs):
            if isinstance(self.module, FSDPModule):  # accumulate unsharded; reduce-scatter after the last one
                self.module.set_requires_gradient_sync(i == len(pairs) - 1)
            ce, objective = self.micro_losses(x_BS, y_BS)
            (objective / answers * self.topo.dp.size).backward()  # type: ignore[no-untyped-call]
            total += ce.detach()
        # Waiting for slower ranks shows in FSDP's collectives (a rank that arrives early blocks in an all-gather or
        # the reduce-scatter); the rebalancer must not count it as this rank's compute, or every rank looks as slow
        # as the straggler and the one with the least data slowest of all.
        self.wait_seconds = self.gathers.seconds - gathered_before if self.gathers is not None else 0.0
        return total

    def micro_losses(self, x_BS: Tensor, y_BS: Tensor) -> tuple[Tensor, Tensor]:
        """One micro-batch's cross-entropy sum (what is reported) and the sum its gradient comes from (the same
        here; a subclass may add terms, e.g. trainer/early_exit_loss.py)."""
        with self.autocast():
            logits_BSV = self.module(x_BS)
        ce = _cross_entropy_sum(logits_BSV, y_BS)
        return ce, ce


class PipelineRunner:
    """This rank is one stage of a pipeline: 1F1B when there are at least as many micro-batches as stages,
    else GPipe. Gradients are not rescaled by the schedule (the loss is already normalised)."""

    def __init__(
        self, module: nn.Module, topo: Topology, micro: int, autocast: AutocastFactory, device: torch.device
    ) -> None:
        self.topo, self.autocast = topo, autocast
        self.wait_seconds = 0.0
        # Stages wait on each other inside the schedule, so the stage's own work is estimated from its forward
        # passes (timed by hooks) as FORWARD_SHARE_OF_WORK × their time; the rest of the step is waiting.
        self._forward_seconds, self._forward_started = 0.0, 0.0
        module.register_forward_pre_hook(lambda *_: setattr(self, "_forward_started", time.perf_counter()))
        module.register_forward_hook(lambda *_: self._forward_done())
        self.answers = torch.ones(())
        stage = PipelineStage(module, topo.pp.rank, topo.pp.size, device, group=topo.pp.group)
        schedule_type = Schedule1F1B if micro >= topo.pp.size else ScheduleGPipe
        self.schedule = schedule_type(stage, n_microbatches=micro, loss_fn=self._loss, scale_grads=False)

    def _loss(self, logits_BSV: Tensor, targets_BS: Tensor) -> Tensor:
        return _cross_entropy_sum(logits_BSV, targets_BS) / self.answers * self.topo.dp.size

    def _forward_done(self) -> None:
        self._forward_seconds += time.perf_counter() - self._forward_started

    def forward_backward(self, inputs_BS: Tensor, targets_BS: Tensor, answers: Tensor) -> Tensor | None:
        started, self._forward_seconds = time.perf_counter(), 0.0
        self.answers = answers
        losses: list[Tensor] = []
        args = (inputs_BS,) if self.topo.first_stage else ()
        with self.autocast():
            if self.topo.last_stage:
                self.schedule.step(*args, target=targets_BS, losses=losses)
            else:
                self.schedule.step(*args)
        elapsed = time.perf_counter() - started
        self.wait_seconds = max(0.0, elapsed - FORWARD_SHARE_OF_WORK * self._forward_seconds)
        if not self.topo.last_stage:
            return None
        return torch.stack(losses).sum().detach() * answers / self.topo.dp.size
