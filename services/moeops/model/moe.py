"""The Mixture-of-Experts layer: router, token dispatch, grouped experts, load-balancing losses.

MoE.forward, step by step:
  1. route: fp32 scores x_TD·W_router → softmax probabilities; the top-k of (probs + bias) picks the experts,
     the picked *probabilities* (bias excluded) renormalised are the gate weights;
  2. dispatch: sort the T·K assignments by expert (stable argsort), count them per expert (bincount), and gather
     each assignment's token row (x_AD, rows in expert order);
  3. experts (SwiGLU): one grouped matmul per projection over all experts on accelerators, in slices of at most
     DEFAULT_SLICE_ROWS rows to cap the temporaries; on CPU (faster there), or where grouped_mm cannot run, one
     matmul per expert over its contiguous rows. Under expert parallelism the trainer's dispatcher runs the rows
     on the ranks that own the experts;
  4. combine: the expert outputs back in (token, k) order through the inverse permutation, then each token's
     gate-weighted sum as one batched matmul, gates_T1K · y_TKD (no scatter-add); add the shared experts;
  5. balance: Switch/GShard auxiliary loss (`balancing_loss`) and router z-loss (returned), per-expert token counts
     (kept).
Dropless by default; an optional capacity factor keeps at most `capacity` assignments per expert (earliest tokens
first), and its combine scales the kept rows by their gates and scatter-adds them (index_add_) to their tokens:
a dropped assignment passes through the residual connection only.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Rows of the sorted assignments processed at once, to bound the (rows × F) temporaries. Measured on 2 CPU
# cores (benchmarks/moe_layer.py): slices of 1-8k rows were 5-40% *slower* than one pass at d=512, F=1024 —
# cutting expert groups into more, smaller matmuls costs more than the page faults it saves — so slicing only
# caps memory on very large batches (65,536 rows × F=1024 fp32 = 256 MiB per temporary).
DEFAULT_SLICE_ROWS = 65536


ExpertKernel = Literal["auto", "grouped", "loop"]
"""How GroupedExperts runs its experts: grouped_mm, one matmul per expert, or the faster for the device."""


def grouped_mm_supported(dtype: torch.dtype, *dims: int) -> bool:
    """grouped_mm exists in this torch, takes this dtype, and every row stride is a multiple of 16 bytes."""
    if not hasattr(F, "grouped_mm") or dtype not in (torch.float32, torch.bfloat16):
        return False
    per_16_bytes = 16 // torch.tensor([], dtype=dtype).element_size()
    return all(d % per_16_bytes == 0 for d in dims)


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype a matmul on `x` computes in here: autocast's when it is on for x's device, else x's own."""
    device = x.device.type
    if not torch.amp.is_autocast_available(device):  # e.g. meta: no autocast there
        return x.dtype
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous: grouped_mm's backward rejects
    the expanded (stride-0) gradients that e.g. a sum produces."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        return grad.contiguous()


def _local(w: Tensor) -> Tensor:
    """This rank's part of a tensor-parallel weight, or the weight itself. DTensor is looked up only where it is
    loaded already (a weight cannot be one otherwise): importing torch.distributed.tensor costs a model server
    seconds of start-up for nothing."""
    dtensor = sys.modules.get("torch.distributed.tensor")
    return w.to_local() if dtensor is not None and isinstance(w, dtensor.DTensor) else w


def _grouped_mm(a_RX: Tensor, b_EXY: Tensor, offs_E: Tensor) -> Tensor:
    out: Tensor = _ContiguousGrad.apply(F.grouped_mm(a_RX, b_EXY, offs=offs_E))
    return out


