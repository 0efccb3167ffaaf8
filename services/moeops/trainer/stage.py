"""The part of the model one rank runs: a contiguous range of a Transformer's layers (all of them without
pipeline parallelism), with the embedding on the first stage and the norm + output head on the last.

Parameter names are the full model's (blocks keyed by their layer index), so a checkpoint written by any
layout loads into any other: torch.distributed.checkpoint matches tensors by name.

The balancing losses are not carried between stages: each block's weighted aux + z loss is attached to its
output with `attach_loss` (Megatron's MoEAuxLossAutoScaler), whose backward feeds the loss's gradient in
where it was computed. The step's loss is then the cross-entropy alone, whichever stage computes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from moeops.model.transformer import Transformer


def split_layers(layers: int, stages: int) -> list[range]:
    """Contiguous, near-equal layer ranges; earlier stages take the remainder (the last one also runs the
    output head). The rebalancer re-partitions from measured per-layer times."""
    if not 1 <= stages <= layers:
        raise ValueError(f"cannot split {layers} layers into {stages} stages")
    base, extra = divmod(layers, stages)
    ranges, start = [], 0
    for stage in range(stages):
        size = base + (1 if stage < extra else 0)
        ranges.append(range(start, start + size))
        start += size
    return ranges


class _AttachLoss(torch.autograd.Function):
    """Identity on the activation; in backward, also starts the loss's own gradient (d loss/d loss = 1)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, loss: Tensor) -> Tensor:
        ctx.save_for_backward(loss)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        (loss,) = ctx.saved_tensors
        return grad, torch.ones_like(loss)


def attach_loss(x: Tensor, loss: Tensor) -> Tensor:
    out: Tensor = _AttachLoss.apply(x, loss)
    return out


@dataclass
class StageRecord:
    """What the stage's forward passes of one step measured (summed over micro-batches)."""

    aux_loss: Tensor | None = None
    """Sum over the stage's layers and the step's micro-batches (kept on the device: no host sync here)."""
    z_loss: Tensor | None = None
    tokens_per_expert: dict[int, Tensor] = field(default_factory=dict)
    """Layer index → assignments per expert."""


class TransformerStage(nn.Module):
    rope_SF2: Tensor

    def __init__(self, model: Transformer, layers: range, *, first: bool, last: bool) -> None:
        super().__init__()
        self.layer_ids = layers
        self.embedding = model.embedding if first else None
        self.blocks = nn.ModuleDict({str(i): model.blocks[i] for i in layers})
        self.norm = model.norm if last else None
        self.head = model.head if last else None
        self.register_buffer("rope_SF2", model.get_buffer("rope_SF2"), persistent=False)
        self.aux_weight = self.z_weight = 0.0
        self.activation_checkpointing = False
        self.record = StageRecord()

    def set_loss_weights(self, aux: float, z: float) -> None:
        """Weights of the balancing losses in this step's objective (coefficient / micro-batches)."""
        self.aux_weight, self.z_weight = aux, z

    def take_record(self) -> StageRecord:
        record, self.record = self.record, StageRecord()
        return record

    def forward(self, x: Tensor) -> Tensor:
        """Token ids (first stage) or hidden states (B, S, D) in; hidden states or logits (last stage) out."""
        if self.embedding is not None:
            x = self.embedding(x)
        for key, block in self.blocks.items():
            if self.activation_checkpointing and self.training:
                out = torch.utils.checkpoint.checkpoint(block, x, self.rope_SF2, use_reentrant=False)
            else:
                out = block(x, self.rope_SF2)
            balance = self.aux_weight * out.aux_loss + self.z_weight * out.z_loss
            x = attach_loss(out.x_BSD, balance) if balance.requires_grad else out.x_BSD
            self._remember(int(key), out.aux_loss, out.z_loss, out.tokens_per_expert_E)
        if self.head is not None:
            assert self.norm is not None
            logits_BSV: Tensor = self.head(self.norm(x))
            return logits_BSV
        return x

    def _remember(self, layer: int, aux: Tensor, z: Tensor, counts_E: Tensor | None) -> None:
        record = self.record
        record.aux_loss = aux.detach() if record.aux_loss is None else record.aux_loss + aux.detach()
        record.z_loss = z.detach() if record.z_loss is None else record.z_loss + z.detach()
        if counts_E is not None:
            seen = self.record.tokens_per_expert.get(layer)
            self.record.tokens_per_expert[layer] = counts_E if seen is None else seen + counts_E
