"""A static-shape MoE for export and compiled serving: every expert runs on every token, masked by the gates.

The eager MoE (`moeops.model.moe`) sorts the T·K assignments by expert and runs each expert on its own rows: the
rows per expert are data, so the graph has data-dependent shapes (bincount's size, split sizes, a host sync on the
counts) that torch.export and ONNX cannot express. StaticMoE keeps the router exactly as it is (same scores, same
top-k, same renormalised gates) and replaces dispatch + combine by a dense masked formulation whose shapes depend
only on T:

    weights_TE = scatter of the K gates into E columns (zeros elsewhere)
    y_ETD      = SwiGLU_e(x_TD) for every expert e          (batched matmuls over the E stacked weights)
    out_TD     = Σ_e weights_TE[:, e] · y_ETD[e]            (+ shared experts)

An unselected expert gets an exact zero weight, so the output equals the eager dropless output up to fp32
summation order. The cost is E/K times the routed experts' FLOPs and E·T·F activations (for moe-debug, E=4, K=2:
2x; for 8 experts top-2: 4x); it is always dropless (a capacity factor is a training device). See
`moeops.serving.exporting.export` for why this formulation rather than per-token weight gathers.
"""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moeops.model.moe import MoE, MoEOutput, balancing_loss

ModuleT = TypeVar("ModuleT", bound=nn.Module)


class StaticMoE(MoE):
    """The same router, experts and shared experts as `moe` (the parameters are shared, not copied), with a
    static-shape forward. Inference only: not meant for training (the dense formulation would cost E/K times the
    FLOPs). With `losses` it also returns the eager layer's auxiliary loss, z-loss and counts; without (serving),
    zeros, so that an exported graph carries no dead computation."""

    def __init__(self, moe: MoE, *, losses: bool = False) -> None:
        nn.Module.__init__(self)
        if moe.dispatcher is not None:
            raise ValueError("an expert-parallel MoE (with a dispatcher) cannot be made static: gather it first")
        self.router, self.experts, self.shared = moe.router, moe.experts, moe.shared
        self.capacity_factor = None  # dropless
        self.top_k = moe.top_k
        self.dispatcher = None
        self.losses = losses

    def forward(self, x_TD: Tensor) -> MoEOutput:
        E = self.router.experts
        scores_TE, probs_TE, gates_TK, experts_TK = self.router(x_TD)
        weights_TE = torch.zeros_like(probs_TE).scatter(1, experts_TK, gates_TK)
        out_TD = self._all_experts(x_TD, weights_TE)
        if self.shared is not None:
            out_TD = out_TD + self.shared(x_TD)
        if not self.losses:
            zero = probs_TE.new_zeros(())
            return MoEOutput(out_TD, zero, zero, experts_TK.new_zeros(E))
        # Counts without bincount (whose output size is data-dependent): a one-hot sum over tokens.
        counts_E = torch.zeros_like(probs_TE).scatter(1, experts_TK, 1.0).sum(dim=0)
        aux_loss = balancing_loss(counts_E, probs_TE, self.top_k)
        z_loss = torch.logsumexp(scores_TE, dim=-1).square().mean()
        return MoEOutput(out_TD, aux_loss, z_loss, counts_E.to(torch.int64).detach())

    def _all_experts(self, x_TD: Tensor, weights_TE: Tensor) -> Tensor:
        w1_EFD, w2_EDF, w3_EFD = self.experts.w1_EFD, self.experts.w2_EDF, self.experts.w3_EFD
        # (T, D) @ (E, D, F) broadcasts to (E, T, F): one batched matmul per projection.
        h_ETF = F.silu(torch.matmul(x_TD, w1_EFD.transpose(1, 2))) * torch.matmul(x_TD, w3_EFD.transpose(1, 2))
        y_ETD = torch.matmul(h_ETF, w2_EDF.transpose(1, 2))
        # Σ_e w_te · y_etd as a batched matmul over tokens: (T, 1, E) @ (T, E, D).
        weights_T1E = weights_TE.to(y_ETD.dtype).unsqueeze(1)
        return torch.bmm(weights_T1E, y_ETD.transpose(0, 1)).squeeze(1)


def static_copy(model: ModuleT, *, losses: bool = False) -> ModuleT:
    """A copy of `model` whose MoE layers are StaticMoE (`losses` as there), sharing every parameter and buffer
    with `model` (no weight memory is duplicated; the original keeps its eager, trainable MoE layers). Returned
    in eval mode."""
    memo: dict[int, object] = {id(t): t for t in (*model.parameters(), *model.buffers())}
    clone = copy.deepcopy(model, memo)
    _swap(clone, losses)
    return clone.eval()


def _swap(module: nn.Module, losses: bool) -> None:
    for name, child in module.named_children():
        if isinstance(child, MoE) and not isinstance(child, StaticMoE):
            setattr(module, name, StaticMoE(child, losses=losses))
        else:
            _swap(child, losses)