class Router(nn.Module):
    """Top-k softmax router with DeepSeek-V3's auxiliary-loss-free bias (selection only)."""

    selection_bias_E: Tensor

    def __init__(self, dim: int, experts: int, top_k: int) -> None:
        super().__init__()
        if not 1 <= top_k <= experts:
            raise ValueError(f"top_k ({top_k}) must be between 1 and the number of experts ({experts})")
        self.experts, self.top_k = experts, top_k
        self.gate = nn.Linear(dim, experts, bias=False)
        # Added to the probabilities only to choose experts; updated outside the optimizer (update_bias).
        self.register_buffer("selection_bias_E", torch.zeros(experts), persistent=True)

    def forward(self, x_TD: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Returns (scores_TE, probs_TE, both fp32; gates_TK, experts_TK)."""
        # fp32 whatever autocast does: under bf16 autocast F.linear would cast the fp32 inputs back to bf16, and
        # the expert choice of near-ties would flip with rounding.
        with torch.autocast(x_TD.device.type, enabled=False):
            scores_TE = F.linear(x_TD.float(), self.gate.weight.float())
        probs_TE = scores_TE.softmax(dim=-1)
        _, experts_TK = torch.topk(probs_TE + self.selection_bias_E, self.top_k, dim=-1)
        gates_TK = probs_TE.gather(-1, experts_TK)
        gates_TK = gates_TK / gates_TK.sum(dim=-1, keepdim=True)
        return scores_TE, probs_TE, gates_TK, experts_TK

    @torch.no_grad()
    def update_bias(self, tokens_per_expert_E: Tensor, rate: float) -> None:
        """Nudge under-loaded experts up and over-loaded ones down (sign rule of DeepSeek-V3)."""
        load_E = tokens_per_expert_E.float()
        self.selection_bias_E += rate * torch.sign(load_E.mean() - load_E)


class GroupedExperts(nn.Module):
    """E SwiGLU experts as three stacked weight tensors, run as grouped matmuls over sorted rows."""

    def __init__(self, dim: int, hidden: int, experts: int, slice_rows: int = DEFAULT_SLICE_ROWS) -> None:
        super().__init__()
        self.experts, self.slice_rows = experts, slice_rows
        self.w1_EFD = nn.Parameter(torch.empty(experts, hidden, dim))
        self.w2_EDF = nn.Parameter(torch.empty(experts, dim, hidden))
        self.w3_EFD = nn.Parameter(torch.empty(experts, hidden, dim))
        self.kernel: ExpertKernel = "auto"

    def forward(self, x_AD: Tensor, counts_E: Tensor) -> Tensor:
        """x_AD: assignments sorted by expert; counts_E: rows per expert (sums to A)."""
        if x_AD.shape[0] == 0:
            # Still an output of x_AD in the autograd graph: under expert parallelism the backward all-to-all
            # must run on every rank, including one that received no rows.
            return x_AD * 0.0
        # Under tensor parallelism the weights are DTensors: compute with this rank's hidden units (the
        # trainer sums the partial outputs over the group).
        w1_EFD, w2_EDF, w3_EFD = (_local(w) for w in (self.w1_EFD, self.w2_EDF, self.w3_EFD))
        hidden, dim = w1_EFD.shape[1:]
        if self._grouped_here(x_AD, hidden, dim):
            # grouped_mm has no autocast rule: it would run in the inputs' dtype (fp32 weights under bf16
            # autocast) or fail on a mix. Cast both to autocast's dtype, as the looped path's matmuls are.
            dtype = compute_dtype(x_AD)
            w1, w2, w3 = (w.to(dtype) for w in (w1_EFD, w2_EDF, w3_EFD))
            return self._grouped(x_AD.to(dtype), torch.cumsum(counts_E, dim=0), w1, w2, w3)
        return self._looped(x_AD, counts_E, w1_EFD, w2_EDF, w3_EFD)

    def _grouped_here(self, x_AD: Tensor, hidden: int, dim: int) -> bool:
        if self.kernel == "loop" or not grouped_mm_supported(compute_dtype(x_AD), hidden, dim):
            return False
        # auto: grouped on accelerators (no per-expert host sync or launch). On CPU grouped_mm is itself a
        # loop of GEMMs, and the per-expert loop over contiguous slices measured 1.03-1.31x faster at d=512,
        # ffn=1024 (docs/benchmarks.md, moe_layer); there the host sync on the counts costs nothing.
        return self.kernel == "grouped" or x_AD.device.type != "cpu"

    def _grouped(self, x_AD: Tensor, ends_E: Tensor, w1_EFD: Tensor, w2_EDF: Tensor, w3_EFD: Tensor) -> Tensor:
        w1_EDF, w3_EDF, w2_EFD = w1_EFD.transpose(-2, -1), w3_EFD.transpose(-2, -1), w2_EDF.transpose(-2, -1)
        outputs = []
        rows = x_AD.shape[0]
        for start in range(0, rows, self.slice_rows):
            stop = min(start + self.slice_rows, rows)
            # Group boundaries relative to this slice (empty groups are allowed).
            offs_E = (ends_E.clamp(min=start, max=stop) - start).to(torch.int32)
            x_RD = x_AD[start:stop]
            h_RF = F.silu(_grouped_mm(x_RD, w1_EDF, offs_E)) * _grouped_mm(x_RD, w3_EDF, offs_E)
            outputs.append(_grouped_mm(h_RF, w2_EFD, offs_E))
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]

    @staticmethod
    def _looped(x_AD: Tensor, counts_E: Tensor, w1_EFD: Tensor, w2_EDF: Tensor, w3_EFD: Tensor) -> Tensor:
        """One matmul per expert (a host sync on the counts). split/unbind/cat rather than indexing: their
        backward writes each input gradient once, where per-expert slicing would add E full-size zeros."""
        xs = torch.split(x_AD, counts_E.tolist())
        outputs = [
            (F.silu(x @ w1.T) * (x @ w3.T)) @ w2.T
            for x, w1, w2, w3 in zip(xs, w1_EFD.unbind(0), w2_EDF.unbind(0), w3_EFD.unbind(0), strict=True)
        ]
        return torch.cat(outputs)


class SwiGLU(nn.Module):
    """A dense SwiGLU FFN: the shared experts, and the dense baselines."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.w2(F.silu(self.w1(x)) * self.w3(x))
        return out


@dataclass
class MoEOutput:
    out_TD: Tensor
    aux_loss: Tensor
    """Switch/GShard load-balancing loss, normalised as Hugging Face's (`balancing_loss`)."""
    z_loss: Tensor
    """Router z-loss: mean over tokens of logsumexp(scores)²."""
    tokens_per_expert_E: Tensor
    """Assignments per expert this step (before any capacity drop), detached."""


def balancing_loss(counts_E: Tensor, probs_TE: Tensor, top_k: int) -> Tensor:
    """Switch/GShard load-balancing loss with Hugging Face's normalisation (Mixtral's and Qwen-MoE's
    `load_balancing_loss_func`): E · Σ_e f_e · P_e, where f_e = assignments to e per token (counts / tokens, *not*
    divided by top-k: the f_e sum to K) and P_e the mean router probability of e over these tokens. It is K at a
    perfectly balanced router, and a `router_aux_loss_coef` copied from a Hugging Face config means the same here.
    (Megatron divides by top-k: its coefficient is K times this one's.) `counts_E` may be the global batch's
    (summed over data ranks) while `probs_TE` is this rank's tokens: averaged over ranks, that is the loss of the
    whole batch, and its gradient, which flows through the probabilities only."""
    tokens = counts_E.sum() / top_k
    fraction_E = counts_E / tokens.clamp(min=1.0)
    return counts_E.shape[0] * torch.sum(fraction_E * probs_TE.mean(dim=0))


class MoE(nn.Module):
    def __init__(
        self,
        dim: int,
        hidden: int,
        experts: int,
        top_k: int,
        shared_experts: int = 0,
        capacity_factor: float | None = None,
        slice_rows: int = DEFAULT_SLICE_ROWS,
    ) -> None:
        super().__init__()
        self.router = Router(dim, experts, top_k)
        self.experts = GroupedExperts(dim, hidden, experts, slice_rows)
        self.shared = SwiGLU(dim, hidden * shared_experts) if shared_experts else None
        self.capacity_factor = capacity_factor
        self.top_k = top_k
        # Expert parallelism installs a callable that runs the sorted rows on the experts' owning ranks;
        # None runs them here. (The trainer owns distribution; the model only offers the seam.)
        self.dispatcher: Callable[[Tensor, Tensor, GroupedExperts], Tensor] | None = None
        # Data parallelism installs a sum of the counts over the data ranks, so that the balancing loss sees
        # the global batch's expert load (as Megatron's); None: this batch's counts alone.
        self.count_reducer: Callable[[Tensor], Tensor] | None = None

    def forward(self, x_TD: Tensor) -> MoEOutput:
        E, K = self.router.experts, self.top_k
        scores_TE, probs_TE, gates_TK, experts_TK = self.router(x_TD)

        experts_A = experts_TK.reshape(-1)
        order_A = torch.argsort(experts_A, stable=True)
        counts_E = torch.bincount(experts_A, minlength=E)
        if self.capacity_factor is None:
            out_TD = self._dropless(x_TD, order_A, counts_E, gates_TK)
        else:
            out_TD = self._with_capacity(x_TD, experts_A, order_A, counts_E, gates_TK)
        if self.shared is not None:
            out_TD = out_TD + self.shared(x_TD)

        load_E = counts_E.float() if self.count_reducer is None else self.count_reducer(counts_E.float())
        aux_loss = balancing_loss(load_E, probs_TE, K)
        z_loss = torch.logsumexp(scores_TE, dim=-1).square().mean()
        return MoEOutput(out_TD, aux_loss, z_loss, counts_E.detach())

    def _run_experts(self, x_AD: Tensor, counts_E: Tensor) -> Tensor:
        return (
            self.experts(x_AD, counts_E) if self.dispatcher is None else self.dispatcher(x_AD, counts_E, self.experts)
        )

    def _dropless(self, x_TD: Tensor, order_A: Tensor, counts_E: Tensor, gates_TK: Tensor) -> Tensor:
        """Every token keeps its K assignments, so the combine can be token-major: put the expert outputs back
        in (token, k) order with the inverse permutation and take each token's gate-weighted sum. That is a
        gather and a small batched matmul, forward and backward, where a scatter-add (index_add_) would make the
        backward gather and the forward accumulate (measured 3-8% faster on CPU at d=512, 8 experts)."""
        T, K = gates_TK.shape
        x_AD = x_TD.index_select(0, order_A // K)
        y_AD = self._run_experts(x_AD, counts_E)
        inverse_A = torch.empty_like(order_A)
        inverse_A[order_A] = torch.arange(order_A.numel(), device=order_A.device)
        y_TKD = y_AD.index_select(0, inverse_A).view(T, K, -1)
        return torch.bmm(gates_TK.to(y_TKD.dtype).unsqueeze(1), y_TKD).squeeze(1)

    def _with_capacity(
        self, x_TD: Tensor, experts_A: Tensor, order_A: Tensor, counts_E: Tensor, gates_TK: Tensor
    ) -> Tensor:
        T, K = gates_TK.shape
        token_A, gates_A = order_A // K, gates_TK.reshape(-1)[order_A]
        order_A, token_A, gates_A, kept_E = self._apply_capacity(
            experts_A[order_A], order_A, token_A, gates_A, counts_E, T
        )
        y_AD = self._run_experts(x_TD[token_A], kept_E)
        y_AD = y_AD * gates_A.to(y_AD.dtype).unsqueeze(-1)
        return torch.zeros_like(x_TD).index_add_(0, token_A, y_AD)

    def _apply_capacity(
        self, sorted_experts_A: Tensor, order_A: Tensor, token_A: Tensor, gates_A: Tensor, counts_E: Tensor, T: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Keep at most `capacity` assignments per expert (earliest tokens first); the rest pass through
        the residual connection only."""
        assert self.capacity_factor is not None
        E, K = counts_E.shape[0], self.top_k
        capacity = max(1, math.ceil(self.capacity_factor * T * K / E))
        starts_E = torch.cumsum(counts_E, 0) - counts_E
        rank_A = torch.arange(order_A.shape[0], device=order_A.device) - starts_E[sorted_experts_A]
        keep_A = rank_A < capacity
        return order_A[keep_A], token_A[keep_A], gates_A[keep_A], counts_E.clamp(max=capacity)
