"""The MoE layer against a straightforward reference, its balancing machinery, and the transformer."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from moeops.api.v1alpha1 import PRESETS, Architecture
from moeops.model import MoE, Transformer
from moeops.model.moe import balancing_loss, grouped_mm_supported
from moeops.operator.planning import model_size

D, HIDDEN, E, K, T = 16, 32, 4, 2, 50


def make_moe(**kwargs) -> MoE:
    torch.manual_seed(0)
    moe = MoE(D, HIDDEN, E, K, **kwargs)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return moe


def reference(moe: MoE, x_TD: torch.Tensor, capacity: int | None = None) -> torch.Tensor:
    """Token by token, expert by expert: what the layer computes, written the obvious way. With a capacity,
    an expert serves only its first `capacity` tokens (in token order)."""
    served = [0] * moe.router.experts
    probs_TE = F.linear(x_TD.float(), moe.router.gate.weight.float()).softmax(-1)
    out = torch.zeros_like(x_TD)
    experts = moe.experts
    for t in range(x_TD.shape[0]):
        chosen = torch.topk(probs_TE[t] + moe.router.selection_bias_E, moe.top_k).indices
        gates = probs_TE[t, chosen] / probs_TE[t, chosen].sum()
        for gate, e in zip(gates, chosen.tolist(), strict=True):
            served[e] += 1
            if capacity is not None and served[e] > capacity:
                continue
            h = F.silu(experts.w1_EFD[e] @ x_TD[t]) * (experts.w3_EFD[e] @ x_TD[t])
            out[t] += gate * (experts.w2_EDF[e] @ h)
    if moe.shared is not None:
        out += moe.shared(x_TD)
    return out


@pytest.mark.parametrize("grouped", [True, False], ids=["grouped_mm", "per-expert loop"])
@pytest.mark.parametrize("shared", [0, 1])
def test_moe_output_equals_the_reference(grouped: bool, shared: int) -> None:
    moe = make_moe(shared_experts=shared, slice_rows=7)  # slices smaller than the rows: exercises slicing
    moe.experts.kernel = "grouped" if grouped else "loop"
    x_TD = torch.randn(T, D)
    torch.testing.assert_close(moe(x_TD).out_TD, reference(moe, x_TD), rtol=1e-5, atol=1e-5)


def test_grouped_and_looped_paths_have_equal_gradients() -> None:
    assert grouped_mm_supported(torch.float32, D, HIDDEN)
    x_TD = torch.randn(T, D)
    grads = []
    for grouped in (True, False):
        moe = make_moe()
        moe.experts.kernel = "grouped" if grouped else "loop"
        x = x_TD.clone().requires_grad_()
        moe(x).out_TD.sum().backward()  # a sum: the stride-0 gradient grouped_mm's backward rejects raw
        grads.append([x.grad, *(p.grad for p in moe.parameters())])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_unaligned_sizes_fall_back_instead_of_failing() -> None:
    assert not grouped_mm_supported(torch.float32, 16, 10)
    moe = MoE(16, 10, 4, 2)
    assert moe(torch.randn(8, 16)).out_TD.shape == (8, 16)


def test_selection_bias_changes_the_choice_never_the_gate_weights() -> None:
    moe = make_moe()
    x_TD = torch.randn(T, D)
    moe.router.selection_bias_E[3] = 10.0
    scores_TE, _, gates_TK, experts_TK = moe.router(x_TD)
    assert (experts_TK == 3).any(dim=-1).all()  # everyone now picks expert 3
    probs_TE = scores_TE.softmax(-1)
    picked = probs_TE.gather(-1, experts_TK)
    torch.testing.assert_close(gates_TK, picked / picked.sum(-1, keepdim=True))


def test_bias_update_moves_load_toward_the_mean() -> None:
    moe = make_moe()
    moe.router.update_bias(torch.tensor([10, 2, 2, 2]), rate=0.1)
    assert moe.router.selection_bias_E.tolist() == pytest.approx([-0.1, 0.1, 0.1, 0.1])


def test_balancing_losses_and_counts() -> None:
    moe = make_moe()
    torch.nn.init.zeros_(moe.router.gate.weight)  # uniform probabilities: the Switch loss is exactly K (HF's scale)
    out = moe(torch.randn(T, D))
    assert out.aux_loss.item() == pytest.approx(K)
    assert out.z_loss.item() == pytest.approx(torch.log(torch.tensor(float(E))).item() ** 2)
    assert int(out.tokens_per_expert_E.sum()) == T * K and not out.tokens_per_expert_E.requires_grad


def test_capacity_factor_drops_overflow_assignments() -> None:
    moe = make_moe(capacity_factor=0.5)
    moe.router.selection_bias_E[0] = 10.0  # everyone wants expert 0: it overflows
    x_TD = torch.randn(T, D)
    out = moe(x_TD)
    capacity = 13  # ceil(0.5 · T·K / E)
    torch.testing.assert_close(out.out_TD, reference(moe, x_TD, capacity=capacity), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out.out_TD, reference(moe, x_TD))
    assert int(out.tokens_per_expert_E[0]) == T  # counts are of demand, before the drop


TINY = Architecture(layers=2, d_model=32, heads=4, experts=4, top_k=2, ffn_hidden=16, shared_experts=1,
                    vocab_size=64, seq_len=16)  # fmt: skip


def test_parameter_count_matches_the_operators_sizing() -> None:
    for arch in (TINY, PRESETS["moe-debug"]):
        assert Transformer(arch).num_params() == model_size(arch).total_params


def test_dense_baselines_match_active_and_total_parameters() -> None:
    size = model_size(TINY)
    router = TINY.layers * TINY.d_model * TINY.experts
    assert Transformer(TINY, ffn="dense-active").num_params() == size.active_params - router
    assert Transformer(TINY, ffn="dense-total").num_params() == size.total_params - router


def test_forward_is_causal_and_exposes_hidden_states_and_counts() -> None:
    torch.manual_seed(0)
    model = Transformer(TINY)
    tokens = torch.randint(0, 64, (2, 16))
    out = model(tokens, return_hidden=True)
    assert out.logits_BSV.shape == (2, 16, 64) and len(out.hidden_states) == 2
    assert out.tokens_per_expert_LE is not None and out.tokens_per_expert_LE.shape == (2, 4)
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 64
    torch.testing.assert_close(model(changed).logits_BSV[:, :-1], out.logits_BSV[:, :-1])


def test_a_few_steps_fit_a_tiny_batch() -> None:
    torch.manual_seed(0)
    model = Transformer(TINY)
    tokens = torch.randint(0, 64, (4, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = model(tokens[:, :-1])
        loss = F.cross_entropy(out.logits_BSV.flatten(0, 1), tokens[:, 1:].flatten()) + 0.01 * out.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_auto_kernel_loops_on_cpu_and_groups_elsewhere() -> None:
    experts = make_moe().experts
    x_AD = torch.randn(8, D)
    assert not experts._grouped_here(x_AD, HIDDEN, D)  # CPU: the per-expert loop measured faster
    experts.kernel = "grouped"
    assert experts._grouped_here(x_AD, HIDDEN, D)
    experts.kernel = "auto"
    assert experts._grouped_here(torch.empty(8, D, device="meta"), HIDDEN, D)


def _hf_load_balancing_loss(scores_TE: torch.Tensor, top_k: int) -> torch.Tensor:
    """Hugging Face's `load_balancing_loss_func` (Mixtral, Qwen-MoE), one layer, no padding mask, re-derived here."""
    probs_TE = scores_TE.softmax(dim=-1)
    _, selected_TK = torch.topk(probs_TE, top_k, dim=-1)
    mask_TKE = F.one_hot(selected_TK, probs_TE.shape[-1]).float()
    return probs_TE.shape[-1] * torch.sum(mask_TKE.mean(dim=0) * probs_TE.mean(dim=0).unsqueeze(0))


