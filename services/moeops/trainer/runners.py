"""Forward and backward of one optimizer step over M micro-batches: locally (gradient accumulation) or
through a torch.distributed.pipelining schedule. Both minimise the same objective:

    Σ_micro-batches  cross-entropy sum / (answer tokens of the global batch) · D  +  balancing losses / M

(D: data-parallel degree, which DDP divides by again; the balancing losses are attached inside the stage,
see stage.py). Each returns this rank's cross-entropy sum on the last stage, None elsewhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe
from torch.nn.parallel import DistributedDataParallel

from .errors import ConfigError
from .topology import Topology

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
    def forward_backward(self, inputs_BS: Tensor, targets_BS: Tensor, answers: Tensor) -> Tensor | None: ...


class LocalRunner:
    """All layers on this rank: gradient accumulation over micro-batches (DDP syncs on the last one)."""

    def __init__(self, module: nn.Module, topo: Topology, micro: int, autocast: AutocastFactory) -> None:
        self.module, self.topo, self.micro, self.autocast = module, topo, micro, autocast

    def forward_backward(self, inputs_BS: Tensor, targets_BS: Tensor, answers: Tensor) -> Tensor | None:
        total = torch.zeros((), device=inputs_BS.device)
        pairs = list(zip(inputs_BS.chunk(self.micro), targets_BS.chunk(self.micro), strict=True))
        for i, (x_BS, y_BS) in enumerate(pairs):
            defer = isinstance(self.module, DistributedDataParallel) and i < len(pairs) - 1
            with self.module.no_sync() if defer else contextlib.nullcontext():  # type: ignore[operator]
                with self.autocast():
                    logits_BSV = self.module(x_BS)
                ce = _cross_entropy_sum(logits_BSV, y_BS)
                (ce / answers * self.topo.dp.size).backward()  # type: ignore[no-untyped-call]
            total += ce.detach()
        return total


class PipelineRunner:
    """This rank is one stage of a pipeline: 1F1B when there are at least as many micro-batches as stages,
    else GPipe. Gradients are not rescaled by the schedule (the loss is already normalised)."""

    def __init__(
        self, module: nn.Module, topo: Topology, micro: int, autocast: AutocastFactory, device: torch.device
    ) -> None:
        self.topo, self.autocast = topo, autocast
        self.answers = torch.ones(())
        stage = PipelineStage(module, topo.pp.rank, topo.pp.size, device, group=topo.pp.group)
        schedule_type = Schedule1F1B if micro >= topo.pp.size else ScheduleGPipe
        self.schedule = schedule_type(stage, n_microbatches=micro, loss_fn=self._loss, scale_grads=False)

    def _loss(self, logits_BSV: Tensor, targets_BS: Tensor) -> Tensor:
        return _cross_entropy_sum(logits_BSV, targets_BS) / self.answers * self.topo.dp.size

    def forward_backward(self, inputs_BS: Tensor, targets_BS: Tensor, answers: Tensor) -> Tensor | None:
        self.answers = answers
        losses: list[Tensor] = []
        args = (inputs_BS,) if self.topo.first_stage else ()
        with self.autocast():
            if self.topo.last_stage:
                self.schedule.step(*args, target=targets_BS, losses=losses)
            else:
                self.schedule.step(*args)
        if not self.topo.last_stage:
            return None
        return torch.stack(losses).sum().detach() * answers / self.topo.dp.size
