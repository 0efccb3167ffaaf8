"""LayerSkip's early-exit loss: the shared head (final norm + LM head) trained on earlier layers' hidden states,
so that serving can stop a token at the first confident layer (moeops.serving.decoding.decode).

Objective per micro-batch, on the same normalisation as the final cross-entropy (runners.py):

    (CE_L + w · Σ_{l=minLayer}^{L-1} s_l · CE_l) / (answer tokens of the global batch) · D,   s_l = l / Σ m

(CE_l: the cross-entropy sum of layer l's exit; scales and their rationale in
moeops.api.v1alpha1.early_exit_loss). The reported loss stays the final layer's alone, comparable with runs
without the exit loss. Only without pipeline parallelism: a pipeline stage holds neither every layer's
hidden state nor, but for the last, the head (the Trainer refuses the combination).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from moeops.api.v1alpha1.early_exit_loss import EarlyExitLossSpec

from .errors import ConfigError
from .parallelize import CollectiveClock
from .runners import AutocastFactory, LocalRunner, _cross_entropy_sum
from .stage import TransformerStage
from .topology import Topology


def exit_scales(layers: int, min_layer: int) -> dict[int, float]:
    """1-based exit layer → its share s_l of the exit loss: l / Σ m over minLayer..L-1 (empty for one layer)."""
    exits = range(min_layer, layers)
    total = sum(exits)
    return {layer: layer / total for layer in exits}


def scaled_exit_ce(
    hidden: Mapping[int, Tensor], scales: Mapping[int, float], norm: nn.Module, head: nn.Module, targets_BS: Tensor
) -> Tensor:
    """Σ_l s_l · (cross-entropy sum of the shared head on layer l's hidden state), over the layers in `scales`."""
    total = targets_BS.new_zeros((), dtype=torch.float32)
    for layer, scale in scales.items():
        logits_BSV = head(norm(hidden[layer]))
        total = total + scale * _cross_entropy_sum(logits_BSV, targets_BS)
    return total


class ExitLossRunner(LocalRunner):
    """LocalRunner's gradient accumulation with the exit losses added to each micro-batch's objective. Block
    outputs are taken by forward hooks (the stage's forward returns the logits only), inside the forward
    pass alone: activation checkpointing re-runs blocks in backward, and those recomputed outputs are not
    new exits."""

    def __init__(
        self,
        stage: TransformerStage,
        topo: Topology,
        micro: int,
        autocast: AutocastFactory,
        spec: EarlyExitLossSpec,
        layers: int,
        gathers: CollectiveClock | None = None,
    ) -> None:
        super().__init__(stage, topo, micro, autocast, gathers)
        if stage.norm is None or stage.head is None:
            raise ConfigError("the early-exit loss needs the output head on this rank (no pipeline stages)")
        self.norm, self.head = stage.norm, stage.head
        self.weight = spec.loss_weight
        self.scales = exit_scales(layers, spec.min_layer)
        self._hidden: dict[int, Tensor] = {}
        self._capturing = False
        for key, block in stage.blocks.items():
            if int(key) + 1 in self.scales:  # block i (0-based) outputs layer i+1's hidden state
                block.register_forward_hook(self._hook(int(key) + 1))

    def _hook(self, layer: int) -> Any:
        def keep(_module: nn.Module, _args: Any, out: Any) -> None:
            if self._capturing:
                self._hidden[layer] = out.x_BSD

        return keep

    def micro_losses(self, x_BS: Tensor, y_BS: Tensor) -> tuple[Tensor, Tensor]:
        if self.weight == 0:  # exactly the plain objective, not + 0 · something
            return super().micro_losses(x_BS, y_BS)
        self._hidden, self._capturing = {}, True
        try:
            with self.autocast():
                logits_BSV = self.module(x_BS)
                exits = scaled_exit_ce(self._hidden, self.scales, self.norm, self.head, y_BS)
        finally:
            self._capturing, self._hidden = False, {}  # autograd keeps what backward needs
        ce = _cross_entropy_sum(logits_BSV, y_BS)
        return ce, ce + self.weight * exits