def test_the_balancing_loss_is_hugging_faces_so_its_coefficient_carries_over() -> None:
    """No division by top-k: a router_aux_loss_coef copied from a Hugging Face config weighs the same here."""
    moe = make_moe()
    torch.nn.init.normal_(moe.router.gate.weight, std=0.5)
    x_TD = torch.randn(T, D)
    scores_TE, _, _, _ = moe.router(x_TD)
    out = moe(x_TD)
    torch.testing.assert_close(out.aux_loss, _hf_load_balancing_loss(scores_TE, K))


def test_the_balancing_loss_takes_the_counts_the_reducer_gives() -> None:
    """Data parallelism installs a sum over the data ranks: the loss then weighs this rank's probabilities by the
    global batch's load; the gradient still flows through this rank's probabilities only."""
    moe = make_moe()
    torch.nn.init.normal_(moe.router.gate.weight, std=0.5)
    x_TD, other_E = torch.randn(T, D), torch.tensor([0.0, 0.0, 0.0, float(T * K)])  # another rank sent all to 3
    mine = moe(x_TD)
    moe.count_reducer = lambda counts_E: counts_E + other_E
    both = moe(x_TD)
    _, probs_TE, _, _ = moe.router(x_TD)
    expected = balancing_loss(mine.tokens_per_expert_E.float() + other_E, probs_TE, K)
    torch.testing.assert_close(both.aux_loss, expected)
    assert not torch.allclose(both.aux_loss, mine.aux_loss)


def test_a_model_server_builds_the_model_without_importing_dtensor() -> None:
    """torch.distributed.tensor is the trainer's (tensor parallelism): importing it added seconds to every model
    server's start. The model still unwraps a DTensor weight where one exists (test_parallel_parity's TP layouts)."""
    code = (
        "import sys, torch; from moeops.model import Transformer; from moeops.api.v1alpha1 import PRESETS;"
        " m = Transformer(PRESETS['moe-debug'].model_copy(update={'layers': 1}));"
        " m(torch.zeros(1, 4, dtype=torch.long));"
        " print('torch.distributed.tensor' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().splitlines()[-1] == "False", done.stderr[-2000:]
