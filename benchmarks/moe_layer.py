"""MoE layer forward+backward throughput on CPU (fp32), against Hugging Face transformers' Mixtral block with
the same weights — its eager per-expert loop and its grouped_mm experts backend — and against a dense SwiGLU
with the same active parameters computed in token chunks. Outputs and gradients are checked equal first.

    .venv/bin/python benchmarks/moe_layer.py            # d=512, ffn=1024, top-2: 8 experts × 4k/16k tokens, 32 × 8k
    .venv/bin/python benchmarks/moe_layer.py --repeats 9
    .venv/bin/python benchmarks/moe_layer.py --device cuda --dtype bf16   # what benchmarks/gpu.py runs

Variants alternate within each repeat (these machines drift 20-50% run to run); figures are medians.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn
from transformers import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

from moeops.model import MoE
from moeops.model.moe import SwiGLU

D, FFN, TOP_K = 512, 1024, 2
CASES = ((8, 4096), (8, 16384), (32, 8192))
DENSE_CHUNK = 2048
CPU = torch.device("cpu")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def hf_block(ours: MoE, experts: int, implementation: str | None) -> MixtralSparseMoeBlock:
    config = MixtralConfig(hidden_size=D, intermediate_size=FFN, num_local_experts=experts,
                           num_experts_per_tok=TOP_K, router_jitter_noise=0.0)  # fmt: skip
    config._experts_implementation = implementation
    block = MixtralSparseMoeBlock(config)
    with torch.no_grad():
        block.gate.weight.copy_(ours.router.gate.weight)
        block.experts.gate_up_proj.copy_(torch.cat([ours.experts.w1_EFD, ours.experts.w3_EFD], dim=1))
        block.experts.down_proj.copy_(ours.experts.w2_EDF)
    return block


class ChunkedDense(nn.Module):
    """A dense SwiGLU with the MoE's active width, applied DENSE_CHUNK tokens at a time (a plain full-batch
    dense layer is memory-bound here and would flatter the MoE)."""

    def __init__(self) -> None:
        super().__init__()
        self.ffn = SwiGLU(D, TOP_K * FFN)

    def forward(self, x_TD: Tensor) -> Tensor:
        return torch.cat([self.ffn(chunk) for chunk in x_TD.split(DENSE_CHUNK)])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(fn: Callable[[Tensor], Tensor], x_TD: Tensor, g_TD: Tensor) -> float:
    x = x_TD.detach().requires_grad_()
    _sync(x.device)
    started = time.perf_counter()
    (fn(x) * g_TD).sum().backward()
    _sync(x.device)
    return time.perf_counter() - started


def check_equal(ours: MoE, hf: MixtralSparseMoeBlock, x_TD: Tensor, g_TD: Tensor) -> None:
    # bf16 rounds differently in the two implementations (fused vs split projections): looser there.
    tight = x_TD.dtype == torch.float32
    out_rtol, out_atol = (1e-4, 1e-5) if tight else (5e-2, 5e-3)
    grad_rtol, grad_atol = (1e-3, 1e-4) if tight else (1e-1, 5e-2)
    xa, xb = x_TD.clone().requires_grad_(), x_TD.clone().requires_grad_()
    ya, yb = ours(xa).out_TD, hf(xb.unsqueeze(0)).squeeze(0)
    torch.testing.assert_close(ya, yb, rtol=out_rtol, atol=out_atol)
    (ya * g_TD).sum().backward()
    (yb * g_TD).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=out_rtol, atol=out_atol)
    hf_w13 = hf.experts.gate_up_proj.grad
    w1_grad, w3_grad = ours.experts.w1_EFD.grad, ours.experts.w3_EFD.grad
    assert w1_grad is not None and w3_grad is not None
    torch.testing.assert_close(torch.cat([w1_grad, w3_grad], 1), hf_w13, rtol=grad_rtol, atol=grad_atol)
    torch.testing.assert_close(ours.experts.w2_EDF.grad, hf.experts.down_proj.grad, rtol=grad_rtol, atol=grad_atol)
    for module in (ours, hf):
        module.zero_grad(set_to_none=True)


def run_case(
    experts: int, tokens: int, repeats: int, device: torch.device = CPU, dtype: torch.dtype = torch.float32
) -> dict[str, object]:
    torch.manual_seed(0)
    ours = MoE(D, FFN, experts, TOP_K)
    for p in ours.parameters():
        nn.init.normal_(p, std=0.02)
    x_TD, g_TD = torch.randn(tokens, D, device=device, dtype=dtype), torch.randn(tokens, D, device=device, dtype=dtype)
    hf_eager, hf_grouped = hf_block(ours, experts, None), hf_block(ours, experts, "grouped_mm")
    ours.to(device, dtype)
    hf_eager.to(device, dtype)
    hf_grouped.to(device, dtype)
    check_small = slice(0, 512)
    check_equal(ours, hf_eager, x_TD[check_small], g_TD[check_small])
    check_equal(ours, hf_grouped, x_TD[check_small], g_TD[check_small])
    ours_grouped = copy.deepcopy(ours)
    ours_grouped.experts.kernel = "grouped"  # our grouped_mm path (the CPU default is the per-expert loop)
    dense = ChunkedDense().to(device, dtype)
    variants: dict[str, Callable[[Tensor], Tensor]] = {
        "moeops": lambda x: ours(x).out_TD,
        "moeops_grouped_mm": lambda x: ours_grouped(x).out_TD,
        "hf_eager": lambda x: hf_eager(x.unsqueeze(0)).squeeze(0),
        "hf_grouped_mm": lambda x: hf_grouped(x.unsqueeze(0)).squeeze(0),
        "dense_chunked": dense,
    }
    for fn in variants.values():  # warm-up
        step(fn, x_TD, g_TD)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(step(fn, x_TD, g_TD))
    median = {name: statistics.median(ts) for name, ts in times.items()}
    return {
        "experts": experts,
        "tokens": tokens,
        "tokens_per_s": {name: round(tokens / t) for name, t in median.items()},
        "speedup_vs_hf_eager": round(median["hf_eager"] / median["moeops"], 2),
        "speedup_vs_hf_grouped_mm": round(median["hf_grouped_mm"] / median["moeops"], 2),
        "time_vs_dense_chunked": round(median["moeops"] / median["dense_chunked"], 2),
        "auto_vs_our_grouped_mm": round(median["moeops_grouped_mm"] / median["moeops"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    results = [run_case(e, t, args.repeats, device, dtype) for e, t in CASES]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(json.dumps({"device": where, "dtype": args.dtype, "d": D, "ffn": FFN, "top_k": TOP_K, "cases": results},
                     indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
